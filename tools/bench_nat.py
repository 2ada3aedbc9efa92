"""Benchmark gpunet across NATs in network namespaces (issue #15): how long a volunteer behind
each NAT takes from its start to its first served request, and TTFT / decode speed of requests
to it from a client on the lab's internet, next to a volunteer there (direct, no NAT).

Builds the lab of tests/netns/lab.py (root needed; iproute2, iptables, nftables and
miniupnpd-iptables installed — tools/run-tests.sh installs them): a bootstrap node on the
internet namespace, one volunteer per NAT kind asked for, each serving its own tiny GGUF (so a
request picks the volunteer by sha256), and a client host on the internet. Every command is the
user's `gpunet node` / `gpunet ask`. The path each volunteer is reached by is what its record
says (`reach`: direct / mapped / relayed).

    sudo .venv/bin/python tools/bench_nat.py [--nat full-cone --nat upnp ...] [--runs 5]
        [--max-tokens 64] [--json]
    sudo .venv/bin/python tools/bench_nat.py --model default [--runs 8] [--max-tokens 128]
        [--relayed symmetric]

`--model default` (or a GGUF path): every node serves that one model (the real default model:
decode speed is the model's, not Python's), the volunteers default to port-restricted (from
the internet client: hole-punched) and symmetric (relayed), the bootstrap on the internet is
the direct one, and each request names its node (`prefer`). The measured requests alternate
between the volunteers round by round (one each per round, the order rotating), so a load
change on the shared machine hits every path alike; the table gives each path's medians and
its decode speed as a fraction of the direct one's (issue #15's target: relayed >= 0.95x).

Timings are the client's (tests/netns/stream_timer.py, one process joined once, in the internet
client's namespace): first served = from the volunteer's process start (model load and DHT join
included) to the end of the first 1-token request that got through; ready = from the start to
the node's ready line (models loaded, DHT joined, first record published), so first served less
ready is what reaching it costs (reachability, relay reservation, republish, the client's
lookup); TTFT and decode tok/s are medians of streamed greedy requests after one warm-up, on a
reused session. The nodes' threads share the machine's cores with the client: compare paths
within one run, not across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.netns.lab import NAT_KINDS, Lab, open_lab, unavailable_reason  # noqa: E402
from tests.netns.lab_gpunet import (  # noqa: E402
    BOOTSTRAP,
    child_env,
    path_of,
    settled_records,
    start_bootstrap,
    start_node,
    wait_ready,
)
from tests.netns.lab_process import LabProcess  # noqa: E402

PROMPT = "List the numbers from 1 to 300, separated by commas:"
FIRST_SERVED_LIMIT_S = 120.0
RECORDS_WAIT_S = 15.0  # for the volunteers' first verdicts, before their paths are read


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tiny_models(folder: Path, labels: list[str]) -> dict[str, tuple[Path, str]]:
    import importlib.util

    from inference.model_file import inspect_gguf

    spec = importlib.util.spec_from_file_location(
        "make_tiny_gguf", ROOT / "tools/make_tiny_gguf.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = {}
    for seed, label in enumerate(labels):
        path = module.make_tiny_gguf(folder / f"tiny-{label}.gguf", seed=200 + seed)
        out[label] = (path, inspect_gguf(path).sha256)
    return out


def start_timer(lab: Lab, ns: str) -> LabProcess:
    """tests/netns/stream_timer.py in *ns*, joined to the lab's DHT."""
    timer = lab.start(
        ns,
        [sys.executable, "-m", "tests.netns.stream_timer", BOOTSTRAP],
        name="stream-timer",
        env=child_env(),
        stop_timeout_s=10.0,
    )
    timer.wait_json(lambda e: e.get("event") == "joined", 60.0)
    return timer


def ask_first(timer: LabProcess, node_sha: str) -> None:
    """Have the client try 1-token requests to the volunteer until one is served."""
    timer.send_line(json.dumps({"first": node_sha, "limit_s": FIRST_SERVED_LIMIT_S}))


def first_served(timer: LabProcess, started_at: float) -> float | None:
    """Seconds from the volunteer's start to the end of its first served request."""
    answer = timer.wait_json(
        lambda e: e.get("event") in ("served", "never"), FIRST_SERVED_LIMIT_S + 30
    )
    if answer["event"] == "never":
        return None
    return round(float(answer["at"]) - started_at, 2)


def measure(
    timer: LabProcess,
    node_sha: str,
    runs: int,
    max_tokens: int,
    prefer: str | None = None,
    warmup: bool = True,
) -> dict[str, Any]:
    cmd = {"time": node_sha, "runs": runs, "max_tokens": max_tokens, "prompt": PROMPT}
    timer.send_line(json.dumps({**cmd, "prefer": prefer, "warmup": warmup}))
    answer = timer.wait_json(lambda e: e.get("event") == "timed", 120.0 + 60.0 * runs)
    return {
        "served": runs + int(warmup) - int(answer["failed"]),
        "ttft_ms": answer["ttft_ms"],
        "decode_tok_s": answer["decode_tok_s"],
        "went": answer.get("path"),
    }


def run_one_model(args: argparse.Namespace) -> dict[str, Any]:
    """`--model`: one model on every node, requests by peer id, rounds alternating paths."""
    import statistics

    model = resolve_model(args.model)
    from inference.model_file import inspect_gguf

    sha = inspect_gguf(model).sha256
    work = Path(tempfile.mkdtemp(prefix="bench-nat-model-"))
    log(f"lab work folder (node logs): {work}; model {model.name}")
    labels = ["internet", *args.nat]
    samples: dict[str, dict[str, list[float]]] = {k: {"ttft": [], "rate": []} for k in labels}
    results: dict[str, dict[str, Any]] = {"internet": {"first_served_s": None}}
    with open_lab(work) as lab:
        nodes = {"internet": start_bootstrap(lab, model, sha, work / "d-internet", args.node_flags)}
        client = lab.add_internet_host()
        timer = start_timer(lab, client.ns)
        for label in args.nat:
            ns = lab.add_home(label).host_ns
            started = time.monotonic()
            extra = (*args.node_flags, *(("--no-hole-punch",) if label in args.relayed else ()))
            proc = start_node(lab, ns, label, model, sha, work / f"d-{label}", extra=extra)
            nodes[label] = wait_ready(proc, ns, label, sha, started)
            timer.send_line(
                json.dumps(
                    {"first": sha, "limit_s": FIRST_SERVED_LIMIT_S, "prefer": nodes[label].peer_id}
                )
            )
            results[label] = {"first_served_s": first_served(timer, started)}
        for label in labels:  # warm-up: the session (and its punch), the node's cache
            results[label]["went"] = measure(
                timer, sha, 2, args.max_tokens, nodes[label].peer_id, warmup=False
            )["went"]
        for n in range(args.runs):
            for label in labels[n % len(labels) :] + labels[: n % len(labels)]:
                got = measure(timer, sha, 1, args.max_tokens, nodes[label].peer_id, warmup=False)
                if got["served"]:
                    samples[label]["ttft"].append(got["ttft_ms"])
                    samples[label]["rate"].append(got["decode_tok_s"])
                    results[label]["went"] = got["went"]
    direct = statistics.median(samples["internet"]["rate"] or [0.0])
    for label in labels:
        rate, ttft = samples[label]["rate"], samples[label]["ttft"]
        results[label].update(
            served=len(rate),
            ttft_ms=round(statistics.median(ttft), 1) if ttft else None,
            decode_tok_s=round(statistics.median(rate), 1) if rate else None,
            vs_direct=round(statistics.median(rate) / direct, 3) if rate and direct else None,
        )
        log(f"{label}: {results[label]}")
    return {
        "model": model.name,
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        "volunteers": results,
    }


def resolve_model(name: str) -> Path:
    if name == "default":
        from inference.default_model import ensure_default_model

        return ensure_default_model()
    return Path(name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-nat-"))
    log(f"lab work folder (node logs): {work}")
    labels = ["internet", *args.nat]
    models = tiny_models(work, labels)
    results: dict[str, dict[str, Any]] = {}
    with open_lab(work) as lab:
        path, sha = models["internet"]
        nodes = {"internet": start_bootstrap(lab, path, sha, work / "d-internet", args.node_flags)}
        # the bootstrap: nobody to ask before it
        results["internet"] = {"ready_s": None, "first_served_s": None}
        client = lab.add_internet_host()
        timer = start_timer(lab, client.ns)
        for label in args.nat:
            ns = lab.add_home(label).host_ns
            path, sha = models[label]
            started = time.monotonic()
            proc = start_node(lab, ns, label, path, sha, work / f"d-{label}", extra=args.node_flags)
            ask_first(timer, sha)  # the client tries from the start, as a user would
            nodes[label] = wait_ready(proc, ns, label, sha, started)
            ready = round(time.monotonic() - started, 2)
            results[label] = {"ready_s": ready, "first_served_s": first_served(timer, started)}
            log(f"{label}: ready {ready} s, first served {results[label]['first_served_s']} s")
        records = settled_records(lab, client.ns, work / "d-peers", RECORDS_WAIT_S)
        for label, node in nodes.items():
            record = records.get(node.peer_id)
            relays = len((record or {}).get("relays") or ())  # weak proof: relays as well
            results[label]["path"] = path_of(record) + (f"+{relays}r" if relays else "")
            results[label].update(measure(timer, node.model_sha256, args.runs, args.max_tokens))
            log(f"{label}: {results[label]}")
    return {"max_tokens": args.max_tokens, "runs": args.runs, "volunteers": results}


def _cell(value: Any, width: int) -> str:
    return f"{'-' if value is None else value:>{width}}"


def print_model_table(report: dict[str, Any]) -> None:
    print(f"{report['model']}, {report['max_tokens']} tokens, {report['runs']} alternated rounds")
    print(
        f"{'volunteer behind':<18} {'went':<13} {'first served s':>14} {'TTFT ms':>8} "
        f"{'decode tok/s':>12} {'vs direct':>9} served"
    )
    for label, r in report["volunteers"].items():
        print(
            f"{label:<18} {r.get('went')!s:<13} {_cell(r.get('first_served_s'), 14)} "
            f"{_cell(r.get('ttft_ms'), 8)} {_cell(r.get('decode_tok_s'), 12)} "
            f"{_cell(r.get('vs_direct'), 9)} {r.get('served', 0)}/{report['runs']}"
        )


def print_table(report: dict[str, Any]) -> None:
    print(
        f"{'volunteer behind':<20} {'path':<11} {'ready s':>7} {'first served s':>14} "
        f"{'TTFT ms':>8} {'client decode tok/s':>19} served"
    )
    for label, r in report["volunteers"].items():
        first = r["first_served_s"]
        print(
            f"{label:<20} {r['path']:<11} {_cell(r.get('ready_s'), 7)} {_cell(first, 14)} "
            f"{_cell(r.get('ttft_ms'), 8)} {_cell(r.get('decode_tok_s'), 19)} "
            f"{r.get('served', 0)}/{report['runs'] + 1}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nat",
        action="append",
        choices=NAT_KINDS,
        help="NAT kind of a volunteer's home (repeatable; default: all of them)",
    )
    parser.add_argument("--runs", type=int, default=5, help="measured asks per volunteer")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per measured ask")
    parser.add_argument(
        "--model",
        help="'default' (the real default model) or a GGUF path: every node serves it and the "
        "paths (direct / hole-punched / relayed) are timed in alternated rounds",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--relayed",
        action="append",
        default=[],
        metavar="KIND",
        help="run this NAT kind's volunteer with --no-hole-punch, so its path stays relayed "
        "(now that every punchable pair punches: the relayed path's figures; repeatable)",
    )
    parser.add_argument(
        "--verbose-nodes",
        action="store_true",
        help="run the nodes with -v (their logs stay in the printed work folder)",
    )
    args = parser.parse_args(argv)
    args.node_flags = ("-v",) if args.verbose_nodes else ()
    args.nat = args.nat or (["port-restricted", "symmetric"] if args.model else list(NAT_KINDS))
    reason = unavailable_reason(args.nat)
    if reason is not None:
        print(f"bench_nat: cannot build the lab: {reason}", file=sys.stderr)
        return 2
    if args.model and args.model != "default" and not Path(args.model).is_file():
        print(f"bench_nat: no model file at {args.model}", file=sys.stderr)
        return 2
    report = run_one_model(args) if args.model else run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.model:
        print_model_table(report)
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
