"""A spot check's knobs against what it catches, from raw data already measured (issue #16: a
check at most 15 % of generating, a drop-prefix caught on its first check, a Q3_K_M node caught
with >= 95 % probability within 50 requests, at a check fraction whose compute is <= 2 %).

No model runs. Two knobs cut a check's rows with logits (each an output-layer row over the whole
vocabulary, the floor of a check's cost): the answer positions it scores (p2p/client/spot_check.py
`CHECK_POSITIONS`, drawn as p2p/client/check_window.py draws them) and the prompt probes it judges
(`CHECK_PROBES` of the request's 16, a uniform subset). This tool judges the raw data again at
several values of each:

- `--probe-raw` (tools/bench_probes.py --raw: per mode, per request the node's signed probe
  values and the verifier's, one per draw): per K, `--subsets` random K-subsets of each request's
  probes judged with inference/probe_stat.py at the share of the false-verdict budget a check
  gives them (ALPHA / 3: margins, commitments and probes). For the cheats the first-check catch
  rate (the mean over requests of the share of subsets caught) and the requests caught by every
  subset; for honest modes the false verdicts, and the largest sum against its threshold.
- `--positions-raw` (tools/bench_verification.py --raw: per request the verifier's margins and
  logprobs at every position, the node's commitments): per P, `--draws` spot checks per request
  of P positions (the first 8 and the rest in a window of `--span`), judged as spot_check judges
  them (probes present, so the alpha share is a third), the detection per check and the
  ledger's checks to flag (tools/_verification_stats.py), and with a cost the ledger's
  P(flagged within 50 requests) at the check fraction f = 0.02 / cost. The cost: measured
  (`--cost P:K=FRACTION`, or `--cost-json`: tools/bench_check_cost.py --json, its main check and
  --also knobs), or estimated (`--cost-model`: a bench_check_cost.py --json of a quiet run, see
  `estimate_costs`), as a loaded machine cannot time checks a few percent apart.

The window's span is `--span`, or by default twice the window's positions (P - 8), the rule
p2p/client/check_window.py's WINDOW_SPAN follows.

    .venv/bin/python tools/rejudge_check_knobs.py --probe-raw /tmp/h5/raw_cheat16.json \\
        --positions-raw /tmp/h1/raw128.json /tmp/h3/raw2.json --cost-json cost.json --json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _verification_stats import (  # type: ignore[import-not-found]  # a script's sibling
    CHEATS,
    HONEST,
    _positions,
    checks_to_flag,
    flagged_within_requests,
)

from inference.probe_stat import judge_probes
from inference.verification import ALPHA, CheckStat, judge
from p2p.client.check_window import FIRST_POSITIONS, check_positions, probe_subset

# The false-verdict share of the probes' test in a check with commitments (`judge`: ALPHA / 3).
PROBE_ALPHA = ALPHA / 3
REQUESTS_SEEN = 50  # the "within 50 requests"
BUDGET = 0.02  # a check fraction whose compute is at most 2 % of generating
# What the node's 16 probe rows add to generating a request (tools/bench_probe_cost.py, quiet:
# +94 ms on a 200-token prefill): the denominator of a cost measured without probes.
NODE_PROBE_S = 0.094


def span_for(positions: int, span: int) -> int:
    """*span*, or when 0 twice the window's positions (at least 1)."""
    return span or max(1, 2 * (positions - FIRST_POSITIONS))


def mean_feed(positions: int, span: int, n: int, draws: int = 4000) -> float:
    """The mean share of an *n*-token answer a check of these knobs feeds (check_window.py)."""
    if n <= positions:
        return 1.0
    rng = random.Random(0)
    return (
        statistics.fmean(check_positions(0, n, positions, rng, span)[1] for _ in range(draws)) / n
    )


def estimate_costs(
    report: dict[str, Any], knobs: list[tuple[int, int, int]]
) -> dict[tuple[int, int], float]:
    """Each (positions, probes, span)'s cost against generating, scaled from a quiet
    bench_check_cost.py run's measured one by its own split: the body's prefill (its decode
    without logits) in proportion to the tokens fed (prompt + the mean window feed), each
    answer row the output layer's share per row (decode with logits minus without) plus its
    log-softmax and choice-margin replay, each probe row the output layer and log-softmax; and
    the node's probe rows added to the generating it is measured against, when it had none."""
    split = report["split"]
    parts = split["parts_s"]
    p0 = report["check_positions"]
    k0 = report.get("check_probes", 0)
    s0 = report.get("span", 48)
    n, prompt = report["max_tokens"], report["prompt_tokens"]
    # (the split's decode marks the answer positions only; the profile's softmax covers both)
    layer = (split["decode_with_logits_wall_s"] - split["decode_no_logits_wall_s"]) / p0
    softmax = parts["log-softmax, rank, top-k"] / (p0 + k0)
    answer_row = layer + softmax + parts["sampler replay (choice margin)"] / p0
    probe_row = layer + softmax
    body = split["decode_no_logits_wall_s"]

    def check(p: int, k: int, s: int) -> float:
        fed = (prompt + mean_feed(p, s, n) * n) / (prompt + mean_feed(p0, s0, n) * n)
        return float(body * fed + p * answer_row + k * probe_row)

    generating = report["generation_wall_s"]
    node = generating / (generating + NODE_PROBE_S) if not report.get("probes_per_request") else 1
    base = check(p0, k0, s0)
    cost = report["check_vs_generation_wall"]
    return {(p, k): round(cost * check(p, k, s) / base * node, 4) for p, k, s in knobs}


def probe_rejudge(
    raw: dict[str, list[dict[str, Any]]], k: int, subsets: int, seed: int
) -> dict[str, Any]:
    """Per mode: *subsets* random k-subsets of each request's probes judged (see the docstring)."""
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for mode, rows in raw.items():
        rates, worst = [], 0.0
        false = judged = 0
        for row in rows:
            node, verifier = row["node"], row["verifier"]
            if not verifier or len(node) != len(verifier):
                continue
            caught = 0
            for _ in range(subsets):
                pick = probe_subset(len(verifier), k, rng)
                stat = judge_probes(
                    [node[i] for i in pick], [verifier[i] for i in pick], PROBE_ALPHA
                )
                caught += stat.status == "inconsistent"
                worst = max(worst, stat.total / stat.threshold)
            rates.append(caught / subsets)
            false += caught
            judged += subsets
        if not rates:
            continue
        entry: dict[str, Any] = {"requests": len(rates), "checks": judged}
        if mode.startswith("cheat"):
            entry["first_check_catch"] = round(statistics.mean(rates), 4)
            entry["requests_always_caught"] = sum(r == 1.0 for r in rates)
        else:
            entry["false_verdicts"] = false
        entry["largest_sum_over_threshold"] = round(worst, 3)
        out[mode] = entry
    return out


def position_checks(
    row: dict[str, Any], rng: random.Random, draws: int, positions: int, span: int, probes: int
) -> list[CheckStat]:
    """*draws* spot checks of one request at *positions* positions in a window of *span*, judged
    with *probes* honest probe values beside them (their alpha share, not their evidence)."""
    scored, committed = _positions(row)
    n = len(scored)
    same = [-1.0] * probes
    out = []
    for _ in range(draws):
        keep, _end = check_positions(0, n, positions, rng, span)
        out.append(
            judge(
                [scored[i] for i in keep],
                sampled=row["temperature"] > 0,
                committed=[committed[i] for i in keep],
                probes=same,
                verifier_probes=same,
            )
        )
    return out


def positions_rejudge(
    rows: list[dict[str, Any]],
    positions: int,
    span: int,
    probes: int,
    draws: int,
    seed: int,
    costs: dict[tuple[int, int], float],
) -> dict[str, Any]:
    """Per mode and setting at *positions*: detection per check (false verdicts for honest
    modes), the ledger's checks to flag, and P(flagged within 50 requests) at f = 0.02 / cost."""
    rng = random.Random(seed)
    cost = costs.get((positions, probes))
    fraction = min(1.0, BUDGET / cost) if cost else math.nan
    out: dict[str, Any] = {}
    for mode in HONEST + CHEATS:
        for setting in ("greedy", "sampled"):
            mine = [
                r
                for r in rows
                if r["mode"] == mode
                and len(r["margins"]) > positions
                and (r["temperature"] > 0) == (setting == "sampled")
            ]
            if not mine:
                continue
            stats = [
                s for r in mine for s in position_checks(r, rng, draws, positions, span, probes)
            ]
            caught = sum(s.verdict == "inconsistent" for s in stats)
            entry: dict[str, Any] = {"checks": len(stats), "inconsistent": caught}
            entry["inconclusive"] = sum(s.verdict == "inconclusive" for s in stats)
            if mode.startswith("cheat"):
                flagged = checks_to_flag(stats, setting == "sampled", rng)
                entry["detection_per_check"] = round(caught / len(stats), 4)
                entry["ledger_median_checks_to_flag"] = statistics.median(flagged)
                if cost:
                    p = flagged_within_requests(flagged, fraction, REQUESTS_SEEN)
                    entry["flagged_within_50_at_budget"] = round(p, 4)
            out[f"{mode} {setting}"] = entry
    return {"cost": cost, "fraction": None if math.isnan(fraction) else round(fraction, 4), **out}


def read_costs(args: argparse.Namespace) -> dict[tuple[int, int], float]:
    """(positions, probes) -> the check's median cost against generating (wall)."""
    costs: dict[tuple[int, int], float] = {}
    for path in args.cost_json or ():
        report = json.loads(path.read_text())
        main = (report["check_positions"], report["check_probes"])
        costs[main] = report["check_vs_generation_wall"]
        for name, entry in report.get("also", {}).items():
            p, k, _span = (int(x) for x in name.split(":"))
            costs[(p, k)] = entry["check_vs_generation_wall"]
    for text in args.cost or ():
        knobs, _, value = text.partition("=")
        p, _, k = knobs.partition(":")
        try:
            costs[(int(p), int(k))] = float(value)
        except ValueError:
            raise SystemExit(f"--cost {text!r}: expected POSITIONS:PROBES=FRACTION") from None
    return costs


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"probes": {}, "positions": {}}
    raw: dict[str, list[dict[str, Any]]] = {}
    for path in args.probe_raw or ():
        for mode, requests in json.loads(path.read_text()).items():
            raw.setdefault(mode, []).extend(requests)
    for k in args.probes if raw else ():
        report["probes"][str(k)] = probe_rejudge(raw, k, args.subsets, args.seed)
    rows: list[dict[str, Any]] = []
    for path in args.positions_raw or ():
        rows += json.loads(path.read_text())
    costs = read_costs(args)
    knobs = [(p, k, span_for(p, args.span)) for p in args.positions for k in args.probes]
    if args.cost_model:
        estimated = estimate_costs(json.loads(args.cost_model.read_text()), knobs)
        report["estimated_costs"] = {f"{p}:{k}:{s}": estimated[(p, k)] for p, k, s in knobs}
        costs = {**estimated, **costs}  # measured ones first
    for p, k, s in knobs if rows else ():
        if (p, k) in costs or k == args.probes[-1]:
            report["positions"][f"{p}:{k}:{s}"] = positions_rejudge(
                rows, p, s, k, args.draws, args.seed, costs
            )
    return report


def print_report(report: dict[str, Any]) -> None:
    for knobs, cost in report.get("estimated_costs", {}).items():
        print(f"estimated cost {knobs:9} (positions:probes:span): {cost:.1%} of generating")
    for k, modes in report["probes"].items():
        parts = []
        for mode, e in modes.items():
            if "first_check_catch" in e:
                parts.append(
                    f"{mode} caught {e['first_check_catch']:.2%} on a first check "
                    f"({e['requests_always_caught']}/{e['requests']} requests always)"
                )
            else:
                parts.append(f"{mode} {e['false_verdicts']}/{e['checks']} false")
        print(f"probes judged {k:>2}: " + "; ".join(parts))
    for knobs, entry in report["positions"].items():
        cost = "unmeasured" if entry["cost"] is None else f"cost {entry['cost']:.1%}"
        print(f"positions:probes:span {knobs} ({cost}, f {entry['fraction']}):")
        for key, e in entry.items():
            if not isinstance(e, dict):
                continue
            line = f"  {key:22} inconsistent {e['inconsistent']}/{e['checks']}"
            if "detection_per_check" in e:
                line += (
                    f" ({e['detection_per_check']:.0%}), ledger flags after "
                    f"{e['ledger_median_checks_to_flag']} checks (median)"
                )
                if "flagged_within_50_at_budget" in e:
                    line += f", P(flagged within 50) {e['flagged_within_50_at_budget']:.1%}"
            print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rejudge_check_knobs.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--probe-raw", type=Path, nargs="*", help="bench_probes.py --raw files")
    parser.add_argument(
        "--positions-raw", type=Path, nargs="*", help="bench_verification.py --raw files"
    )
    parser.add_argument(
        "--probes", type=int, nargs="*", default=[4, 6, 8, 10, 12, 16], help="K values to judge"
    )
    parser.add_argument(
        "--positions", type=int, nargs="*", default=[16, 20, 24, 32], help="P values to judge"
    )
    parser.add_argument(
        "--span", type=int, default=0, help="the window's span (0: twice its positions)"
    )
    parser.add_argument("--subsets", type=int, default=400, help="probe subsets per request")
    parser.add_argument("--draws", type=int, default=40, help="spot checks per request")
    parser.add_argument("--cost-json", type=Path, nargs="*", help="bench_check_cost.py --json")
    parser.add_argument("--cost", nargs="*", metavar="P:K=FRACTION", help="a check's cost")
    parser.add_argument(
        "--cost-model", type=Path, help="estimate costs from this quiet bench_check_cost --json"
    )
    parser.add_argument("--seed", type=int, default=0, help="for the subsets and positions")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if min(args.probes, default=1) < 1 or min(args.positions, default=1) < 1 or args.span < 0:
        parser.error("--probes and --positions are at least 1, --span at least 0")
    try:
        report = run(args)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, KeyError) as e:  # one line, not a traceback
        print(f"rejudge_check_knobs.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
