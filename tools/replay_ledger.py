"""Checked requests until the ledger flags a node, from campaign lines (issue #16).

Reads tools/bench_campaign.py's JSON lines (one verified request each) and feeds their checks,
drawn at random with replacement, into p2p/client/check_ledger.py's sequential test as the
client would (`request_step`: mismatch counts, commitment scores and, unless `--no-probes`,
the prompt probes the check judged), until it reaches `THRESHOLD` or `--most` checks. Per file
it prints the per-check step's median and minimum and the checks until flagged (mean, 95th
percentile, largest) over `--runs` runs, with and without the probes' term, so the probes'
share of the ledger's evidence is seen on real nodes' numbers.

    .venv/bin/python tools/replay_ledger.py honest.jsonl cheat-q3.jsonl cheat-prefix.jsonl --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from inference.probe_stat import NOISE_SCALE, delta
from p2p.client.check_ledger import LEAN_BOOST, LEAN_LEVEL, THRESHOLD, request_step

# (judged positions, mismatches, sampled, committed positions, committed sum, (probes, sum))
Check = tuple[int, int, bool, int, float, tuple[int, float]]


def read_checks(path: Path) -> list[Check]:
    """One `Check` per line of *path* (ValueError naming the line when one is not a campaign
    line)."""
    checks = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                r = json.loads(line)
                s = r["stat"]
                draws, node, verifier = r["draws"], r["node_probes"], r["verifier_probes"]
                pick = r.get("probe_pick") or range(len(draws))
                probes = (0, 0.0)
                if len(node) == len(draws) == len(verifier):
                    deltas = [delta(node[i], verifier[i]) for i in pick]
                    probes = (len(deltas), sum(deltas) / NOISE_SCALE)
                checks.append(
                    (int(s["n"]), int(s["mismatches"]), float(r["temperature"]) > 0,
                     int(s["committed_n"]), float(s["committed_score"]), probes)
                )  # fmt: skip
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise ValueError(f"{path}:{number}: not a campaign line ({exc})") from None
    if not checks:
        raise ValueError(f"{path}: no lines")
    return checks


def step(check: Check, *, probes: bool) -> float:
    n, k, sampled, committed_n, committed, (probe_n, probe_total) = check
    return request_step(
        n, k, sampled=sampled, committed_n=committed_n, committed_score=committed,
        probe_n=probe_n if probes else 0, probe_total=probe_total,
    )  # fmt: skip


def checks_until_flagged(steps: list[float], rng: random.Random, most: int) -> int:
    """Checks drawn from *steps* until the CUSUM reaches THRESHOLD; most + 1 when it did not."""
    cusum = 0.0
    for count in range(1, most + 1):
        cusum = max(0.0, cusum + rng.choice(steps))
        if cusum >= THRESHOLD:
            return count
    return most + 1


def within(
    steps: list[float], rng: random.Random, requests: int, fraction: float, boost: float
) -> tuple[bool, int]:
    """(flagged within *requests*, checks made) when each request is checked with *fraction*,
    or *boost* times it (at most 1) while the statistic leans (background_checks.py)."""
    cusum, checks = 0.0, 0
    for _ in range(requests):
        f = min(1.0, fraction * boost) if cusum >= LEAN_LEVEL else fraction
        if rng.random() < f:
            checks += 1
            cusum = max(0.0, cusum + rng.choice(steps))
            if cusum >= THRESHOLD:
                return True, checks
    return False, checks


def summary(path: Path, runs: int, most: int, seed: int, with_probes: bool) -> dict[str, Any]:
    checks = read_checks(path)
    steps = [step(c, probes=with_probes) for c in checks]
    rng = random.Random(seed)
    until = sorted(checks_until_flagged(steps, rng, most) for _ in range(runs))
    return {
        "file": str(path),
        "probes": with_probes,
        "requests": len(checks),
        "step_median": statistics.median(steps),
        "step_min": min(steps),
        "flagged_share": sum(u <= most for u in until) / runs,
        "checks_mean": statistics.fmean(until),
        "checks_p95": until[int(0.95 * (runs - 1))],
        "checks_max": until[-1],
        "steps": steps,
    }


def requests_summary(row: dict[str, Any], runs: int, seed: int, requests: int, fraction: float):
    """P(flagged within *requests*) at *fraction*, fixed and with the leaning boost, and the
    checks made per request with the boost (an honest node's extra cost)."""
    out: dict[str, Any] = {"requests_window": requests, "fraction": fraction}
    for name, boost in (("fixed", 1.0), ("leaning", LEAN_BOOST)):
        rng = random.Random(seed)
        results = [within(row["steps"], rng, requests, fraction, boost) for _ in range(runs)]
        out[f"flagged_{name}"] = sum(f for f, _ in results) / runs
        out[f"checked_share_{name}"] = sum(c for _, c in results) / (runs * requests)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="campaign JSON-lines files")
    parser.add_argument("--runs", type=int, default=2000, help="resampled runs per file")
    parser.add_argument("--most", type=int, default=500, help="checks per run at most")
    parser.add_argument("--seed", type=int, default=1, help="for the resampling")
    parser.add_argument("--no-probes", action="store_true", help="only without the probes' term")
    parser.add_argument(
        "--requests", type=int, default=0,
        help="also: P(flagged within this many requests) at --fraction, fixed and leaning",
    )  # fmt: skip
    parser.add_argument("--fraction", type=float, default=0.13, help="checked share of requests")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.most < 1:
        parser.error("--runs and --most must be at least 1")
    try:
        rows = [
            summary(path, args.runs, args.most, args.seed, with_probes)
            for path in args.files
            for with_probes in ((False,) if args.no_probes else (False, True))
        ]
    except (OSError, ValueError) as exc:
        print(f"replay_ledger: {exc}", file=sys.stderr)
        return 1
    if not 0 < args.fraction <= 1 or args.requests < 0:
        parser.error("--fraction must be in (0, 1] and --requests at least 0")
    for r in rows:
        if args.requests:
            r.update(requests_summary(r, args.runs, args.seed, args.requests, args.fraction))
        del r["steps"]
    if args.json:
        print(json.dumps({"threshold": THRESHOLD, "rows": rows}))
        return 0
    for r in rows:
        print(
            f"{Path(r['file']).name} probes={'on' if r['probes'] else 'off'}: {r['requests']} "
            f"requests, step median {r['step_median']:.2f} min {r['step_min']:.2f}; flagged in "
            f"{r['flagged_share']:.0%} of runs, after {r['checks_mean']:.2f} checks on average "
            f"(p95 {r['checks_p95']}, largest {r['checks_max']})"
        )
        if args.requests:
            print(
                f"    within {args.requests} requests at f = {args.fraction:g}: flagged "
                f"{r['flagged_fixed']:.1%} fixed, {r['flagged_leaning']:.1%} leaning "
                f"(checked {r['checked_share_fixed']:.3f} / {r['checked_share_leaning']:.3f} of "
                "requests)"
            )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
