"""`gpunet node`: the volunteer's command. Prepares what can fail before the node starts (key
file, model files, network key), runs the node until Ctrl-C or SIGTERM, and drains it.

Everything that may fail for an expected reason fails here, before `trio.run`, in one line:
a passphrase prompt must not block the event loop, and a wrong model path must not cost the
volunteer a DHT bootstrap first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import click
import trio

from crypto.identity import Identity, KeyFileError
from inference.default_model import ensure_default_model
from inference.model_file import ModelFileError, ModelInfo, inspect_gguf
from p2p import metrics
from p2p.api.app import serve_gateway
from p2p.cli.common import (
    fail,
    is_address_in_use,
    read_network_key,
    resolve_all,
    run_trio,
    setup_logging,
)
from p2p.cli.gateway import warn_if_exposed
from p2p.cli.identity import identity_path, load_node_identity
from p2p.cli.options import command_settings, setting_options
from p2p.cli.pull import models_or_pulled
from p2p.cli.ready_hints import command_name, join_lines
from p2p.cli.running_node import check_ports_free, lock_data_dir, write_node_file
from p2p.client.background_checks import BackgroundChecks
from p2p.client.network import Client
from p2p.dht.records import MAX_NODE_NAME, is_node_name
from p2p.node.config import NodeConfig, NodeError, NodeReady
from p2p.node.node_metrics import NodeWorkCollector
from p2p.node.node_stats import NodeStats
from p2p.node.runtime import ApiStarter, run_node
from p2p.reach.node_tasks import REACH_LOGGER
from p2p.settings import NODE, Settings


@attrs.frozen
class Prepared:
    """What the node needs that was read from disk before it starts."""

    data_dir: Path
    identity: Identity
    psk: bytes | None
    models: tuple[ModelInfo, ...]


def collect_model_paths(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("*.gguf"))
            if not found:
                fail(f"{p} holds no .gguf files")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            fail(f"model file {p} does not exist")
    return out


def load_model_infos(paths: Sequence[Path]) -> tuple[ModelInfo, ...]:
    if not paths:
        click.echo(
            "Preparing the default model (Gemma 3 270M Q4_K_M, checked by sha256)...", err=True
        )
        paths = [ensure_default_model()]
    infos = []
    for p in paths:
        click.echo(f"Inspecting {p} (sha256)...", err=True)
        infos.append(inspect_gguf(p))
    names = [i.name for i in infos]
    if len(set(names)) != len(names):
        fail(f"two models share a name: {names}; rename one file")
    return tuple(infos)


def prepare(settings: Settings) -> Prepared:
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        identity = load_node_identity(identity_path(data_dir))
        psk = read_network_key(settings["network_key"])
        # a model name or sha256 that is no file: from the cache, else pulled (p2p/cli/pull.py)
        infos = load_model_infos(collect_model_paths(models_or_pulled(settings)))
    except (KeyFileError, ModelFileError, OSError) as exc:
        fail(str(exc))
    return Prepared(data_dir, identity, psk, infos)


TEST_CHEATS = ("random-tokens", "drop-prefix", "lying-logprobs", "other-model:")


def cheat_from_environment() -> str:
    """$GPUNET_TEST_CHEAT: a node that lies on purpose, for the spot-check tests only
    (docs/security.md). Never a setting: it has no flag and no config.toml key."""
    cheat = os.environ.get("GPUNET_TEST_CHEAT", "")
    if not cheat:
        return ""
    if cheat not in TEST_CHEATS[:3] and not (cheat.startswith(TEST_CHEATS[3]) and cheat[12:]):
        fail(f"GPUNET_TEST_CHEAT must be one of {', '.join(TEST_CHEATS)}PATH, not {cheat!r:.80}")
    if cheat.startswith("other-model:") and not Path(cheat.split(":", 1)[1]).is_file():
        fail(f"GPUNET_TEST_CHEAT: no such model file {cheat.split(':', 1)[1]!r:.200}")
    return cheat


def node_config(
    settings: Settings, prepared: Prepared, bootstrap: Sequence[tuple[str, int]]
) -> NodeConfig:
    return NodeConfig(
        data_dir=prepared.data_dir,
        models=prepared.models,
        host=settings["host"],
        dht_port=settings["dht_port"],
        port=settings["port"],
        bootstrap=tuple(bootstrap),
        n_threads=settings["threads"],
        n_ctx=settings["ctx_size"],
        join_timeout_s=settings["join_timeout"],
        grace_s=settings["grace"],
        psk=prepared.psk,
        name=settings["name"] or "",
        max_queue=settings["max_queue"],
        max_requests=settings["max_requests"],
        slots=settings["slots"],
        gpu_layers=settings["gpu_layers"],
        max_vram=settings["max_vram"],
        serve_hours=settings["serve_hours"],
        benchmark=settings["benchmark"],
        prompt_cache=settings["prompt_cache"],
        speculate=settings["speculate"],
        port_mapping=settings["port_mapping"],
        hole_punch=settings["hole_punch"],
        relay=settings["relay"],
        relay_max_reservations=settings["relay_max_reservations"],
        relay_max_circuits=settings["relay_max_circuits"],
        relay_bytes_per_s=settings["relay_bytes_per_s"],
        share=settings["share"],
        share_rate=float(settings["share_rate"]),
        cheat=cheat_from_environment(),
    )


def api_starter(settings: Settings) -> ApiStarter | None:
    """`--api`: the gateway inside the node's process, reaching the node in-process."""
    address = settings["api"]
    if address is None:
        return None
    host, port = address
    key = settings["api_key"]
    warn_if_exposed(host, key)

    def start(client: Client) -> Callable[..., Awaitable[None]]:
        return partial(
            serve_gateway,
            client,
            host,
            port,
            api_key=key,
            cors_origins=settings["cors"],
            probes=settings["probes"],
            checks=BackgroundChecks.of_settings(
                client, settings["verify_fraction"], settings.data_dir
            ),
        )

    return start


def print_ready(ready: NodeReady, data_dir: Path, bind_host: str, as_json: bool) -> None:
    write_node_file(
        data_dir,
        {"peer_id": ready.peer_id, "dht": ready.dht_address, "session": ready.session_address},
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "event": "ready",
                    "peer_id": ready.peer_id,
                    "dht": ready.dht_address,
                    "session": ready.session_address,
                    "models": [{"name": m.name, "sha256": m.sha256} for m in ready.models],
                    "api": ready.api_url + "/v1" if ready.api_url else None,
                }
            )
        )
        return
    click.echo(f"gpunet node {ready.peer_id} is serving:")
    for m in ready.models:
        click.echo(f"  {m.name}  ({m.architecture}, {m.quantization}, sha256 {m.sha256[:16]}...)")
    click.echo(f"DHT (UDP) {ready.dht_address}; sessions (TCP) {ready.session_address}")
    prog = command_name(sys.argv[0], sys.executable, os.getcwd(), shutil.which)
    for line in join_lines(ready, bind_host, prog):
        click.echo(line)
    if ready.api_url:
        click.echo(f"OpenAI API:         {ready.api_url}/v1   (dashboard {ready.api_url}/)")
    click.echo("Press Ctrl-C to stop.")


async def stop_on_signals(shutdown: trio.Event, scope: trio.CancelScope, grace: float) -> None:
    """Ctrl-C or SIGTERM: drain gracefully (see `run_node`); a second one stops at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            if shutdown.is_set():
                scope.cancel()
                return
            click.echo(
                f"gpunet node stopping: finishing requests in flight (up to {grace:g} s; "
                "press Ctrl-C again to stop now)...",
                err=True,
            )
            shutdown.set()


async def serve_until_stopped(
    settings: Settings, prepared: Prepared, api: ApiStarter | None, as_json: bool
) -> None:
    config = node_config(settings, prepared, await resolve_all(settings["bootstrap"]))
    shutdown = trio.Event()
    stats = NodeStats()
    if api is not None:  # the work it serves for others on its /metrics too
        metrics.DEFAULT.registry.register(NodeWorkCollector(stats))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals, shutdown, nursery.cancel_scope, config.grace_s)
        async with trio.open_nursery() as node_nursery:
            ready = await node_nursery.start(
                partial(
                    run_node,
                    config,
                    identity=prepared.identity,
                    shutdown=shutdown,
                    on_progress=lambda line: click.echo(line, err=True),
                    api=api,
                    stats=stats,
                )
            )
            print_ready(ready, prepared.data_dir, settings["host"], as_json)
        nursery.cancel_scope.cancel()  # the node has drained and returned


def _port_hint(err: BaseException) -> str:
    if is_address_in_use(err):
        return " (is another node using the port? pass --port/--dht-port, 0 picks a free one)"
    return ""


@click.command("node")
@setting_options(NODE)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def node_command(as_json: bool, **_flags: Any) -> None:
    """Run a volunteer node: serve GGUF models to the network.

    Without --bootstrap this starts a new network and prints the address others join with.
    Every option can also be set in the environment (GPUNET_<OPTION>) or in config.toml in the
    data dir; `gpunet config` shows what is in effect.
    """
    settings = command_settings(NODE)
    setup_logging(settings["verbose"], settings["log_file"])
    if not is_node_name(settings["name"] or ""):
        fail(f"--name: at most {MAX_NODE_NAME} printable characters, no line breaks or tabs")
    # Reachability verdicts and relays held are what a volunteer behind a router wants to see.
    reach_log = logging.getLogger(REACH_LOGGER)
    reach_log.setLevel(min(reach_log.getEffectiveLevel(), logging.INFO))
    api = api_starter(settings)
    # Before anything else touches the data dir: a second node here must change nothing.
    lock = lock_data_dir(settings.data_dir)
    try:
        check_ports_free(settings["host"], settings["dht_port"], settings["port"])
        prepared = prepare(settings)
        run_trio(
            partial(serve_until_stopped, settings, prepared, api, as_json),
            (NodeError, KeyFileError, ModelFileError, OSError),
            hint=_port_hint,
        )
        click.echo("gpunet node stopped.", err=True)  # after a drain, or Ctrl-C before start
    finally:
        lock.release()
