"""`gpunet`: the command line. Turns every expected failure into one line on stderr and exit 1."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import platformdirs
import trio

from crypto.identity import KeyFileError
from crypto.network_key import load_network_key
from inference.default_model import ensure_default_model
from inference.model_file import ModelFileError, ModelInfo, inspect_gguf
from inference.offload import parse_gpu_layers
from p2p.protocol import wire
from p2p.cli.identity import identity_group, identity_path, load_node_identity
from p2p.client.network_client import AskError, Provider, generate, list_nodes, open_client
from p2p.dht.node import resolve
from p2p.cli.gateway import gateway_command, parse_api_address, warn_if_exposed
from p2p.node.runtime import NodeConfig, NodeError, NodeReady, run_node
from p2p.client.provider_query import filter_providers, parse_size
from p2p.dht.records import record_to_json

F = TypeVar("F", bound=Callable[..., Any])

NODE_FILE = "node.json"  # where a running node leaves its addresses for local clients
DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m"


def find_error(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of *kinds* inside *exc* (trio wraps errors in exception groups)."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_error(inner, kinds)
            if found is not None:
                return found
    return None


def fail(message: str) -> NoReturn:
    click.echo(f"gpunet: error: {message}", err=True)
    sys.exit(1)


def default_data_dir() -> Path:
    return Path(os.environ.get("GPUNET_DATA_DIR") or platformdirs.user_data_dir("gpunet"))


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def common_options(f: F) -> F:
    f = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where the identity key and node state live (env GPUNET_DATA_DIR; "
        "default: the user data dir).",
    )(f)
    f = click.option(
        "--bootstrap",
        "bootstrap",
        multiple=True,
        metavar="HOST:PORT",
        help="DHT address of a node already in the network (repeatable; env GPUNET_BOOTSTRAP, "
        "comma-separated). Clients default to the node started from the same data dir.",
    )(f)
    f = click.option(
        "--network-key",
        "network_key",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar="GPUNET_NETWORK_KEY",
        help="Key file of a private network (`gpunet identity network-key new FILE`); "
        "env GPUNET_NETWORK_KEY. Without it: the public network.",
    )(f)
    f = click.option("-v", "--verbose", count=True, help="More diagnostics on stderr.")(f)
    return f


def read_network_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return load_network_key(path)
    except KeyFileError as exc:
        fail(str(exc))


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # kademlia logs every unanswered RPC as a warning (departed clients are normal here);
    # show its chatter only when asked twice.
    for name in ("kademlia", "rpcudp"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)
    # llama.cpp's notes about its own cache layout are for developers, not volunteers.
    logging.getLogger("llama.cpp").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


def bootstrap_list(given: Sequence[str], data_dir: Path, *, for_client: bool) -> list[str]:
    if given:
        return list(given)
    env = os.environ.get("GPUNET_BOOTSTRAP", "")
    if env.strip():
        return [a for a in env.split(",") if a.strip()]
    node_file = data_dir / NODE_FILE
    if for_client and node_file.exists():
        try:
            return [str(json.loads(node_file.read_text())["dht"])]
        except (ValueError, KeyError, OSError):
            return []
    return []


async def resolve_all(addresses: Sequence[str]) -> list[tuple[str, int]]:
    out = []
    for text in addresses:
        host, port = parse_address(text)
        try:
            out.append(await resolve(host, port))
        except OSError as exc:
            fail(f"cannot resolve bootstrap address {text}: {exc}")
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpunet", message="gpunet %(version)s")
def main() -> None:
    """gpunet: a volunteer GPU network for inference on quantized open models.

    Volunteers run `gpunet node`; anyone runs `gpunet ask` or `gpunet peers` against the
    network. Nodes find each other through a Kademlia DHT, publish signed records of their
    hardware and models, and serve tokens over encrypted, mutually authenticated sessions.
    """


# --- node ---------------------------------------------------------------------------------


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


def print_ready(ready: NodeReady, data_dir: Path, as_json: bool) -> None:
    (data_dir / NODE_FILE).write_text(
        json.dumps(
            {"peer_id": ready.peer_id, "dht": ready.dht_address, "session": ready.session_address}
        )
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
    click.echo(f"Others join with:  gpunet node --bootstrap {ready.dht_address}")
    click.echo(
        f'Ask it:            gpunet ask --bootstrap {ready.dht_address} "The capital of France is"'
    )
    if ready.api_url:
        click.echo(f"OpenAI API:        {ready.api_url}/v1   (dashboard {ready.api_url}/)")
    click.echo("Press Ctrl-C to stop.")


@main.command()
@common_options
@click.option(
    "--model",
    "models",
    multiple=True,
    type=click.Path(path_type=Path),
    help="GGUF file or folder of GGUF files to serve (repeatable; default: Gemma 3 270M).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 to accept other machines.",
)
@click.option(
    "--dht-port",
    default=8468,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="UDP port of the DHT (0: any free port).",
)
@click.option(
    "--port",
    default=8469,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port of encrypted sessions (0: any free port).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 512),
    default=None,
    help="CPU threads for llama.cpp, for decoding and for prompts (default: all cores).",
)
@click.option(
    "--slots",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Requests decoded together per model (continuous batching).",
)
@click.option(
    "--gpu-layers",
    default="auto",
    show_default=True,
    metavar="N|auto|0",
    help="Layers to offload to the GPU: auto fits them to free VRAM, 0 keeps the CPU.",
)
@click.option(
    "--max-queue",
    default=8,
    show_default=True,
    type=click.IntRange(0, 1024),
    help="Requests allowed to wait per model; beyond it the node answers busy at once.",
)
@click.option(
    "--max-requests",
    default=None,
    type=click.IntRange(0, 100_000),
    help="Requests in flight on the node (default: slots + queue of every model); beyond it "
    "the node answers busy. 0 announces the node but serves nothing.",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Seconds in-flight requests get to finish on Ctrl-C/SIGTERM.",
)
@click.option(
    "--api",
    default=None,
    metavar="HOST:PORT",
    help="Also serve the OpenAI-compatible API, dashboard and metrics here (e.g. 127.0.0.1:8470).",
)
@click.option(
    "--api-key",
    envvar="GPUNET_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on the API (env GPUNET_API_KEY).",
)
@click.option(
    "--benchmark/--no-benchmark",
    default=True,
    show_default=True,
    help="Measure each model's prefill and decode speed at start (about 1.5 s a model); the "
    "record publishes it and clients prefer faster nodes. Without it the node counts as average.",
)
@click.option(
    "--prompt-cache/--no-prompt-cache",
    default=True,
    show_default=True,
    help="Keep each slot's last prompt and answer in the KV cache, so a request that starts the "
    "same way skips that part of the prefill.",
)
@click.option(
    "--speculate/--no-speculate",
    default=True,
    show_default=True,
    help="Greedy requests whose text repeats itself (lists, loops, quoted prompt) guess the "
    "repeat's next tokens and check them in one step: the same greedy tokens, sooner.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def node(
    data_dir: Path | None,
    bootstrap: tuple[str, ...],
    verbose: int,
    network_key: Path | None,
    models: tuple[Path, ...],
    host: str,
    dht_port: int,
    port: int,
    threads: int | None,
    slots: int,
    gpu_layers: str,
    max_queue: int,
    max_requests: int | None,
    grace: float,
    api: str | None,
    api_key: str | None,
    benchmark: bool,
    prompt_cache: bool,
    speculate: bool,
    as_json: bool,
) -> None:
    """Run a volunteer node: serve GGUF models to the network.

    Without --bootstrap this starts a new network and prints the address others join with.
    """
    setup_logging(verbose)
    data_dir = data_dir or default_data_dir()
    try:
        parse_gpu_layers(gpu_layers)
    except ValueError as exc:
        fail(str(exc))
    api_address = parse_api_address(api) if api else None
    if api_address is not None:
        warn_if_exposed(api_address[0], api_key)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        identity = load_node_identity(identity_path(data_dir))
        psk = read_network_key(network_key)
        infos = load_model_infos(collect_model_paths(models))
    except (KeyFileError, ModelFileError, OSError) as exc:
        fail(str(exc))

    async def amain() -> None:
        addrs = await resolve_all(bootstrap_list(bootstrap, data_dir, for_client=False))
        config = NodeConfig(
            data_dir=data_dir,
            models=infos,
            host=host,
            dht_port=dht_port,
            port=port,
            bootstrap=tuple(addrs),
            n_threads=threads,
            grace_s=grace,
            psk=psk,
            api=api_address,
            api_key=api_key,
            max_queue=max_queue,
            max_requests=max_requests,
            slots=slots,
            gpu_layers=gpu_layers,
            benchmark=benchmark,
            prompt_cache=prompt_cache,
            speculate=speculate,
        )
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signals, shutdown, nursery.cancel_scope, grace)
            async with trio.open_nursery() as node_nursery:
                ready = await node_nursery.start(
                    partial(
                        run_node,
                        config,
                        identity=identity,
                        shutdown=shutdown,
                        on_progress=lambda line: click.echo(line, err=True),
                    )
                )
                print_ready(ready, data_dir, as_json)
            nursery.cancel_scope.cancel()  # the node has drained and returned
        click.echo("gpunet node stopped.", err=True)

    try:
        trio.run(amain)
    except BaseException as exc:
        if find_error(exc, (KeyboardInterrupt,)):  # Ctrl-C before the node was up
            click.echo("gpunet node stopped.", err=True)
            return
        err = find_error(exc, (NodeError, KeyFileError, ModelFileError, OSError))
        if err is None:
            raise
        hint = " (is another node using the port? pass --port/--dht-port, 0 picks a free one)"
        fail(f"{err}{hint if 'in use' in str(err) else ''}")
    finally:
        (data_dir / NODE_FILE).unlink(missing_ok=True)


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


# --- clients --------------------------------------------------------------------------------


def run_client(main_fn: Callable[[], Any]) -> None:
    try:
        trio.run(main_fn)
    except BaseException as exc:
        if find_error(exc, (KeyboardInterrupt,)):
            sys.exit(130)
        err = find_error(exc, (AskError, OSError))
        if err is None:
            raise
        fail(str(err))


def printable(text: str) -> str:
    """Text from a stranger's record, with control characters (terminal escapes) replaced."""
    return "".join(c if c.isprintable() else "?" for c in text)


@main.command()
@common_options
@click.option(
    "--model",
    default=None,
    metavar="NAME_OR_SHA256",
    help="Only nodes serving this model (name or sha256); the filters below need it.",
)
@click.option("--gpu/--no-gpu", default=None, help="Only nodes serving it on a GPU / on the CPU.")
@click.option("--min-vram", default=None, metavar="SIZE", help="Free VRAM on one GPU, e.g. 8G.")
@click.option("--quant", default=None, metavar="QUANT", help="Quantization, e.g. Q4_K_M.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of node records.")
def peers(
    data_dir: Path | None,
    bootstrap: tuple[str, ...],
    verbose: int,
    network_key: Path | None,
    model: str | None,
    gpu: bool | None,
    min_vram: str | None,
    quant: str | None,
    as_json: bool,
) -> None:
    """List the nodes of the network and what they serve."""
    setup_logging(verbose)
    data_dir = data_dir or default_data_dir()
    if model is None and (gpu is not None or min_vram or quant):
        fail("--gpu, --min-vram and --quant filter the providers of a model: add --model")
    try:
        vram = parse_size(min_vram) if min_vram else None
    except ValueError as exc:
        fail(str(exc))

    async def amain() -> None:
        addrs = await resolve_all(bootstrap_list(bootstrap, data_dir, for_client=True))
        async with open_client(addrs, psk=read_network_key(network_key)) as client:
            records = await list_nodes(client)
        if model:
            matches = filter_providers(records, model, gpu=gpu, min_vram=vram, quantization=quant)
            records = [m.record for m in matches]
        if as_json:
            click.echo(json.dumps([record_to_json(r) for r in records], indent=2))
            return
        if not records:
            click.echo("no nodes found", err=True)
        for r in records:
            hw = (
                ", ".join(
                    f"{g.name} {g.vram_free / 2**30:.1f}/{g.vram_total / 2**30:.1f} GiB free"
                    for g in r.gpus
                )
                or f"CPU, {r.cpu.cores} cores"
            )
            lines = [
                f"{r.peer_id[:16]}  {','.join(r.addresses)}  {hw}  load {r.load.active_requests}"
            ]
            if r.build or r.hardware_class:
                lines.append(f"    {r.build or 'build unknown'}  on  {r.hardware_class or '?'}")
            on_cpu = r.hardware_class.startswith("cpu ") if r.hardware_class else not r.gpus
            if on_cpu and r.cpu.simd:
                lines.append(f"    simd {' '.join(r.cpu.simd)}")
            lines += [
                f"    {m.name}  {m.quantization}  {m.architecture}  sha256 {m.sha256[:16]}..."
                for m in r.models
            ]
            for line in lines:
                click.echo(printable(line))

    run_client(amain)


@main.command()
@common_options
@click.option(
    "--model",
    default=None,
    metavar="NAME_OR_SHA256",
    help=f"Model name or sha256 (default: {DEFAULT_MODEL_NAME} if offered).",
)
@click.option(
    "--max-tokens", default=128, show_default=True, type=click.IntRange(1, wire.MAX_TOKENS_LIMIT)
)
@click.option(
    "--temperature",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 10.0),
    help="0 is greedy (deterministic).",
)
@click.option("--seed", default=None, type=click.IntRange(0, 2**32 - 1), help="Sampling seed.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option(
    "--chat",
    is_flag=True,
    help="Send PROMPT as a user message, rendered with the model's chat template "
    "(or its architecture's turn format when the GGUF has none).",
)
@click.option(
    "--reproducible",
    is_flag=True,
    help="Decode alone on the node, never batched with other requests: bit-identical to any "
    "other reproducible run on the same build and hardware, at some cost in the node's throughput.",
)
@click.option(
    "--prefer",
    default=None,
    metavar="PEER_ID",
    help="Try this node first (peer id or a prefix, as `gpunet peers` shows); others are "
    "the fallback.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object at the end instead of streaming."
)
@click.argument("prompt")
def ask(
    data_dir: Path | None,
    bootstrap: tuple[str, ...],
    verbose: int,
    network_key: Path | None,
    model: str | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    stop: tuple[str, ...],
    chat: bool,
    reproducible: bool,
    prefer: str | None,
    as_json: bool,
    prompt: str,
) -> None:
    """Send PROMPT to the network and stream the generated text to stdout.

    The default model is a base model: it continues text rather than answering questions
    (with --chat it gets Gemma's turn format, but expect rambling rather than answers).
    """
    setup_logging(verbose)
    data_dir = data_dir or default_data_dir()
    pieces: list[str] = []

    def on_text(text: str) -> None:
        pieces.append(text)
        if not as_json:
            sys.stdout.write(text)
            sys.stdout.flush()

    def on_provider(p: Provider) -> None:
        if verbose:
            click.echo(
                f"[{p.record.peer_id[:16]} at {p.record.addresses[0]} serves "
                f"{p.model.name} {p.model.sha256[:12]}; chosen for: {p.reason}]",
                err=True,
            )

    async def amain() -> None:
        addrs = await resolve_all(bootstrap_list(bootstrap, data_dir, for_client=True))
        async with open_client(addrs, psk=read_network_key(network_key)) as client:
            chosen = model or await pick_default_model(client)
            request = wire.Generate(
                id=1,
                model=chosen,
                prompt="" if chat else prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                stop=stop,
                messages=(wire.ChatMessage("user", prompt),) if chat else (),
                reproducible=reproducible,
            )
            done = await generate(client, chosen, request, on_text, on_provider, prefer=prefer)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "text": "".join(pieces),
                        "finish_reason": done.finish_reason,
                        "prompt_tokens": done.prompt_tokens,
                        "completion_tokens": done.completion_tokens,
                        "ttft_s": done.ttft_s,
                        "decode_tok_s": done.decode_tok_s,
                    }
                )
            )
        else:
            sys.stdout.write("\n")
        if verbose:
            click.echo(
                f"[{done.completion_tokens} tokens, {done.finish_reason}, "
                f"{done.decode_tok_s:.1f} tok/s]",
                err=True,
            )

    run_client(amain)


async def pick_default_model(client: Any) -> str:
    offered = [m.name for r in await list_nodes(client) for m in r.models]
    if not offered or DEFAULT_MODEL_NAME in offered:
        return DEFAULT_MODEL_NAME
    return max(set(offered), key=offered.count)


main.add_command(identity_group)
main.add_command(gateway_command)
