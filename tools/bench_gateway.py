"""Benchmark gpunet's OpenAI gateway beside llama-cpp-python's and llama.cpp's own servers.

Every request is the shared yardstick's (../shared/bench/openai_stream_bench.py): streaming
/v1/completions, greedy, 128 tokens, the same prompt; same model (default: Gemma 3 270M Q4_K_M),
2 threads each.

  gateway            a `gpunet node --threads 2` process and a gateway process joined to it
                     through the DHT; requests travel HTTP -> gateway -> Noise session -> node
  node --api         one `gpunet node --api` process: the gateway inside the node, which
                     reaches the node in-process (p2p/session/local.py)
  llama_cpp.server   `python -m llama_cpp.server --n_threads 2` (needs the [server] extras; give
                     an interpreter that has them with --llama-cpp-python)
  llama-server       llama.cpp's server, `-t 2 -c 8192 -np 8`, when --llama-server names the
                     binary (build it with ../shared/bench/build-llama-server.sh)

and, when asked for, two more beside them:

  gateway --no-speculate      (--no-speculate-too) the gateway, its node without greedy
                              speculation (inference/speculation.py): what speculation adds
  llama-server TYPE           (--llama-server-spec TYPE) llama-server with `--spec-type TYPE`,
                              its own draft-free speculation (off by default), e.g. ngram-mod

Two modes:

  --mode paired      (default) all servers are started together (idle ones cost no CPU), then
                     measured in alternation, one unit at a time: a single stream (TTFT, decode
                     tok/s), or K concurrent streams (aggregate tok/s), rotating which server
                     goes first. Medians per server, and the median of the per-round ratios
                     gateway / other: on a shared machine whose load drifts over minutes this
                     compares like with like, which a whole measure() per server does not.
  --mode yardstick   the shared script's measure() as it is, one server after the other
                     (TTFT and decode: median of 3 after a warm-up; aggregates at 2, 4, 8).

    python tools/bench_gateway.py [--mode paired] [--rounds 5] [--llama-cpp-python PY]
                                  [--llama-server BIN] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from _bench_servers import (
    DEFAULT_BENCH,
    ROOT,
    THREADS,
    Process,
    Target,
    has_llama_cpp_server,
    llama_cpp_server,
    llama_server,
    load_bench,
    log,
    wait_for_models,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONCURRENCY = (2, 4, 8)
# Until `gpunet gateway` is registered in the CLI, the command is run straight from its module.
GATEWAY_CODE = "from p2p.cli.gateway import gateway_command as g; g(prog_name='gpunet gateway')"


# --- servers ----------------------------------------------------------------------------------


def gateway_cmd() -> list[str]:
    from p2p.cli.main import main

    if "gateway" in getattr(main, "commands", {}):
        return [sys.executable, "-m", "p2p", "gateway"]
    return [sys.executable, "-c", GATEWAY_CODE]


def node_env(work: Path) -> dict[str, str]:
    env = dict(os.environ, GPUNET_DATA_DIR=str(work / "node"), GPUNET_BOOTSTRAP="")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _node_process(model: Path, work: Path, slots: int | None, threads: int, *extra: str) -> Process:
    """A `gpunet node` on free ports, alone in its own DHT, reporting ready as JSON; `slots`
    None leaves --slots to the node's default (or to *extra*)."""
    cmd = [sys.executable, "-m", "p2p", "node", "--model", str(model), "--dht-port", "0"]
    cmd += ["--port", "0", "--threads", str(threads), "--json"]
    if slots is not None:
        cmd += ["--slots", str(slots)]
    return Process([*cmd, *extra], work / "node.log", node_env(work))


@contextlib.contextmanager
def gateway_server(
    model: Path, work: Path, slots: int = 8, threads: int = THREADS, node_args: tuple[str, ...] = ()
) -> Iterator[str]:
    node = _node_process(model, work, slots, threads, *node_args)
    gateway: Process | None = None
    try:
        dht = node.ready_json()["dht"]
        gw_env = dict(node_env(work), GPUNET_DATA_DIR=str(work / "gateway"))
        gw_cmd = [*gateway_cmd(), "--bootstrap", dht]
        # Throughput is measured here, not the admission policy: let requests queue as long as
        # they need (a burst of 8 x 128 tokens on a loaded CPU can take minutes).
        gw_cmd += ["--api", "127.0.0.1:0", "--queue-timeout", "900", "--json"]
        gateway = Process(gw_cmd, work / "gateway.log", gw_env)
        url = str(gateway.ready_json()["api"])
        wait_for_models(url)
        yield url
    finally:
        if gateway is not None:
            gateway.stop()
        node.stop()


@contextlib.contextmanager
def node_api_server(
    model: Path,
    work: Path,
    slots: int | None = 8,
    threads: int = THREADS,
    extra: Sequence[str] = (),
) -> Iterator[str]:
    """`gpunet node --api`: the gateway inside the node's process, reaching it in-process;
    *extra* goes after the node's own flags."""
    node = _node_process(model, work, slots, threads, "--api", "127.0.0.1:0", *extra)
    try:
        url = str(node.ready_json()["api"])
        wait_for_models(url)
        yield url
    finally:
        node.stop()


# --- measuring ------------------------------------------------------------------------------


def paired(
    targets: list[Target], rounds: int, ks: tuple[int, ...]
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, float]]]]:
    """Alternate the targets unit by unit; returns (medians, per-round figures)."""
    runs: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for r in range(rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        row: dict[str, dict[str, float]] = {}
        for t in order:
            row[t.name] = t.single()
        for k in ks:
            for t in order:
                row[t.name][f"agg{k}_tok_s"] = t.concurrent(k)
        load = os.getloadavg()[0]
        for name, figures in row.items():
            figures["load1"] = load
            runs[name].append(figures)
        log(
            f"round {r + 1}/{rounds} (load {load:.2f}): "
            + json.dumps({n: {k: round(v, 1) for k, v in f.items()} for n, f in row.items()})
        )
    medians = {
        name: {k: statistics.median(f[k] for f in figs) for k in figs[0]}
        for name, figs in runs.items()
    }
    return medians, runs


OURS = ("gateway", "node --api")


def paired_ratios(
    runs: dict[str, list[dict[str, float]]], ours: str, other: str
) -> dict[str, float]:
    """Median over rounds of ours/other, per figure (measured minutes apart at most)."""
    gw, ot = runs[ours], runs[other]
    return {
        k: statistics.median(g[k] / o[k] for g, o in zip(gw, ot, strict=True) if o[k])
        for k in gw[0]
        if k != "load1"
    }


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--mode", choices=("paired", "yardstick"), default="paired")
    parser.add_argument("--rounds", type=int, default=None, help="paired: 5; yardstick: 1")
    parser.add_argument(
        "--concurrency", type=int, action="append", default=None, help="paired: K (4 and 8)"
    )
    parser.add_argument("--bench-script", type=Path, default=DEFAULT_BENCH)
    parser.add_argument(
        "--llama-cpp-python",
        default=sys.executable,
        metavar="PYTHON",
        help="interpreter with llama-cpp-python[server] installed (default: this one)",
    )
    parser.add_argument("--llama-server", type=Path, default=None, metavar="BIN")
    parser.add_argument(
        "--slots", type=int, default=8, help="the node's --slots (8 matches llama-server -np 8)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help=f"llama.cpp threads of every server (default {THREADS}, all cores here; 1 leaves "
        "the HTTP and session work a core of its own)",
    )
    parser.add_argument(
        "--no-speculate-too",
        action="store_true",
        help="also a gateway whose node runs --no-speculate (greedy speculation's share)",
    )
    parser.add_argument(
        "--llama-server-spec",
        action="append",
        default=[],
        metavar="TYPE",
        help="also llama-server with --spec-type TYPE (its own draft-free speculation, e.g. "
        "ngram-mod); repeatable",
    )
    parser.add_argument("--only", action="append", default=None, help="run only these servers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    bench = load_bench(args.bench_script)
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    servers: dict[str, Callable[[Path], contextlib.AbstractContextManager[str]]] = {
        "gateway": lambda work: gateway_server(args.model, work, args.slots, args.threads),
        "node --api": lambda work: node_api_server(args.model, work, args.slots, args.threads),
    }
    if has_llama_cpp_server(args.llama_cpp_python):
        # its default interrupt_requests=True cuts a stream short when the next request arrives
        servers["llama_cpp.server"] = lambda work: llama_cpp_server(
            args.llama_cpp_python, args.model, work, interrupt_requests=False, threads=args.threads
        )
    else:
        log(f"llama_cpp.server skipped: {args.llama_cpp_python} lacks llama-cpp-python[server]")
    if args.no_speculate_too:
        servers["gateway --no-speculate"] = lambda work: gateway_server(
            args.model, work, args.slots, args.threads, ("--no-speculate",)
        )
    if args.llama_server is not None:
        servers["llama-server"] = lambda work: llama_server(
            args.llama_server, args.model, work, args.threads
        )
        for spec in args.llama_server_spec:
            servers[f"llama-server {spec}"] = lambda work, spec=spec: llama_server(
                args.llama_server, args.model, work, args.threads, extra=("--spec-type", spec)
            )
    if args.only:
        servers = {k: v for k, v in servers.items() if k in args.only}

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        if args.mode == "paired":
            rounds = args.rounds or 5
            ks = tuple(args.concurrency or (4, 8))
            with contextlib.ExitStack() as stack:
                targets = []
                for name, start in servers.items():
                    work = Path(tmp) / name
                    work.mkdir()
                    url = stack.enter_context(start(work))
                    targets.append(Target(name, url, bench))
                medians, runs = paired(targets, rounds, ks)
            keys = ["ttft_ms", "decode_tok_s", *[f"agg{k}_tok_s" for k in ks]]
        else:
            rounds = args.rounds or 1
            runs = {name: [] for name in servers}
            names = list(servers)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    work = Path(tmp) / f"{name}-{r}"
                    work.mkdir()
                    log(f"round {r + 1}: {name} (load {os.getloadavg()[0]:.2f})")
                    with servers[name](work) as url:
                        figures = bench.measure(url, CONCURRENCY)
                    figures["load1"] = os.getloadavg()[0]
                    runs[name].append(figures)
                    log(f"  {json.dumps({k: round(v, 1) for k, v in figures.items()})}")
            medians = {
                name: {k: statistics.median(f[k] for f in figs) for k in figs[0]}
                for name, figs in runs.items()
                if figs
            }
            keys = ["ttft_ms", "decode_tok_s", *[f"agg{k}_tok_s" for k in CONCURRENCY]]

    ratios = {
        f"{ours} / {other}": paired_ratios(runs, ours, other)
        if args.mode == "paired"
        else {k: medians[ours][k] / medians[other][k] for k in keys if medians[other][k]}
        for ours in OURS
        if ours in medians
        for other in medians
        if other not in OURS
    }
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": args.model.name,
        "threads": args.threads,
        "mode": args.mode,
        "rounds": rounds,
        "medians": medians,
        "gateway_ratios": ratios,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'server':18}" + "".join(f"{k:>14}" for k in [*keys, "load1"]))
    for name, m in medians.items():
        print(f"{name:18}" + "".join(f"{m[k]:14.1f}" for k in [*keys, "load1"]))
    for pair, rs in ratios.items():
        print(f"{pair}: " + "  ".join(f"{k} {v:.2f}x" for k, v in rs.items()))


if __name__ == "__main__":
    main()
