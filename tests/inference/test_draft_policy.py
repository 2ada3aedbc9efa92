"""The drafting policy: no drafts under full load when guesses fail, drafts kept where rows are
cheap or guesses right (pure, fake step-cost curves); and on a real BatchingWorker the policy
changes how many drafts are fed, never the greedy text beyond the tolerant margin."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.batching import BatchingWorker
from inference.draft_policy import (
    DraftPolicy,
    DraftStats,
    acceptance,
    expected_kept,
    prior,
)
from inference.generation import GenerationRequest
from inference.step_costs import StepCosts
from tests.inference.test_batching import (
    GREEDY_MARGIN,
    run,
    run_together,
    teacher_forced_margins,
)
from tests.inference.test_slot_planner import CPU_MS, GPU_MS, costs
from tests.inference.test_speculation import LOOPING

# Every row costs a full row's time: a step's time grows in proportion to its rows.
COMPUTE_BOUND = StepCosts.of({n: n * 0.010 for n in (1, 2, 4, 8, 16, 32, 64)})


def failing() -> DraftStats:
    stats = DraftStats()
    for _ in range(4):
        stats.observe(kept=0, wrong=True)
    return stats


def succeeding() -> DraftStats:
    stats = DraftStats()
    for _ in range(4):
        stats.observe(kept=16, wrong=False)
    return stats


def choose(curve: StepCosts, rows: int, proposed: int, match: int, stats: DraftStats) -> int:
    policy = DraftPolicy(curve)
    policy.begin_step(rows, rows)
    return policy.choose(proposed, match, stats)


def test_under_full_load_failing_guesses_draft_nothing() -> None:
    cpu = costs(CPU_MS)
    assert choose(cpu, 8, 16, 8, failing()) == 0
    assert choose(cpu, 8, 16, 8, DraftStats()) == 0  # an 8-token repeat is not enough either
    assert choose(COMPUTE_BOUND, 1, 16, 64, succeeding()) == 0  # nothing pays there


def test_drafts_that_pay_are_fed() -> None:
    cpu = costs(CPU_MS)
    assert choose(cpu, 1, 16, 16, succeeding()) == 16  # a lone stream, guesses right
    assert choose(cpu, 4, 32, 64, succeeding()) > 0  # loaded, but rows cheap and guesses right
    assert choose(costs(GPU_MS), 8, 8, 8, DraftStats()) >= 4  # rows nearly free: a fair bet
    # alone and failing: only the first nearly free rows are still worth their chance
    assert 0 < choose(cpu, 1, 16, 8, failing()) <= 2 < choose(cpu, 1, 16, 8, DraftStats())


def test_drafts_that_would_barely_pay_are_left_out_under_full_load() -> None:
    # at 8 rows on 2 cores a row costs nearly a token's share of the step: even guesses that
    # are always right gain ~7 % at best, within what the curve may be off by
    cpu = costs(CPU_MS)
    policy = DraftPolicy(cpu, margin=0.0)
    policy.begin_step(8, 8)
    assert policy.choose(32, 64, succeeding()) > 0  # without the margin it bets on them
    assert choose(cpu, 8, 32, 64, succeeding()) == 0


def test_the_policy_weighs_a_shorter_draft_when_the_whole_does_not_pay() -> None:
    # rows cheap up to 8 in all, dear beyond: the first rows pay, the rest would not
    kneed = StepCosts.of({1: 0.010, 8: 0.011, 16: 0.040, 64: 0.200})
    assert 0 < choose(kneed, 1, 32, 16, DraftStats()) < 32


def test_later_sequences_weigh_their_drafts_against_a_bigger_step() -> None:
    policy = DraftPolicy(costs(CPU_MS))
    policy.begin_step(4, 4)
    first = policy.choose(32, 32, succeeding())
    second = policy.choose(32, 32, succeeding())
    assert first > 0 and second <= first


def test_without_costs_every_proposed_draft_is_fed() -> None:
    policy = DraftPolicy(None)
    policy.begin_step(8, 8)
    assert policy.choose(12, 8, failing()) == 12
    assert policy.choose(0, 8, succeeding()) == 0


def test_acceptance_blends_recent_outcomes_with_the_repeat_evidence() -> None:
    assert prior(8) < prior(16) < prior(64) < 1
    assert acceptance(DraftStats(), 8) == pytest.approx(prior(8))
    assert acceptance(failing(), 64) < 0.5 < acceptance(succeeding(), 8)
    stats = failing()
    stats.observe(kept=30, wrong=False)  # the newest step outweighs the decayed failures
    assert acceptance(stats, 8) > 0.8
    assert expected_kept(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_kept(1.0, 5) == 5 and expected_kept(0.0, 5) == 0


def test_a_declined_draft_is_judged_by_the_tokens_that_follow() -> None:
    stats = DraftStats()
    stats.watch([5, 6, 7], at=3)
    stats.watch([9, 9], at=4)  # one at a time: the first is still being checked
    stats.settle([1, 2, 3])  # none of it has come yet
    stats.settle([1, 2, 3, 5, 6])  # right so far
    assert stats.shadow and stats.kept == 0
    stats.settle([1, 2, 3, 5, 6, 7])
    assert not stats.shadow and stats.kept == 3 and stats.missed == 0 and stats.watched == 1
    stats.watch([4, 4, 4], at=6)
    stats.settle([1, 2, 3, 5, 6, 7, 4, 8])  # the second guess is wrong
    assert stats.kept == pytest.approx(3 * 0.75 + 1) and stats.missed == 1
    assert not stats.shadow and stats.watched == 2


def simulate(
    policy: DraftPolicy, stats: DraftStats, text: list[int], right: bool, steps: int
) -> int:
    """A sequence in a batch of 8 whose drafter proposes 8 tokens (an 8-token match) each step:
    the `text` it goes on to generate, or (not `right`) tokens whose first is wrong. The draft
    tokens it was fed in all; `text` holds what it generated."""
    fed = 0
    for _ in range(steps):
        policy.begin_step(8, 8)
        stats.settle(text)
        n = len(text)
        guess = [n + i for i in range(8)] if right else [-1] * 8  # the text goes n, n + 1, ...
        keep = policy.choose(len(guess), 8, stats)
        if keep == 0:
            stats.watch(guess, n)
        elif right:
            stats.observe(keep, wrong=False)
        else:
            stats.observe(0, wrong=True)
        fed += keep
        text.extend(range(n, n + 1 + (keep if right else 0)))
    return fed


def test_under_load_failing_guesses_stop_drafts_and_recovered_ones_resume_them() -> None:
    # rows at 8 that cost half a token's share: drafts pay when guesses are right
    curve = StepCosts.of({1: 0.010, 8: 0.030, 16: 0.045, 32: 0.075, 64: 0.135})
    policy, stats, text = DraftPolicy(curve), DraftStats(), [0]
    assert simulate(policy, stats, text, right=False, steps=12) <= 8  # a first bet, then none
    assert acceptance(stats, 8) < 0.35 and stats.watched > 0  # learnt without drafting
    assert simulate(policy, stats, text, right=False, steps=20) == 0
    assert policy.declined >= 20
    # the text starts going as the drafter predicts: a watched draft shows it once its 8
    # tokens have come, and drafting resumes
    assert simulate(policy, stats, text, right=True, steps=8) == 0
    assert simulate(policy, stats, text, right=True, steps=4) > 0
    assert acceptance(stats, 8) > 0.7


def test_the_policy_counts_what_it_was_offered_and_fed() -> None:
    policy = DraftPolicy(costs(GPU_MS))
    policy.begin_step(1, 1)
    fed = policy.choose(8, 64, succeeding()) + policy.choose(4, 8, failing())
    assert policy.offered == 12 and policy.fed == fed


# -- on a real worker ----------------------------------------------------------------------


async def test_compute_bound_steps_feed_no_drafts_and_keep_the_greedy_text(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4
    ) as worker:
        requests = [GenerationRequest(p, max_tokens=120) for p in LOOPING]
        free = await run_together(worker, requests)
        # the fake curve alone: through use_step_costs the tiny model's real steps, whose rows
        # are cheap, would correct it (test_online_costs_follow_the_served_steps)
        worker.draft_policy = policy = DraftPolicy(COMPUTE_BOUND)
        loaded = await run_together(worker, requests)
    assert sum(r.done.draft_tokens for r in free) > 0  # without the policy they drafted
    assert sum(r.done.draft_tokens for r in loaded) == 0
    assert policy.offered > 0 and policy.fed == 0 and policy.declined > 0
    for request, r in zip(requests, loaded, strict=True):
        margins = teacher_forced_margins(tiny_gguf, request.prompt, r.ids, gpu_layers)
        assert max(margins) <= GREEDY_MARGIN, (request.prompt, margins)


async def test_cheap_rows_keep_the_drafts_that_pay_and_the_greedy_text(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4
    ) as worker:
        worker.use_step_costs(costs(GPU_MS))
        results = [await run(worker, GenerationRequest(p, max_tokens=150)) for p in LOOPING]
        steps = worker.load.decode_steps
    kept = sum(r.done.accepted_draft_tokens for r in results)
    assert kept > 0
    assert steps == sum(1 + 150 - 1 - r.done.accepted_draft_tokens for r in results)
    for prompt, r in zip(LOOPING, results, strict=True):
        margins = teacher_forced_margins(tiny_gguf, prompt, r.ids, gpu_layers)
        assert max(margins) <= GREEDY_MARGIN, (prompt, margins)


async def test_online_costs_follow_the_served_steps(gpu_layers: int, tiny_gguf: Path) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4
    ) as worker:
        worker.use_step_costs(COMPUTE_BOUND)
        assert worker.step_costs is not None and worker.step_costs.samples == 0
        requests = [GenerationRequest(p, max_tokens=60) for p in LOOPING]
        results = await run_together(worker, requests)
        steps = worker.load.decode_steps
        online = worker.step_costs
    # every step but those that prefilled a prompt (each prompt's takes at least one)
    assert 0 < online.samples <= steps - 1
    # the tiny model's real steps are far cheaper than the fake curve's 10 ms a row
    assert online.cost(1) < COMPUTE_BOUND.cost(1)
    for request, r in zip(requests, results, strict=True):
        assert r.done.completion_tokens == 60
        margins = teacher_forced_margins(tiny_gguf, request.prompt, r.ids, gpu_layers)
        assert max(margins) <= GREEDY_MARGIN, (request.prompt, margins)


def test_a_sequence_ahead_of_the_batch_drafts_only_when_someone_waits() -> None:
    # past 4 rows every row costs 2 ms, two thirds of a token's share of the 8-row step, and
    # guesses are right: drafts pay for the sequence the batch waits for; one already ahead,
    # finishing sooner, frees only its own 2 ms row in steps that run anyway
    curve = StepCosts.of({1: 0.010, 4: 0.016, 8: 0.024, 16: 0.040, 32: 0.072, 64: 0.136})

    def fed(remaining: int, waiting: bool) -> int:
        policy = DraftPolicy(curve)
        policy.begin_step(8, 8, longest=100, waiting=waiting)
        return policy.choose(16, 32, succeeding(), remaining)

    assert fed(100, waiting=False) > 0  # the longest: the batch's end comes sooner
    assert fed(40, waiting=False) == 0
    assert fed(98, waiting=False) > 0  # 2 tokens ahead: it may still end last
    assert fed(40, waiting=True) > 0  # its slot goes to a waiting request sooner
    assert fed(0, waiting=False) > 0  # not known: weighed as before
