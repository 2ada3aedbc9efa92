"""`gpunet status`, `gpunet pause`, `gpunet resume`: watch and control the node of a data dir.

`status` is to a volunteer's node what `ollama ps` is to Ollama: what it serves, slots in use,
the work done for others, errors and refusals, bytes of model files shared, reachability.
`pause` stops the node taking new requests (those in flight finish; it stays in the network and
announces no free slot), `resume` lifts that. All three ask the running node itself over a
session with the data dir's key (p2p/cli/node_control.py) and print its state: a table, or with
`--json` the object as the node sent it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from crypto.identity import KeyFileError
from p2p.cli.common import fail, printable, read_network_key, run_client
from p2p.cli.identity import identity_path, load_node_identity
from p2p.cli.node_control import DEFAULT_TIMEOUT_S, find_running_node, send_control
from p2p.cli.options import data_dir_option, option_of
from p2p.settings import NODE, SettingsError, resolve, setting

F = TypeVar("F", bound=Callable[..., Any])


def _control_options(f: F) -> F:
    f = click.option(
        "--timeout",
        type=click.FloatRange(0.1, 600),
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        help="Seconds to wait for the node's answer.",
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the node's state as JSON.")(f)
    f = option_of(setting("network_key"))(f)
    return data_dir_option(f)


def ask_node(
    data_dir: Path | None, network_key: Path | None, op: str, timeout: float
) -> dict[str, Any]:
    """The state the node of the data dir answers *op* with (settings as `gpunet node` reads
    them: the flags here, else the environment, else the data dir's config.toml)."""
    flags: dict[str, Any] = {
        k: v for k, v in (("data_dir", data_dir), ("network_key", network_key)) if v is not None
    }
    try:
        settings = resolve(NODE, flags, os.environ)
    except SettingsError as exc:
        fail(str(exc))
    node = find_running_node(settings.data_dir)
    path = identity_path(settings.data_dir)
    try:
        identity = load_node_identity(path, create=False)
    except (KeyFileError, OSError) as exc:
        fail(f"cannot read the node's key {path}: {exc}")
    psk = read_network_key(settings["network_key"])
    state: dict[str, Any] = {}

    async def main() -> None:
        state.update(await send_control(node, identity, op, psk=psk, timeout_s=timeout))

    run_client(main)
    return state


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _counts(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return "none"
    return ", ".join(f"{printable(str(k))} {v}" for k, v in sorted(counts.items()))


def _pause_line(state: dict[str, Any]) -> str:
    if state.get("draining"):
        return "stopping (finishing requests in flight)"
    hours = state.get("serve_hours")
    hours_text = f", serve hours {printable(str(hours))}" if hours else ""
    change = state.get("next_change")
    until = f" until {printable(str(change)).replace('T', ' ')}" if change else ""
    if not state.get("paused"):
        return f"serving{hours_text}"
    reasons = state.get("reasons") or []
    if "owner" in reasons:
        return f"PAUSED by its owner (`gpunet resume` to serve again){hours_text}"
    return f"PAUSED outside its serve hours{hours_text}{until}"


def render_state(state: dict[str, Any]) -> list[str]:
    """The table `gpunet status` prints."""
    name = printable(str(state.get("name") or ""))
    head = f"gpunet node {printable(str(state.get('peer_id', '?')))}"
    lines = [head + (f" ({name})" if name else "")]
    lines.append(f"  state:      {_pause_line(state)}")
    lines.append(
        f"  version:    {printable(str(state.get('version', '?')))}, "
        f"up {_duration(float(state.get('uptime_s', 0)))}"
    )
    addresses = ", ".join(printable(str(a)) for a in state.get("addresses") or []) or "none"
    lines.append(f"  reach:      {printable(str(state.get('reach', '?')))}; addresses {addresses}")
    load = state.get("load") or {}
    lines.append(
        f"  requests:   {state.get('requests', 0)} served ({_counts(state.get('outcomes'))}); "
        f"{load.get('active_requests', 0)} in flight of {load.get('slots', 0)} slots"
    )
    lines.append(
        f"  tokens:     {state.get('tokens_generated', 0)} generated, "
        f"{state.get('prompt_tokens', 0)} prompt tokens read"
    )
    ttft = state.get("ttft_s") or {}
    if ttft.get("samples"):
        lines.append(
            f"  TTFT:       median {ttft['median']:.3f} s, p90 {ttft['p90']:.3f} s "
            f"(last {ttft['samples']} requests)"
        )
    lines.append(f"  refused:    {_counts(state.get('refusals'))}")
    shared = state.get("shared") or {}
    lines.append(
        f"  shared:     {_size(float(shared.get('bytes_sent', 0)))} of model files in "
        f"{shared.get('chunks_sent', 0)} chunks"
    )
    for m in state.get("models") or []:  # how each model's slot count was chosen
        if m.get("slots_how"):
            how = printable(str(m["slots_how"]))[:300]
            lines.append(f"  slots:      {printable(str(m.get('name', '?')))[:40]}: {how}")
    lines.append("")
    header = (
        "MODEL",
        "SHA256",
        "SLOTS",
        "IN USE",
        "QUEUE",
        "CONTEXT",
        "DECODE",
        "REQUESTS",
        "TOKENS",
    )
    rows = [header]
    for m in state.get("models") or []:
        rows.append(
            (
                printable(str(m.get("name", "?")))[:40],
                printable(str(m.get("sha256", "")))[:12],
                str(m.get("slots", 0)),
                str(m.get("slots_in_use", 0)),
                str(m.get("queue", 0)),
                str(m.get("context", 0)),
                f"{float(m.get('decode_tok_s', 0)):.1f} tok/s",
                str(m.get("requests", 0)),
                str(m.get("tokens_generated", 0)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    return lines


def _show(state: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    for line in render_state(state):
        click.echo(line)


@click.command("status")
@_control_options
def status_command(
    data_dir: Path | None, network_key: Path | None, as_json: bool, timeout: float
) -> None:
    """Show what the node of this data dir is doing (like `ollama ps`).

    Its models, slots in use, requests served, tokens generated, errors and refusals, time to
    first token, bytes of model files shared, reachability and uptime, asked of the running
    node over a session with the data dir's key. --json prints the node's own JSON object.
    """
    _show(ask_node(data_dir, network_key, "status", timeout), as_json)


@click.command("pause")
@_control_options
def pause_command(
    data_dir: Path | None, network_key: Path | None, as_json: bool, timeout: float
) -> None:
    """Stop the node of this data dir taking new requests.

    Requests in flight finish; the node stays in the network and announces no free slot, so
    clients go elsewhere (they are told `paused`). `gpunet resume` serves again; a restart of
    the node serves again too.
    """
    state = ask_node(data_dir, network_key, "pause", timeout)
    if as_json:
        _show(state, as_json)
    else:
        active = (state.get("load") or {}).get("active_requests", 0)
        click.echo(f"paused: new requests are refused; {active} in flight will finish.")


@click.command("resume")
@_control_options
def resume_command(
    data_dir: Path | None, network_key: Path | None, as_json: bool, timeout: float
) -> None:
    """Let the node of this data dir take requests again after `gpunet pause`.

    Outside its --serve-hours the node stays paused until the next range starts.
    """
    state = ask_node(data_dir, network_key, "resume", timeout)
    if as_json:
        _show(state, as_json)
    elif state.get("paused"):
        click.echo(f"resumed, but still {_pause_line(state)}.")
    else:
        click.echo("resumed: the node takes requests again.")
