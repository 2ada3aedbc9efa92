"""Replayable sampling (inference/replayable_draw.py, inference/llama_lowlevel.py `Sampler`): the
draw's noise is a pure function of (seed, step, token id), so a seeded sampled run repeats, a
replay continues it exactly, and the run's own worker, scoring it, finds every token to be
exactly its sampler's pick (choice_margin 0)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import numpy as np
import pytest
import trio

from inference.batching import BatchingWorker
from inference.generation import GenerationRequest
from inference.replayable_draw import draw, draw_margin, gumbel
from inference.scoring import ScoreRequest
from inference.verification import judge
from inference.worker import ModelWorker
from tests.inference.test_batching import check_replay, run

SAMPLED = GenerationRequest(
    "the capital of france is", max_tokens=40, temperature=1.2, top_p=0.95, seed=5
)


@pytest.fixture
async def worker(gpu_layers: int, tiny_gguf: Path) -> AsyncIterator[BatchingWorker]:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=2, max_queue=4
    ) as w:
        yield w


# -- the noise, as a pure function -----------------------------------------------------------


def test_noise_is_a_pure_function_of_seed_step_and_token() -> None:
    ids = np.arange(1000)
    a = gumbel(1, 0, ids)
    assert np.array_equal(a, gumbel(1, 0, ids))
    assert np.array_equal(a[[7, 3]], gumbel(1, 0, np.array([7, 3])))  # per id, not per array
    assert not np.array_equal(a, gumbel(2, 0, ids))
    assert not np.array_equal(a, gumbel(1, 1, ids))
    # Standard Gumbel: mean = Euler's gamma, variance = pi^2 / 6 (1000 draws: loose bounds).
    many = gumbel(3, 9, np.arange(100_000))
    assert abs(many.mean() - 0.5772) < 0.02
    assert abs(many.var() - math.pi**2 / 6) < 0.05


def test_the_draw_follows_the_softmax() -> None:
    ids = np.array([10, 20, 30])
    logits = np.log(np.array([0.6, 0.3, 0.1], dtype=np.float32))
    picks = [draw(42, step, ids, logits) for step in range(20_000)]
    freq = [picks.count(t) / len(picks) for t in (10, 20, 30)]
    assert freq == pytest.approx([0.6, 0.3, 0.1], abs=0.015)


def test_draw_margin_is_zero_for_the_pick_and_infinite_for_a_filtered_token() -> None:
    ids = np.array([4, 8, 15, 16])
    logits = np.array([1.0, 0.5, 0.2, -np.inf], dtype=np.float32)
    for step in range(50):
        pick = draw(7, step, ids, logits)
        assert draw_margin(7, step, ids, logits, pick) == 0.0
        others = [draw_margin(7, step, ids, logits, int(t)) for t in ids if t != pick]
        assert all(m > 0 for m in others)
    assert draw_margin(7, 0, ids, logits, 23) == math.inf  # not a survivor
    assert draw_margin(7, 0, ids, logits, 16) == math.inf  # banned (-inf)


# -- in the worker ---------------------------------------------------------------------------


async def test_same_seed_same_output_other_seed_other_output(worker: BatchingWorker) -> None:
    with trio.fail_after(60):
        first = await run(worker, SAMPLED)
        again = await run(worker, SAMPLED)
        other = await run(worker, attrs.evolve(SAMPLED, seed=6))
    assert first.ids == again.ids and first.done.seed == 5
    assert other.ids != first.ids


async def test_a_request_without_seed_gets_one_that_replays_it(worker: BatchingWorker) -> None:
    with trio.fail_after(60):
        unseeded = await run(worker, attrs.evolve(SAMPLED, seed=None))
        seed = unseeded.done.seed
        assert seed is not None
        seeded = await run(worker, attrs.evolve(SAMPLED, seed=seed))
        greedy = await run(worker, GenerationRequest("hello", max_tokens=4))
    assert seeded.ids == unseeded.ids
    assert greedy.done.seed is None  # nothing was drawn


async def test_replay_of_a_sampled_run_continues_exactly(worker: BatchingWorker) -> None:
    with trio.fail_after(60):
        await check_replay(worker, attrs.evolve(SAMPLED, reproducible=True), 6)
        penalized = attrs.evolve(
            SAMPLED, reproducible=True, repeat_penalty=1.3, presence_penalty=0.5, top_k=0
        )
        await check_replay(worker, penalized, 9)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"top_k": 0, "min_p": 0.0},
        {"typical_p": 0.9, "repeat_penalty": 1.2, "frequency_penalty": 0.4},
        {"logit_bias": {300: 1.0, 301: -100.0}, "ignore_eos": True},
        {"temperature": 0.0, "repeat_penalty": 1.5},  # a greedy chain
    ],
)
async def test_scoring_an_honest_sampled_run_finds_every_token_the_pick(
    worker: BatchingWorker, fields: dict[str, object]
) -> None:
    request = attrs.evolve(SAMPLED, reproducible=True, **fields)  # type: ignore[arg-type]
    with trio.fail_after(60):
        result = await run(worker, request)
        scored = await worker.score(ScoreRequest(request, result.ids, top_logprobs=0))
    assert len(scored.positions) == len(result.ids) > 10
    assert [p.choice_margin for p in scored.positions] == [0.0] * len(result.ids)
    # Another seed's draws are not these: most tokens are then somebody else's pick.
    other = await worker.score(ScoreRequest(attrs.evolve(request, seed=99), result.ids))
    if request.temperature > 0:
        assert sum(p.choice_margin > 0 for p in other.positions) > len(result.ids) // 4


async def test_an_unseeded_sampled_run_cannot_be_replayed_by_scoring(
    worker: BatchingWorker,
) -> None:
    request = attrs.evolve(SAMPLED, seed=None)
    with trio.fail_after(60):
        scored = await worker.score(ScoreRequest(request, (300, 301, 302)))
    assert all(math.isnan(p.choice_margin) for p in scored.positions)
    assert all(math.isfinite(p.logprob) for p in scored.positions)


async def test_model_worker_draws_as_the_batching_worker(
    worker: BatchingWorker, gpu_layers: int, tiny_gguf: Path
) -> None:
    request = attrs.evolve(SAMPLED, reproducible=True, repeat_penalty=1.2)
    async with ModelWorker(tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2) as solo:
        with trio.fail_after(60):
            mine = await run(solo, request)
            await check_replay(solo, request, 8)
            theirs = await run(worker, request)
            scored = await worker.score(ScoreRequest(request, mine.ids, top_logprobs=0))
    assert mine.done.seed == request.seed
    # Not bit for bit (another context layout), but the same draws: nearly every token is the
    # batching worker's own pick, the rest within noise of it or just across a filter's
    # boundary (top_p: +inf), which the statistic tolerates.
    margins = [p.choice_margin for p in scored.positions]
    assert sum(m == 0.0 for m in margins) >= 0.9 * len(margins), str(margins)
    assert judge(scored.positions, sampled=True).verdict == "consistent", str(margins)
    assert len(mine.ids) == len(theirs.ids)
