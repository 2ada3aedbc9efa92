"""The summaries, the re-judging of raw data and the plot of tools/bench_verification.py.

The bench writes every scored position (--raw: per request its mode, temperature, seed, the
verifier's choice margins and logprobs, the node's commitments); this file judges such rows
again without generating anything: whole requests as the bench did, and spot checks as
p2p/client/spot_check.py makes them (`CHECK_POSITIONS` positions: the first FIRST_POSITIONS
and a random rest within a random window, p2p/client/check_window.py; several draws per
request; the positions' numbers are the whole feed's, --window measures the cut feed's), then
the ledger's checked requests until a node is flagged (p2p/client/check_ledger.py, requests
resampled), and the plot of the commitment statistic (inference/commitment_stat.py) per spot
check, honest against each cheat.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import attrs

from inference.commitment_stat import HONEST_MEAN, score_threshold
from inference.generation import GenerationRequest
from inference.scoring import PositionScore
from inference.verification import ALPHA, CheckStat, judge
from p2p.client.check_ledger import THRESHOLD, request_step
from p2p.client.check_window import check_positions
from p2p.client.spot_check import CHECK_POSITIONS

HONEST = ("honest-t1", "honest-t2", "honest-slots4", "honest-spec", "honest-cache")
CHEATS = ("cheat-tiny", "cheat-q3", "cheat-q2", "cheat-random", "cheat-prefix", "cheat-lying")
VERDICTS = ("consistent", "inconsistent", "inconclusive")
# Ledger simulation: runs per (mode, setting), and checked requests per run at most.
LEDGER_RUNS = 200
LEDGER_MAX_CHECKS = 200


@attrs.define
class Claim:
    """One answer as a node claims it: the request it was asked, and the tokens it returned."""

    mode: str
    kind: str
    request: GenerationRequest
    tokens: tuple[int, ...]
    gen_s: float
    # The node's logprob commitment per token (None: none), as a receipt carries it.
    committed: tuple[float | None, ...] = ()
    stat: CheckStat | None = None
    score_s: float = 0.0
    margins: list[float] = attrs.field(factory=list)
    # Per scored position: the verifier's logprob.
    logprobs: list[float] = attrs.field(factory=list)


def raw_row(claim: Claim) -> dict[str, Any]:
    return {
        "mode": claim.mode,
        "kind": claim.kind,
        "temperature": claim.request.temperature,
        "seed": claim.request.seed,
        "margins": claim.margins,
        "logprobs": claim.logprobs,
        "committed": list(claim.committed),
    }


def _positions(row: dict[str, Any]) -> tuple[list[PositionScore], list[float | None]]:
    margins = row["margins"]
    logprobs = row.get("logprobs") or [0.0] * len(margins)
    committed = row.get("committed") or [None] * len(margins)
    positions = [
        PositionScore(token=0, logprob=lp, rank=0, margin=0.0, choice_margin=m, index=i)
        for i, (m, lp) in enumerate(zip(margins, logprobs, strict=True))
    ]
    return positions, list(committed[: len(positions)])


def spot_checks(row: dict[str, Any], rng: random.Random, draws: int) -> list[CheckStat]:
    """*draws* spot checks of one request as spot_check.py samples its positions."""
    positions, committed = _positions(row)
    sampled = row["temperature"] > 0
    n = len(positions)
    out = []
    for _ in range(draws):
        keep, _end = check_positions(0, n, CHECK_POSITIONS, rng)  # (the whole feed's numbers)
        out.append(
            judge(
                [positions[i] for i in keep],
                sampled=sampled,
                committed=[committed[i] for i in keep],
            )
        )
    return out


def checks_to_flag(stats: list[CheckStat], sampled: bool, rng: random.Random) -> list[int]:
    """Checked requests until the ledger flags a node whose checks are drawn from *stats*
    (LEDGER_MAX_CHECKS + 1 where it never did)."""
    runs = []
    for _ in range(LEDGER_RUNS):
        total = 0.0
        for k in range(1, LEDGER_MAX_CHECKS + 1):
            s = rng.choice(stats)
            step = request_step(
                s.n,
                s.mismatches,
                sampled=sampled,
                committed_n=s.committed_n,
                committed_score=s.committed_score,
            )
            total = max(0.0, total + step)
            if total >= THRESHOLD:
                runs.append(k)
                break
        else:
            runs.append(LEDGER_MAX_CHECKS + 1)
    return runs


def flagged_within_requests(flagged: list[int], fraction: float, requests_seen: int = 50) -> float:
    """P(the ledger flags a node within *requests_seen* of its requests when each is checked
    with probability *fraction*), from the simulated checks-to-flag."""
    total = 0.0
    for k in range(requests_seen + 1):
        p_k = math.comb(requests_seen, k) * fraction**k * (1 - fraction) ** (requests_seen - k)
        total += p_k * sum(c <= k for c in flagged) / len(flagged)
    return total


def rejudge(rows: list[dict[str, Any]], draws: int = 20, seed: int = 0) -> dict[str, Any]:
    """Per mode and setting: spot-check detection, false verdicts, the ledger's checks to flag,
    and the per-check commitment scores (for the plot)."""
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for mode in HONEST + CHEATS:
        for setting in ("greedy", "sampled"):
            mine = [
                r
                for r in rows
                if r["mode"] == mode
                and r["margins"]
                and (r["temperature"] > 0) == (setting != "greedy")
            ]
            if not mine:
                continue
            stats = [s for r in mine for s in spot_checks(r, rng, draws)]
            flagged = checks_to_flag(stats, setting == "sampled", rng)
            never = sum(k > LEDGER_MAX_CHECKS for k in flagged)
            out[f"{mode} {setting}"] = {
                "checks": len(stats),
                "inconsistent": sum(s.verdict == "inconsistent" for s in stats),
                "detection_per_check": round(
                    sum(s.verdict == "inconsistent" for s in stats) / len(stats), 4
                ),
                "ledger_mean_checks_to_flag": None if never else round(statistics.mean(flagged), 2),
                "ledger_never_flagged_within": f"{never}/{len(flagged)} runs of "
                f"{LEDGER_MAX_CHECKS}",
                "ledger_flagged_within_3": round(sum(k <= 3 for k in flagged) / len(flagged), 3),
                "ledger_flagged_within_6": round(sum(k <= 6 for k in flagged) / len(flagged), 3),
                "flagged_within_50_requests_at_f": {
                    f: round(flagged_within_requests(flagged, f), 4) for f in (0.10, 0.13)
                },
                "commitment_means": [
                    round(s.committed_score / s.committed_n, 4) for s in stats if s.committed_n
                ],
            }
    return out


def plot(checks: dict[str, Any], path: Path) -> None:
    """Histograms of the mean commitment score per spot check: honest against each cheat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = [i / 50 for i in range(51)]
    honest = [x for k, v in checks.items() if k.startswith("honest") for x in v["commitment_means"]]
    ax.hist(honest, bins=bins, alpha=0.6, density=True, label=f"honest ({len(honest)} checks)")
    for mode in CHEATS:
        values = [
            x for k, v in checks.items() if k.split()[0] == mode for x in v["commitment_means"]
        ]
        if values:
            ax.hist(values, bins=bins, histtype="step", density=True, linewidth=1.5, label=mode)
    line = score_threshold(CHECK_POSITIONS, ALPHA / 2) / CHECK_POSITIONS
    ax.axvline(
        line, color="black", linestyle="--", label=f"inconsistent from (n={CHECK_POSITIONS})"
    )
    ax.axvline(
        HONEST_MEAN,
        color="grey",
        linestyle=":",
        label=f"honest mean the bound allows ({HONEST_MEAN})",
    )
    ax.set_xlabel(
        f"mean commitment score per spot check ({CHECK_POSITIONS} positions; "
        "inference/commitment_stat.py)"
    )
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def catch_probability(detection: float, fraction: float, requests_seen: int = 50) -> float:
    if math.isnan(fraction):
        return math.nan
    return 1.0 - (1.0 - min(1.0, fraction) * detection) ** requests_seen


def summarize(claims: list[Claim], cost: float) -> dict[str, Any]:
    """Per mode, whole requests judged: verdicts, scores, detection and catch probabilities."""
    f_budget = 0.02 / cost if cost > 0 else math.nan
    out: dict[str, Any] = {}
    for mode in HONEST + CHEATS:
        mine = [c for c in claims if c.mode == mode and c.stat is not None]
        if not mine:
            continue
        verdicts = {v: sum(c.stat.verdict == v for c in mine if c.stat) for v in VERDICTS}
        detection = verdicts["inconsistent"] / len(mine)
        scores = [c.stat.score for c in mine if c.stat]
        row: dict[str, Any] = {
            "requests": len(mine),
            "verdicts": verdicts,
            "score_median": round(statistics.median(scores), 4),
            "score_max": round(max(scores), 4),
            "score_min": round(min(scores), 4),
        }
        if mode.startswith("honest"):
            row["false_verdicts"] = verdicts["inconsistent"]
        else:
            row["detection_per_request"] = round(detection, 4)
            row["catch_within_50_at_f_2pct_budget"] = round(
                catch_probability(detection, f_budget), 6
            )
            row["catch_within_50_at_f_10pct"] = round(catch_probability(detection, 0.10), 6)
            by_setting = {}
            for name, sampled in (("greedy", False), ("sampled", True)):
                part = [c for c in mine if (c.request.temperature > 0) == sampled]
                if part:
                    by_setting[name] = sum(
                        c.stat.verdict == "inconsistent" for c in part if c.stat
                    ) / len(part)
            row["detection_by_setting"] = by_setting
        out[mode] = row
    return out


def from_raw(args: argparse.Namespace) -> dict[str, Any]:
    """Judge an earlier --raw file again, whole requests and as spot checks (and plot): for
    recalibrating the statistic without generating anything. No cost figures."""
    rows = []
    for path in args.from_raw:
        rows += json.loads(path.read_text())
    claims = []
    for row in rows:
        positions, committed = _positions(row)
        request = GenerationRequest("-", temperature=row["temperature"], seed=row["seed"])
        claim = Claim(row["mode"], row["kind"], request, (0,) * len(positions), 0.0)
        claim.stat = judge(positions, sampled=row["temperature"] > 0, committed=committed)
        claims.append(claim)
    checks = rejudge(rows, draws=args.draws)
    if args.plot:
        plot(checks, args.plot)
    return {
        "max_tokens": max((len(c.tokens) for c in claims), default=0),
        "requests_per_mode": max(sum(c.mode == m for c in claims) for m in HONEST + CHEATS),
        "cost_full_check_vs_generation": math.nan,
        "check_positions": CHECK_POSITIONS,
        "cost_subset_check_vs_generation": math.nan,
        "modes": summarize(claims, math.nan),
        "spot_checks": {
            k: {f: x for f, x in v.items() if f != "commitment_means"} for k, v in checks.items()
        },
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['requests_per_mode']} requests per mode, {report['max_tokens']} tokens each")
    print(
        f"cost of a check vs generating: full {report['cost_full_check_vs_generation']:.1%}, "
        f"{report['check_positions']} positions {report['cost_subset_check_vs_generation']:.1%}"
    )
    for mode, row in report["modes"].items():
        v = row["verdicts"]
        line = (
            f"{mode:14} consistent {v['consistent']:3} inconsistent {v['inconsistent']:3} "
            f"inconclusive {v['inconclusive']:3}  score median {row['score_median']:.4f} "
            f"max {row['score_max']:.4f}"
        )
        if "detection_per_request" in row:
            line += (
                f"  detect {row['detection_per_request']:.0%}  P(catch in 50) "
                f"{row['catch_within_50_at_f_2pct_budget']:.4f} (2% budget) "
                f"{row['catch_within_50_at_f_10pct']:.4f} (f=10%)"
            )
        print(line)
    spot = report.get("spot_checks") or {}
    if spot:
        print(f"spot checks of {report['check_positions']} positions (re-judged):")
    for key, row in spot.items():
        mean = row["ledger_mean_checks_to_flag"]
        print(
            f"  {key:22} inconsistent {row['inconsistent']:4}/{row['checks']:<4} "
            f"({row['detection_per_check']:.0%})  ledger: flagged after "
            f"{'never' if mean is None else f'{mean:.1f}'} checks on average, within 3: "
            f"{row['ledger_flagged_within_3']:.0%}, within 6: {row['ledger_flagged_within_6']:.0%}"
            "; in 50 requests at f = 0.10 / 0.13: "
            + " / ".join(f"{x:.1%}" for x in row["flagged_within_50_requests_at_f"].values())
        )
