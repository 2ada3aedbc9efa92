"""`gpunet pull NAME_OR_SHA256`: fetch a GGUF from the peers that serve it into the model cache,
and the same for `gpunet node --model NAME_OR_SHA256` before the node starts.

Zero-config like `gpunet ask`: without --bootstrap it joins through the node started from the
same data dir. The transfer itself is p2p/share/fetcher.py's; this file draws the progress bar
(tqdm on stderr, with rate and ETA; off when stderr is not a terminal) and turns failures into
one line and an exit status.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import click

from inference.model_cache import model_cache_dir
from p2p.cli.common import (
    client_bootstrap,
    fail,
    read_network_key,
    resolve_all,
    run_trio,
    setup_logging,
)
from p2p.cli.options import command_settings, setting_options
from p2p.client.network import AskError, open_client
from p2p.dht.record_entries import is_model_name, is_sha256
from p2p.errors import GpunetError
from p2p.settings import Settings
from p2p.share.fetcher import present_result, pull
from p2p.share.pull_files import find_in_cache
from p2p.share.pull_progress import ProgressCallback, PullProgress, PullResult, result_json
from p2p.share.suspects import SuspectPeers

EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C; the pull resumes where it stopped


SUSPECTS_FILE = "suspect-peers.json"


def is_pullable(value: Path) -> bool:
    """Whether a `--model` value that is no file names a model to fetch: a sha256, or a bare
    model name (no folder, no .gguf suffix: a mistyped path stays an error about the path)."""
    text = str(value)
    if value.exists() or "/" in text or text.endswith(".gguf"):
        return False
    return is_sha256(text.lower()) or is_model_name(text)


class _Bar:
    """A tqdm bar on stderr, made at the first report (when the size is known)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def __call__(self, p: PullProgress) -> None:
        if self.bar is None:
            from tqdm import tqdm  # only when a pull really starts

            self.bar = tqdm(
                total=p.total_bytes,
                initial=p.verified_bytes,
                desc=self.label,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,  # MB as the summary line counts them
                file=sys.stderr,
                disable=None,  # on a terminal only
                dynamic_ncols=True,
            )
        self.bar.set_postfix(peers=p.peers, refresh=False)
        self.bar.update(p.verified_bytes - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bootstrap(settings: Settings, local: bool) -> list[tuple[str, int]]:
    """Where to join: --bootstrap; for `gpunet pull` also the node of the same data dir (a
    node about to start from that data dir has only its --bootstrap)."""
    if local:
        return client_bootstrap(settings["bootstrap"], settings.data_dir)
    return list(settings["bootstrap"])


async def _pull_all(
    settings: Settings, wanted: Sequence[str], progress: bool, local: bool = True
) -> list[PullResult]:
    cache = model_cache_dir()
    present = [find_in_cache(cache, name) for name in wanted]
    if all(p is not None for p in present):  # no network needed
        return [present_result(p, name) for p, name in zip(present, wanted, strict=True) if p]
    addrs = await resolve_all(_bootstrap(settings, local))
    if not addrs:
        raise AskError(
            "no network to fetch from: pass --bootstrap HOST:PORT of a node that serves the "
            "model (or start a node from this data dir first)"
        )
    results = []
    # Peers whose manifest lied, remembered for a day in the data dir (p2p/share/suspects.py).
    suspects = SuspectPeers(settings.data_dir / SUSPECTS_FILE)
    async with open_client(addrs, psk=read_network_key(settings["network_key"])) as client:
        for name in wanted:
            bar = _Bar(name[:16] if is_sha256(name.lower()) else name)
            on_progress: ProgressCallback = bar if progress else (lambda _p: None)
            try:
                pulled = await pull(client, name, cache, on_progress=on_progress, suspects=suspects)
                results.append(pulled)
            finally:
                bar.close()
    return results


def _say(result: PullResult) -> None:
    if result.already_present:
        click.echo(f"{result.path} is already in the model cache", err=True)
        return
    peers = sum(1 for p in result.peers if p.chunks)
    resumed = f", {result.resumed_bytes / 1e6:.1f} MB resumed" if result.resumed_bytes else ""
    click.echo(
        f"pulled {result.name} ({result.size / 1e6:.1f} MB, sha256 {result.sha256[:12]}) from "
        f"{peers} peer(s) in {result.seconds:.1f} s, {result.rate_mb_s:.1f} MB/s{resumed}",
        err=True,
    )
    if result.strikes:
        click.echo(
            f"  {result.strikes} chunk(s) failed their hash and were fetched again", err=True
        )
    for sha, count in result.other_files:
        click.echo(
            f"  note: {count} node(s) serve another file of this name, sha256 {sha}; "
            f"`gpunet pull {sha}` fetches that one",
            err=True,
        )


def pull_models(settings: Settings, wanted: Sequence[str], *, local: bool = True) -> list[Path]:
    """Paths of *wanted* models (names or sha256s), from the model cache or fetched first;
    for `gpunet node --model NAME`. Fails in one line when one cannot be had."""
    cache = model_cache_dir()
    found = {w: find_in_cache(cache, w) for w in wanted}
    missing = [w for w, p in found.items() if p is None]
    if missing:
        if not _bootstrap(settings, local):
            fail(
                f"{missing[0]!r:.80} is neither a file nor in the model cache ({cache}); to fetch "
                "it from the network, give --bootstrap HOST:PORT of a node that serves it"
            )
        click.echo(f"Fetching {', '.join(missing)} from the network...", err=True)
        results = _run(partial(_pull_all, settings, missing, True, local))
        for name, result in zip(missing, results, strict=True):
            _say(result)
            found[name] = result.path
    return [p for p in found.values() if p is not None]


def _run(main_fn: Any) -> Any:
    box: list[Any] = []

    async def main() -> None:
        box.append(await main_fn())

    if not run_trio(main, (AskError, GpunetError, OSError)):
        click.echo("interrupted; pull again to resume where it stopped", err=True)
        sys.exit(EXIT_INTERRUPTED)
    return box[0]


@click.command("pull")
@setting_options("pull")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object when done.")
@click.argument("model", metavar="NAME_OR_SHA256")
def pull_command(model: str, as_json: bool, **_flags: Any) -> None:
    """Fetch the model NAME_OR_SHA256 from the nodes that serve it into the model cache.

    By name, the file most nodes serve under that name (others are listed); by sha256, exactly
    that file. Chunks come from several nodes at once, each checked against the manifest the
    nodes agree on before it is written; the whole file is checked against its sha256 before it
    is moved into the cache, and a pull stopped by Ctrl-C or a crash resumes where it stopped.
    `gpunet node --model NAME` serves it then.

    Exit status: 0 pulled (or already there), 1 failed (nobody serves it, every peer failed,
    disk full), 130 interrupted.
    """
    if not (is_sha256(model.lower()) or is_model_name(model)):
        fail(f"{model!r:.80} is not a model name or a sha256 (64 hex digits)")
    settings = command_settings("pull")
    setup_logging(settings["verbose"])
    try:
        (result,) = _run(partial(_pull_all, settings, [model], True))
    except click.ClickException as exc:
        if as_json:
            click.echo(json.dumps({"error": exc.format_message()}))
        raise
    if as_json:
        click.echo(json.dumps(result_json(result)))
    else:
        _say(result)
        click.echo(str(result.path))


def models_or_pulled(settings: Settings) -> list[Path]:
    """`gpunet node --model` values, in order, with each model name or sha256 that is no file
    replaced by its file in the model cache (pulled from the network first if need be)."""
    given: list[Path] = list(settings["models"])
    wanted = [str(p) for p in given if is_pullable(p)]
    if not wanted:
        return given
    pulled = dict(zip(wanted, pull_models(settings, wanted, local=False), strict=True))
    return [pulled.get(str(p), p) for p in given]
