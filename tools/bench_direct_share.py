"""The direct-connection share across a larger NAT matrix (issue #15's target: every pair except
symmetric <-> symmetric goes direct, mapped or hole-punched), each pair asked several times.

Builds the lab of tests/netns/lab.py (root; the packages tools/run-tests.sh installs): the
bootstrap on the internet namespace and one volunteer per NAT kind (each its own tiny GGUF, so
a request picks its volunteer by sha256), as in tests/netns/test_nat_matrix.py, and clients on
the internet and behind each NAT kind without a router of its own to map (full cone, address-
and port-restricted, symmetric). Every pair is asked `--rounds` times, each by a fresh client
process (tests/netns/punch_wait_client.py: `generate` as `gpunet ask` runs it, in a new session
pool: a new relayed dial and hole punch each time), the pairs of a round at once (`--parallel`
asks at a time). The path is what its last segment went, labelled as `ask --json` labels it;
the client also reports the pool's wait for the punch (p2p/reach/punch_odds.py's prediction,
the bound, the time waited) and the TTFT it saw (from the request's start: lookup, dial, wait,
answer). The NAT state an earlier round left (conntrack entries) carries over, as it would for
a user asking twice.

    sudo .venv/bin/python tools/bench_direct_share.py [--rounds 3] [--parallel 4] [--json]

Prints one line per pair (its paths over the rounds, its direct share, the punch waits and the
median TTFT), the share of asks that went direct, mapped or hole-punched over all pairs and over
those the target counts (all but symmetric <-> symmetric), the median TTFT per path, and the
long waits that did not punch (the time a wrong prediction cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.netns.lab import NAT_KINDS, LabError, open_lab, unavailable_reason  # noqa: E402
from tests.netns.lab_gpunet import (  # noqa: E402
    BOOTSTRAP,
    settled_records,
    start_bootstrap,
    start_node,
    wait_ready,
)
from tests.netns.punch_wait_client import run_one_shot  # noqa: E402
from tools.bench_nat import tiny_models  # noqa: E402

CLIENT_NATS = ("full-cone", "address-restricted", "port-restricted", "symmetric")
NOT_COUNTED = {("symmetric", "symmetric")}  # the one pair no NAT traversal can go direct
NOT_RELAYED = ("direct", "mapped", "hole-punched")
REACH_WAIT_S = 15.0
ASK_TIMEOUT_S = 20.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-direct-share-"))
    log(f"lab work folder (node logs): {work}")
    volunteers = ["internet", *NAT_KINDS]
    clients = ["internet", *CLIENT_NATS]
    models = tiny_models(work, volunteers)
    went: dict[tuple[str, str], list[dict[str, Any]]] = {
        (v, c): [] for v in volunteers for c in clients
    }
    with open_lab(work) as lab:
        path, sha = models["internet"]
        start_bootstrap(lab, path, sha, work / "d-internet", args.node_flags)
        waiting = []
        for nat in NAT_KINDS:
            ns = lab.add_home(nat).host_ns
            path, sha = models[nat]
            proc = start_node(lab, ns, nat, path, sha, work / f"d-{nat}", extra=args.node_flags)
            waiting.append((proc, ns, nat, sha, time.monotonic()))
        for proc, ns, nat, sha, at in waiting:
            wait_ready(proc, ns, nat, sha, at)
        client_ns = {"internet": lab.add_internet_host().ns}
        for nat in CLIENT_NATS:
            client_ns[nat] = lab.add_home(nat).host_ns
        settled_records(lab, client_ns["internet"], work / "d-peers", REACH_WAIT_S)
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for n in range(args.rounds):
                futures = {
                    pair: pool.submit(
                        _one_ask, lab, client_ns[pair[1]], models[pair[0]][1], pair, n
                    )
                    for pair in went
                }
                for pair, future in futures.items():
                    went[pair].append(future.result())
                log(f"round {n + 1} of {args.rounds} done")
    return report(went, args.rounds)


def _one_ask(lab: Any, ns: str, sha: str, pair: tuple[str, str], n: int) -> dict[str, Any]:
    """One fresh client's ask for *pair*: its JSON (path, wait, ttft_s), or "NOT SERVED"."""
    try:
        answer = run_one_shot(
            lab,
            ns,
            BOOTSTRAP,
            sha,
            timeout_s=ASK_TIMEOUT_S,
            log_name=f"ask-{pair[0]}-{pair[1]}-{n}",
        )
    except LabError as exc:
        answer = {"path": "NOT SERVED", "error": str(exc)[-300:], "wait": None, "ttft_s": None}
    if answer["path"] == "NOT SERVED":
        log(f"{pair[0]} <- {pair[1]} not served: {answer.get('error')}")
    return answer


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def report(went: dict[tuple[str, str], list[dict[str, Any]]], rounds: int) -> dict[str, Any]:
    def share(pairs: list[tuple[str, str]]) -> float:
        asks = [a["path"] for p in pairs for a in went[p]]
        return round(sum(w in NOT_RELAYED for w in asks) / max(len(asks), 1), 3)

    counted = [p for p in went if p not in NOT_COUNTED]
    missing = [
        f"{v}<-{c}" for v, c in counted if any(a["path"] not in NOT_RELAYED for a in went[(v, c)])
    ]
    asks = [a for ws in went.values() for a in ws]
    waits = [a["wait"] for a in asks if a.get("wait")]
    wasted = [w for w in waits if w["likely"] and not w["punched"]]
    paths = sorted({a["path"] for a in asks})
    pairs = {}
    for (v, c), ws in went.items():
        pairs[f"{v}<-{c}"] = {
            "paths": [a["path"] for a in ws],
            "share": share([(v, c)]),
            "waits": [
                f"{'long' if a['wait']['likely'] else 'short'} {a['wait']['waited_s']:.2f}s"
                for a in ws
                if a.get("wait")
            ],
            "ttft_s": _median([a["ttft_s"] for a in ws if a.get("ttft_s") is not None]),
        }
    return {
        "rounds": rounds,
        "pairs": pairs,
        "direct_share": share(list(went)),
        "direct_share_counted": share(counted),
        # the upnp home's flake (docs/reachability.md) can take its volunteer out of a run
        "direct_share_without_upnp": share([p for p in went if p[0] != "upnp"]),
        "served": sum(a["path"] != "NOT SERVED" for a in asks),
        "asks": len(asks),
        "counted_pairs_not_always_direct": missing,
        "ttft_median_s": {
            p: _median([a["ttft_s"] for a in asks if a["path"] == p and a.get("ttft_s")])
            for p in paths
        },
        "punch_waits": {
            "long": sum(w["likely"] for w in waits),
            "short": sum(not w["likely"] for w in waits),
            "long_not_punched": len(wasted),
            "long_not_punched_s": round(sum(w["waited_s"] for w in wasted), 2),
            "short_punched_later": sum(
                1
                for a in asks
                if a.get("wait") and not a["wait"]["likely"] and a["path"] != "relayed"
            ),
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'volunteer <- client':<36} {'share':>6} {'TTFT':>7}  paths; punch waits")
    for pair, row in result["pairs"].items():
        counts = Counter(row["paths"])
        ttft = f"{row['ttft_s']:.3f}" if row["ttft_s"] is not None else "-"
        print(
            f"{pair:<36} {row['share']:>6.0%} {ttft:>7}  "
            + ", ".join(f"{n}x {w}" for w, n in counts.most_common())
            + (f"; {', '.join(row['waits'])}" if row["waits"] else "")
        )
    print(f"served {result['served']} of {result['asks']} asks")
    print(
        f"direct share (direct, mapped or hole-punched): {result['direct_share']:.1%} of all "
        f"asks, {result['direct_share_counted']:.1%} without symmetric<-symmetric, "
        f"{result['direct_share_without_upnp']:.1%} without the upnp volunteer"
    )
    print("pairs the target counts that were relayed at least once: "
          + (", ".join(result["counted_pairs_not_always_direct"]) or "none"))  # fmt: skip
    print(
        "median TTFT per path (s, from the request's start): "
        + ", ".join(f"{p} {t}" for p, t in result["ttft_median_s"].items())
    )
    w = result["punch_waits"]
    print(
        f"punch waits: {w['long']} long, {w['short']} short; long waits that did not punch: "
        f"{w['long_not_punched']} ({w['long_not_punched_s']} s in all)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="asks per pair (default 3)")
    parser.add_argument("--parallel", type=int, default=4, help="asks at a time (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--verbose-nodes",
        action="store_true",
        help="run the nodes with -v (logs in the work folder)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.parallel < 1:
        parser.error("--rounds and --parallel must be at least 1")
    args.node_flags = ("-v",) if args.verbose_nodes else ()
    reason = unavailable_reason(NAT_KINDS)
    if reason is not None:
        print(f"bench_direct_share: cannot build the lab: {reason}", file=sys.stderr)
        return 2
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
