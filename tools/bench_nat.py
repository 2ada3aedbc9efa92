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


def measure(timer: LabProcess, node_sha: str, runs: int, max_tokens: int) -> dict[str, Any]:
    timer.send_line(
        json.dumps({"time": node_sha, "runs": runs, "max_tokens": max_tokens, "prompt": PROMPT})
    )
    answer = timer.wait_json(lambda e: e.get("event") == "timed", 120.0 + 60.0 * runs)
    return {
        "served": runs + 1 - int(answer["failed"]),
        "ttft_ms": answer["ttft_ms"],
        "decode_tok_s": answer["decode_tok_s"],
    }


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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--verbose-nodes",
        action="store_true",
        help="run the nodes with -v (their logs stay in the printed work folder)",
    )
    args = parser.parse_args(argv)
    args.node_flags = ("-v",) if args.verbose_nodes else ()
    args.nat = args.nat or list(NAT_KINDS)
    reason = unavailable_reason(args.nat)
    if reason is not None:
        print(f"bench_nat: cannot build the lab: {reason}", file=sys.stderr)
        return 2
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
