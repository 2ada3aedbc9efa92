"""The step costs the drafting policy reads, corrected by the steps served (pure, made-up step
times): a series of slower steps moves the curve where it was seen, a lone bad sample (a GC
pause) does not swing it, memory stays bounded, evidence fades back to the start-up shape; and
the policy over it stops drafting in a full batch whose rows turned out dear while a lone
repeating stream keeps drafting."""

from __future__ import annotations

import math
import random

import pytest

from inference.draft_policy import DraftPolicy, DraftStats
from inference.online_step_costs import BUCKETS, OnlineStepCosts
from tests.inference.test_draft_policy import failing, succeeding
from tests.inference.test_slot_planner import CPU_MS, costs


def fed(online: OnlineStepCosts, rows: int, ratio: float, n: int) -> None:
    """`n` steps of `rows` rows, each `ratio` times what the start-up curve says."""
    for _ in range(n):
        online.observe(rows, online.base.cost(rows) * ratio)


def test_before_any_step_it_is_the_start_up_curve() -> None:
    base = costs(CPU_MS)
    online = OnlineStepCosts(base)
    for rows in (1, 3, 8, 12, 64, 200):
        assert online.cost(rows) == pytest.approx(base.cost(rows))


def test_a_series_of_slower_steps_moves_the_curve_where_it_was_seen() -> None:
    online = OnlineStepCosts(costs(CPU_MS))
    for _ in range(60):  # a full batch: 8 rows as measured, 16 rows half as dear again
        fed(online, 8, 1.0, 1)
        fed(online, 16, 1.5, 1)
    assert online.correction(8) == pytest.approx(1.0, abs=0.03)
    assert online.correction(16) == pytest.approx(1.5, rel=0.03)
    assert 1.05 < online.correction(12) < 1.45  # between the two, continuous
    assert online.cost(12) > online.base.cost(12)
    # what the policy weighs: 8 draft rows on top of 8 now cost half as much again
    extra = online.cost(16) - online.cost(8)
    assert extra > 1.4 * (online.base.cost(16) - online.base.cost(8))


def test_a_uniform_slowdown_reaches_buckets_nobody_fed() -> None:
    online = OnlineStepCosts(costs(CPU_MS))
    fed(online, 8, 2.0, 100)
    # the load every step sees, applied where there is no evidence of its own
    assert online.correction(32) == pytest.approx(2.0, rel=0.05)
    assert online.correction(1) == pytest.approx(2.0, rel=0.05)


def test_one_step_held_up_by_a_gc_pause_does_not_swing_it() -> None:
    online = OnlineStepCosts(costs(CPU_MS))
    fed(online, 8, 1.0, 50)
    fed(online, 8, 20.0, 1)  # a 0.6 s step where 30 ms were usual
    assert online.correction(8) < 1.08
    fed(online, 8, 1.0, 50)
    assert online.correction(8) == pytest.approx(1.0, abs=0.01)
    fed(online, 8, 0.01, 1)  # nor does an impossibly fast one
    assert online.correction(8) > 0.93


def test_a_fresh_bucket_takes_a_first_bad_sample_at_most_clipped() -> None:
    online = OnlineStepCosts(costs(CPU_MS))
    fed(online, 4, 50.0, 1)
    assert online.correction(4) <= 2.0
    assert online.correction(4) > 1.0


def test_a_lasting_slowdown_is_followed_within_dozens_of_steps() -> None:
    online = OnlineStepCosts(costs(CPU_MS))
    fed(online, 8, 1.0, 200)
    fed(online, 8, 3.0, 60)  # beyond the clip per sample, so it climbs there step by step
    assert online.correction(8) == pytest.approx(3.0, rel=0.05)


def test_samples_that_cannot_be_step_times_are_ignored() -> None:
    online = OnlineStepCosts(costs(CPU_MS))
    for rows, seconds in ((8, math.nan), (8, math.inf), (8, 0.0), (8, -1.0), (0, 0.03)):
        online.observe(rows, seconds)
    assert online.samples == 0
    assert online.correction(8) == 1.0


def test_memory_is_bounded_whatever_is_served() -> None:
    online = OnlineStepCosts(costs(CPU_MS))
    rng = random.Random(7)
    for _ in range(20_000):
        rows = rng.randint(1, 600)
        online.observe(rows, online.base.cost(rows) * rng.uniform(0.5, 3.0))
    state = vars(online)
    assert len(state["_log"]) == len(state["_weight"]) == BUCKETS
    assert all(math.isfinite(v) for v in state["_log"])
    assert all(0 <= w < 1 / (1 - 0.998) + 1 for w in state["_weight"])  # decayed, not growing
    assert 0.5 <= online.correction(rng.randint(1, 600)) <= 3.0
    assert "64 rows x" in online.describe()


def test_old_evidence_fades_back_to_the_start_up_shape() -> None:
    online = OnlineStepCosts(costs(CPU_MS))
    fed(online, 16, 2.0, 100)  # drafts were dear once ...
    fed(online, 8, 1.0, 3000)  # ... then nobody fed 16 rows for a long while
    assert online.correction(16) < 1.2  # so 16 rows are tried again at today's load


# -- the policy over it ------------------------------------------------------------------------


def choose(online: OnlineStepCosts, rows: int, proposed: int, match: int, stats: DraftStats) -> int:
    policy = DraftPolicy(online)
    policy.begin_step(rows, rows)
    return policy.choose(proposed, match, stats)


# Measured at start on short sequences: past 8 rows each more costs ~1.2 ms (a third of a
# token's share of the step) ...
START_UP_MS = {1: 16.0, 2: 18.0, 4: 22.0, 8: 30.0, 16: 40.0, 32: 70.0, 64: 130.0}
# ... and what a full batch of long sequences was then seen to take: ~3 ms a row past 8.
SERVED_MS = {8: 33.0, 12: 45.0, 16: 58.0}


def full_batch_on_a_busy_machine() -> OnlineStepCosts:
    online = OnlineStepCosts(costs(START_UP_MS))
    for _ in range(100):
        for rows, ms in SERVED_MS.items():
            online.observe(rows, ms / 1000)
    return online


def test_no_drafts_in_a_full_batch_whose_rows_cost_much_and_guesses_fail() -> None:
    online = full_batch_on_a_busy_machine()
    for rows, ms in SERVED_MS.items():
        assert online.cost(rows) == pytest.approx(ms / 1000, rel=0.03)
    low = DraftStats(kept=1.0, missed=2.0)  # a third of the guesses right lately
    assert choose(online, 8, 8, 8, low) == 0
    assert choose(online, 8, 16, 16, low) == 0
    assert choose(online, 12, 16, 8, failing()) == 0
    # what the start-up curve alone would have done with the same guesses: drafted
    for stats in (low, failing()):
        start_up = DraftPolicy(online.base, margin=0.0)
        start_up.begin_step(8, 8)
        assert start_up.choose(8, 8, stats) > 0


def test_a_lone_repeating_stream_keeps_drafting_at_the_same_observed_costs() -> None:
    online = full_batch_on_a_busy_machine()
    assert choose(online, 1, 16, 64, succeeding()) >= 8
