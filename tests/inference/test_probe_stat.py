"""The prompt probes' statistic (inference/probe_stat.py) and its place in `judge`
(inference/verification.py): honest noise passes, made-up or truncated-context values fail,
the bound holds, missing probes are said but are no verdict, a wrong count is inconsistent."""

from __future__ import annotations

import math
import random

import pytest

from inference import probe_stat
from inference.probe_stat import MAX_DELTA, NOISE_SCALE, gamma_tail, judge_probes, sum_threshold
from inference.scoring import PositionScore
from inference.verification import ALPHA, judge

ALPHA3 = ALPHA / 3


def truth(rng: random.Random, m: int = 8) -> list[float]:
    """Verifier values as prompt tokens have them: mostly unlikely, some near-certain."""
    return [-rng.choice([rng.uniform(0.0, 0.1), rng.uniform(0.5, 14.0)]) for _ in range(m)]


@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
def test_the_threshold_is_the_least_sum_under_alpha(m: int) -> None:
    s = sum_threshold(m, ALPHA3)
    assert gamma_tail(m, s) < ALPHA3 <= gamma_tail(m, s * 0.999)


def test_gamma_tail_is_the_poisson_identity() -> None:
    assert gamma_tail(1, 2.0) == pytest.approx(math.exp(-2.0))
    assert gamma_tail(3, 2.0) == pytest.approx(math.exp(-2.0) * (1 + 2.0 + 2.0))
    assert gamma_tail(4, 0.0) == 1.0


def test_honest_noise_at_the_assumed_tail_is_called_inconsistent_at_most_alpha() -> None:
    """Simulated at a looser alpha (1e-2), where a rate can be counted: noise exactly at the
    assumed tail (|d| ~ Exp(NOISE_SCALE)) is called inconsistent at most alpha's rate."""
    rng = random.Random(1)
    alpha, runs, hits = 1e-2, 20_000, 0
    for _ in range(runs):
        v = truth(rng)
        node = [x + rng.choice((-1, 1)) * rng.expovariate(1 / NOISE_SCALE) for x in v]
        node = [min(0.0, x) for x in node]  # a log-probability, as the receipt holds it
        hits += judge_probes(node, v, alpha).status == "inconsistent"
    assert hits / runs <= alpha * 1.3


def test_measured_honest_noise_passes_and_made_up_values_fail() -> None:
    rng = random.Random(2)
    for _ in range(2000):
        v = truth(rng)
        # as measured, batched: an exponential of scale ~0.09, now and then up to ~0.8 nats
        honest = [x + rng.choice((-1, 1)) * rng.expovariate(1 / 0.09) for x in v]
        honest[rng.randrange(len(v))] -= rng.uniform(0.0, 0.8)
        assert judge_probes(honest, v, ALPHA3).status == "consistent"
    caught = 0
    for _ in range(2000):
        v = truth(rng)
        made_up = [-rng.uniform(0.0, 12.0) for _ in v]
        caught += judge_probes(made_up, v, ALPHA3).status == "inconsistent"
    assert caught / 2000 > 0.99


def test_a_dropped_half_is_caught_with_truncated_context_values_after_the_cut() -> None:
    """Half the probes fall before the cut (made up), the rest after it, computed without the
    prefix: off by ~0.5 nats (median, measured). Caught nearly always with made-up values
    spread as prompt tokens' are (the rest: too few probes fell before the cut)."""
    rng = random.Random(3)
    caught = 0
    for _ in range(2000):
        v = truth(rng)
        node = [
            -rng.uniform(0.0, 12.0) if rng.random() < 0.5 else x - rng.expovariate(1 / 0.7)
            for x in v
        ]
        caught += judge_probes(node, v, ALPHA3).status == "inconsistent"
    assert caught / 2000 > 0.93  # 95.7 % with 8 probes at b = 0.3


def test_one_far_probe_is_enough_and_values_are_clamped_to_the_receipt_range() -> None:
    v = [-1.0] * 8
    assert judge_probes([-1.0] * 7 + [-10.5], v, ALPHA3).status == "inconsistent"
    assert judge_probes([-1.0] * 7 + [-2.5], v, ALPHA3).status == "consistent"
    # below -32 both sides read as -32 (the receipt's int16 range)
    assert judge_probes([-32.0] * 8, [-40.0] * 8, ALPHA3).status == "consistent"
    assert probe_stat.delta(None, -1.0) == MAX_DELTA


def test_missing_wrong_count_and_none_values() -> None:
    v = [-1.0, -2.0, -3.0]
    missing = judge_probes((), v, ALPHA3)
    assert (missing.status, missing.asked) == ("missing", 3)
    assert judge_probes([-1.0, -2.0], v, ALPHA3).status == "inconsistent"
    assert judge_probes([-1.0, None, -3.0], v, ALPHA3).status == "inconsistent"
    assert judge_probes([-1.0], (), ALPHA3).status == "none"  # nothing was asked


def positions(n: int) -> list[PositionScore]:
    return [PositionScore(token=1, logprob=-0.1, rank=0, margin=0.0, choice_margin=0.0)] * n


def test_judge_calls_bad_probes_inconsistent_whatever_the_output() -> None:
    v = [-2.0, -5.0, -0.01, -9.0]
    good = judge(positions(32), sampled=False, probes=v, verifier_probes=v)
    assert good.verdict == "consistent" and good.probes.status == "consistent"
    bad = [-7.0, -1.0, -3.0, -2.0]
    assert judge(positions(32), sampled=False, probes=bad, verifier_probes=v).verdict == (
        "inconsistent"
    )
    # too few output tokens to judge them, but the prompt was not computed
    few = judge(positions(3), sampled=False, probes=bad, verifier_probes=v)
    assert few.verdict == "inconsistent" and few.probes.off == 4


def test_judge_says_missing_probes_without_a_verdict_and_splits_alpha() -> None:
    v = [-2.0] * 8
    stat = judge(positions(32), sampled=False, probes=(), verifier_probes=v)
    assert stat.verdict == "consistent" and stat.probes.status == "missing"
    alone = judge(positions(200), sampled=False)
    both = judge(positions(200), sampled=False, probes=v, verifier_probes=v)
    # with probes the margins' test runs at ALPHA / 2: its threshold cannot be lower
    assert both.threshold >= alone.threshold
    assert both.probes.threshold == pytest.approx(sum_threshold(8, ALPHA / 2))
