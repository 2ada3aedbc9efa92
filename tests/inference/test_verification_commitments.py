"""The commitments' statistic (inference/commitment_stat.py) on made-up delta vectors: honest-like
noise passes in every 32-position check, a close quantization's and a dropped prefix's sized
deltas fail, and the bounds hold what they claim (the Chernoff bound over the exact worst case,
the threshold at alpha, the ledger's e-value of mean at most 1)."""

from __future__ import annotations

import math
import random

import pytest

from inference import commitment_stat as cs
from inference.scoring import PositionScore
from inference.verification import ALPHA, judge


def deltas(rng: random.Random, n: int, scale: float) -> tuple[list[float], list[float | None]]:
    """n positions: the verifier's logprobs (a trained model's mix of near-certain and open
    tokens) and commitments off by Laplace noise of `scale` times z's own scale (1 - p plus the
    floor), as measured deltas scale."""
    logprobs, committed = [], []
    for _ in range(n):
        lp = -rng.choice((0.001, 0.01, 0.05, 0.3, 1.0, 2.5, 5.0))
        width = 1 - math.exp(lp) + cs.SCALE_FLOOR
        d = rng.expovariate(1.0) * scale * width * rng.choice((-1, 1))
        logprobs.append(lp)
        committed.append(min(0.0, lp + d))
    return logprobs, committed


def positions(logprobs: list[float]) -> list[PositionScore]:
    return [PositionScore(0, lp, 0, 0.0, 0.0, index=i) for i, lp in enumerate(logprobs)]


def test_honest_noise_passes_and_cheats_fail() -> None:
    rng = random.Random(7)
    verdicts: dict[float, list[str]] = {}
    # Honest z = |delta| / (1 - p + floor) had median 0.05 and p99 0.4: Laplace of scale 0.07
    # has them at 0.05 / 0.32. A twice noisier honest node still passes; one whose z is sized
    # like Q3_K_M's (median 0.47: scale 0.68, lighter-tailed than Q3_K_M's) is caught on some
    # single checks (the ledger sums the rest), one 3x further off on nearly every check.
    for scale in (0.07, 0.14, 0.7, 2.0):
        verdicts[scale] = []
        for _ in range(300):
            lps, committed = deltas(rng, 32, scale)
            stat = judge(positions(lps), sampled=False, committed=committed)
            assert stat.committed_n == 32
            verdicts[scale].append(stat.verdict)
    assert verdicts[0.07].count("inconsistent") == 0
    assert verdicts[0.14].count("inconsistent") == 0
    assert verdicts[0.7].count("inconsistent") > 45
    assert verdicts[2.0].count("inconsistent") > 270


def test_position_scores() -> None:
    assert cs.position_score(-1.0, None) is None
    assert cs.position_score(math.nan, -1.0) is None
    assert cs.position_score(-1.0, -1.0) == 0.0
    # The scale is the verifier's 1 - p: the same delta counts more on a near-certain token.
    assert cs.position_score(-0.01, -0.02) > cs.position_score(-2.0, -2.01) == 0.0
    assert cs.position_score(-0.01, -0.02) == pytest.approx(
        (0.01 / (1 - math.exp(-0.01) + cs.SCALE_FLOOR) - cs.Z_FROM) / (cs.Z_FULL - cs.Z_FROM)
    )
    # The floor covers the commitments' 1/1024-nat rounding on a certain token.
    assert cs.position_score(0.0, -1 / 1024) == 0.0
    # Far off, or beyond the int16 range on either side: 1, clamped alike.
    assert cs.position_score(-1.0, -5.0) == 1.0
    assert cs.position_score(-50.0, -32.0) == 0.0
    assert cs.position_score(-1.0, 3.0) == cs.position_score(-1.0, 0.0)


def _binomial_tail(n: int, k: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


@pytest.mark.parametrize("n", [16, 32, 64, 128])
def test_the_threshold_bounds_the_worst_honest_case(n: int) -> None:
    mu0 = cs.HONEST_MEAN
    threshold = cs.score_threshold(n, ALPHA / 2)
    assert n * mu0 < threshold <= n
    assert cs.tail_bound(n, threshold) <= ALPHA / 2 * (1 + 1e-9)
    assert cs.tail_bound(n, threshold * 0.98) > ALPHA / 2
    # Scores in [0, 1] of mean mu0 are at worst Bernoulli(mu0): the bound covers its exact tail.
    for k in range(math.ceil(n * mu0) + 1, n + 1):
        assert _binomial_tail(n, k, mu0) <= cs.tail_bound(n, k) * (1 + 1e-9)


def test_too_few_positions_cannot_conclude() -> None:
    # 5 positions, all fully off, are not below 5e-7 under mu0 = 0.09 (0.09^5 = 6e-6).
    assert cs.score_threshold(5, ALPHA / 2) == 6.0
    assert cs.tail_bound(0, 0.0) == 1.0 and cs.tail_bound(10, 0.5) == 1.0


def test_the_ledger_e_value_has_mean_at_most_one() -> None:
    mu0, mu1 = cs.HONEST_MEAN, 0.25
    # Exactly 1 for Bernoulli(mu0) scores, below 1 for any other [0, 1] law of mean mu0 (here:
    # uniform on {0, 2 mu0}) and for lower means; above 1 for a cheat's mean.
    bernoulli = mu0 * math.exp(cs.llr(1, 1.0, mu0, mu1)) + (1 - mu0) * math.exp(
        cs.llr(1, 0.0, mu0, mu1)
    )
    assert bernoulli == pytest.approx(1.0)
    spread = 0.5 * math.exp(cs.llr(1, 0.0, mu0, mu1)) + 0.5 * math.exp(cs.llr(1, 2 * mu0, mu0, mu1))
    assert spread < 1.0
    low = 0.97 * math.exp(cs.llr(1, 0.0, mu0, mu1)) + 0.03 * math.exp(cs.llr(1, 1.0, mu0, mu1))
    assert low < 1.0
    assert cs.llr(32, 32 * 0.4, mu0, mu1) > 0 > cs.llr(32, 32 * 0.03, mu0, mu1)
    assert cs.llr(0, 0.0, mu0, mu1) == 0.0


def test_the_bench_re_judges_raw_rows_as_spot_checks() -> None:
    """tools/_verification_stats.py `rejudge` on made-up raw rows (the bench's --raw format):
    honest rows give no false verdict and are never flagged; commitments a Q3_K_M-sized way off
    are caught on checks and flagged by the ledger within a few."""
    from tools import _verification_stats as stats

    rng = random.Random(3)
    rows = []
    for mode, scale in (("honest-t2", 0.07), ("cheat-q3", 2.0)):
        for temperature in (0.0, 0.8):
            for _ in range(3):
                lps, committed = deltas(rng, 128, scale)
                rows.append(
                    {"mode": mode, "kind": "prose", "temperature": temperature, "seed": 1,
                     "margins": [0.0] * 128, "logprobs": lps, "committed": committed}
                )  # fmt: skip
    out = stats.rejudge(rows, draws=5)
    for setting in ("greedy", "sampled"):
        honest, cheat = out[f"honest-t2 {setting}"], out[f"cheat-q3 {setting}"]
        assert honest["checks"] == 15 and honest["inconsistent"] == 0
        assert honest["ledger_mean_checks_to_flag"] is None
        # spot_check's 18 positions catch fewer single checks than 32 did (sampled: 2 of 15
        # here); the ledger's sum over checks still flags within ~3
        assert cheat["detection_per_check"] > 0.1 and cheat["ledger_mean_checks_to_flag"] < 3
        assert cheat["flagged_within_50_requests_at_f"][0.13] > 0.95
