"""tools/bench_verification.py --window: spot checks as a client sends them, scored by the
verifier with the feed cut after the last checked position (p2p/client/check_window.py), beside
the same positions read from the verifier's scores of the whole feed.

A prefill's length picks the CPU's kernels, so the window's feed moves the verifier's numbers a
little against the whole feed's; what matters is whether that noise, added to the honest noise
the statistic is calibrated for (inference/verification.py, commitment_stat.py), still leaves
honest nodes consistent with room to spare. Per mode this reports the verdicts of both kinds of
check, the commitment statistic's mean score per position (against HONEST_MEAN), the
choice-margin mismatches (against the binomial threshold) and the largest logprob difference
the window made at a checked position.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from typing import Any

from inference.batching import BatchingWorker
from inference.commitment_stat import HONEST_MEAN
from inference.scoring import PositionScore, ScoreRequest
from inference.verification import VERDICTS, CheckStat, judge
from p2p.client.check_window import check_positions
from p2p.client.spot_check import CHECK_POSITIONS


def _judge(claim: Any, positions: list[PositionScore]) -> CheckStat:
    return judge(
        positions,
        sampled=claim.request.temperature > 0,
        committed=[claim.committed[p.index] for p in positions],
    )


async def window_checks(
    verifier: BatchingWorker, claims: list[Any], draws: int, seed: int = 0
) -> dict[str, Any]:
    """`draws` window checks of every claim (tools/_verification_stats.py `Claim`) of more than
    CHECK_POSITIONS tokens; its whole-feed scores (bench_verification's verify) give the same
    positions' other numbers."""
    rng = random.Random(seed)
    rows: dict[str, list[dict[str, Any]]] = {}
    for claim in claims:
        n = len(claim.tokens)
        if n <= CHECK_POSITIONS or len(claim.margins) != n:
            continue
        for _ in range(draws):
            only, end = check_positions(0, n, CHECK_POSITIONS, rng)
            score = ScoreRequest(claim.request, claim.tokens[:end], top_logprobs=0, only=only)
            result = await verifier.score(score)
            window = list(result.positions)
            whole = [
                PositionScore(p.token, claim.logprobs[p.index], 0, 0.0, claim.margins[p.index],
                              index=p.index)
                for p in window
            ]  # fmt: skip
            a, b = _judge(claim, window), _judge(claim, whole)
            rows.setdefault(claim.mode, []).append(
                {
                    "fed": end / n,
                    "gap": max(
                        abs(p.logprob - q.logprob) for p, q in zip(window, whole, strict=True)
                    ),
                    "window": a,
                    "whole": b,
                }
            )
    return {mode: _summary(mode_rows) for mode, mode_rows in rows.items()}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "checks": len(rows),
        "fed_fraction_median": round(statistics.median(r["fed"] for r in rows), 3),
        "max_logprob_gap": round(max(r["gap"] for r in rows), 4),
    }
    for feed in ("window", "whole"):
        stats: list[CheckStat] = [r[feed] for r in rows]
        means = [s.committed_score / s.committed_n for s in stats if s.committed_n]
        verdicts = Counter(s.verdict for s in stats)
        out[feed] = {
            "verdicts": {v: verdicts.get(v, 0) for v in VERDICTS},
            "mean_score_median": round(statistics.median(means), 4) if means else math.nan,
            "mean_score_max": round(max(means), 4) if means else math.nan,
            "mismatches_max": max(s.mismatches for s in stats),
            "threshold_min": min(s.threshold for s in stats),
        }
    return out


def print_window_checks(report: dict[str, Any]) -> None:
    print(
        f"window checks ({CHECK_POSITIONS} positions, the feed cut after the last) against the "
        f"same positions of the whole feed; honest mean score allowed {HONEST_MEAN}:"
    )
    for mode, r in report.items():
        line = [f"  {mode:14} {r['checks']:4} checks, fed {r['fed_fraction_median']:.0%}, "
                f"logprobs moved <= {r['max_logprob_gap']:.3f}"]  # fmt: skip
        for feed in ("window", "whole"):
            f = r[feed]
            v = f["verdicts"]
            line.append(
                f"{feed}: {v['consistent']}/{v['inconsistent']}/{v['inconclusive']} "
                f"(cons/incons/inconcl) score/pos median {f['mean_score_median']:.4f} max "
                f"{f['mean_score_max']:.4f}, mismatches max {f['mismatches_max']} "
                f"(threshold {f['threshold_min']})"
            )
        print(("\n" + " " * 6).join(line))
    honest = [m for m in report if m.startswith("honest")]
    false = sum(report[m]["window"]["verdicts"]["inconsistent"] for m in honest)
    print(f"  false verdicts of window checks on honest nodes: {false}")
