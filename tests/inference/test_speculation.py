"""Greedy speculation: what NgramDrafter predicts (pure), and that BatchingWorker's drafted
steps give the greedy text with fewer decode steps, whatever is rejected, stopped or cut."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inference.batching import BatchingWorker
from inference.generation import GenerationRequest
from inference.speculation import KEY, MAX_DRAFT, MIN_MATCH, NgramDrafter
from tests.inference.test_batching import (
    GREEDY_MARGIN,
    bit_exact_batches,
    run,
    run_together,
    teacher_forced_margins,
)

# The tiny random model falls into loops it leaves again: drafts are kept and rejected.
LOOPING = ("the capital of france is", "hello world", "a b c d e f g h " * 6)

# -- NgramDrafter ----------------------------------------------------------------------------


def test_no_draft_without_a_repeat() -> None:
    assert NgramDrafter(range(100)).draft(8) == []
    assert NgramDrafter().draft(8) == []
    assert NgramDrafter([1, 1, 1]).draft(8) == []


def test_a_run_of_one_token_drafts_more_of_it_as_the_run_grows() -> None:
    drafter = NgramDrafter([5, 6, 7])
    lengths = []
    for _ in range(2 * MAX_DRAFT + 8):
        drafter.extend([9])
        lengths.append(len(drafter.draft(100)))
        assert set(drafter.draft(100)) <= {9}
    # after k tokens the run matches itself one token back over k - 1 tokens
    assert lengths[:MIN_MATCH] == [0] * MIN_MATCH  # too short to bet on
    assert lengths[MIN_MATCH] == MIN_MATCH // 2
    assert lengths == sorted(lengths) and lengths[-1] == MAX_DRAFT


def test_a_period_continues_past_the_end_of_the_text() -> None:
    cycle = [10, 11, 12]
    drafter = NgramDrafter([1, 2] + cycle * MAX_DRAFT)
    assert drafter.match() == (3, 2 * MAX_DRAFT)  # compared no further than that
    assert drafter.draft(7) == [10, 11, 12, 10, 11, 12, 10]
    long = [20 + i for i in range(12)]
    drafter = NgramDrafter([1, *long, 2, *long[:10]])
    assert drafter.match() == (13, 10)
    assert drafter.draft(100) == [*long[10:], 2, 20, 21]  # half the match: 5 tokens


def test_a_draft_kept_whole_earns_the_whole_match_next() -> None:
    drafter = NgramDrafter([5] + [9] * 12)
    first = drafter.draft(100)
    assert first == [9] * (11 // 2)  # the run matches itself over 11 tokens: half of that
    drafter.extend([*first, 9])  # all kept, then the step's own token
    _, length = drafter.match()
    assert drafter.draft(100) == [9] * length
    drafter.extend([9])  # kept only in part: half again
    assert len(drafter.draft(100)) == drafter.match()[1] // 2


def test_a_short_coincidence_drafts_nothing() -> None:
    text = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4]  # the last KEY tokens occurred, little else did
    assert NgramDrafter(text).match() == (7, KEY)
    assert NgramDrafter(text).draft(8) == []


def test_a_token_off_the_pattern_ends_the_drafts() -> None:
    drafter = NgramDrafter([3] * 30)
    assert drafter.draft(4) == [3] * 4
    drafter.extend([8])
    assert drafter.draft(4) == []


def test_the_limit_bounds_the_draft() -> None:
    drafter = NgramDrafter([4] * 60)
    assert len(drafter.draft(3)) == 3
    assert drafter.draft(0) == [] and drafter.draft(-2) == []


def test_extending_bit_by_bit_is_building_at_once() -> None:
    text = [7, 8, 9, 7, 8, 9, 1, 7, 8, 9, 7, 8, 9, 1, 7, 8, 9, 7, 8, 9]
    whole = NgramDrafter(text)
    parts = NgramDrafter(text[:5])
    for i in range(5, len(text), 3):
        parts.extend(text[i : i + 3])
    assert len(parts) == len(whole) == len(text)
    assert parts.match() == whole.match() and parts.draft(10) == whole.draft(10)


# -- BatchingWorker ----------------------------------------------------------------------------


@pytest.fixture
async def worker(gpu_layers: int, tiny_gguf: Path) -> AsyncIterator[BatchingWorker]:
    """A fresh worker per test, so its step count is the test's."""
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4
    ) as fresh:
        yield fresh


@pytest.mark.parametrize("max_tokens", [37, 200])
async def test_drafted_steps_give_the_greedy_text_in_fewer_steps(
    gpu_layers: int, tiny_gguf: Path, worker: BatchingWorker, max_tokens: int
) -> None:
    results = [await run(worker, GenerationRequest(p, max_tokens=max_tokens)) for p in LOOPING]
    steps = worker.load.decode_steps
    assert all(r.done.completion_tokens == len(r.ids) == max_tokens for r in results)
    kept = sum(r.done.accepted_draft_tokens for r in results)
    assert kept > 0
    # every kept draft token saved a step: one prefill step per request, one per other token
    assert steps == sum(1 + max_tokens - 1 - r.done.accepted_draft_tokens for r in results)
    if max_tokens == 200:  # long enough for the loops to break: rejected drafts too
        assert sum(r.done.draft_tokens for r in results) > kept
    # each token is the model's own greedy choice (a rejected draft left in the cache would put
    # later tokens far off)
    for prompt, r in zip(LOOPING, results, strict=True):
        margins = teacher_forced_margins(tiny_gguf, prompt, r.ids, gpu_layers)
        assert max(margins) <= GREEDY_MARGIN, (prompt, margins)


async def test_speculation_off_drafts_nothing(worker: BatchingWorker) -> None:
    worker.speculate = False  # as BatchingWorker(..., speculate=False) and --no-speculate
    result = await run(worker, GenerationRequest(LOOPING[0], max_tokens=100))
    assert result.done.draft_tokens == 0
    assert worker.load.decode_steps == 100


async def test_a_step_carries_at_most_its_draft_budget(worker: BatchingWorker) -> None:
    worker.max_step_drafts = 3
    results = await run_together(worker, [GenerationRequest(LOOPING[2], 150)] * 3)
    steps = worker.load.decode_steps
    worker.max_step_drafts = 0
    none = await run(worker, GenerationRequest(LOOPING[2], 150))
    drafted = sum(r.done.draft_tokens for r in results)
    assert 0 < drafted <= 3 * steps  # alone, each would draft up to MAX_DRAFT a step
    assert none.done.draft_tokens == 0


async def test_only_greedy_batched_requests_draft(worker: BatchingWorker) -> None:
    greedy = GenerationRequest(LOOPING[0], max_tokens=100)
    sampled = GenerationRequest(LOOPING[0], max_tokens=100, temperature=0.3, seed=1)
    exact = GenerationRequest(LOOPING[0], max_tokens=100, reproducible=True)
    results = [await run(worker, r) for r in (greedy, sampled, exact)]
    assert results[0].done.draft_tokens > 0
    assert results[1].done.draft_tokens == results[2].done.draft_tokens == 0


async def test_a_stop_string_among_kept_drafts_ends_the_text_there(
    gpu_layers: int, tiny_gguf: Path, worker: BatchingWorker
) -> None:
    import llama_cpp

    vocab = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)

    def text(ids: list[int]) -> str:
        return vocab.detokenize(ids).decode("utf-8", "replace")

    full = await run(worker, GenerationRequest(LOOPING[2], max_tokens=120))
    # the output ends in a loop; twelve tokens of it first appear once the loop has gone on
    # long enough to be drafted, and are then met within a drafted step
    stop = text(full.ids[-12:])
    stopped = await run(worker, GenerationRequest(LOOPING[2], max_tokens=120, stop=[stop]))
    # the cache it leaves behind (prompt and kept tokens only) serves the next request
    follow = LOOPING[2] + stopped.text
    after = await run(worker, GenerationRequest(follow, max_tokens=40))
    everything = text(stopped.ids)
    assert stopped.done.finish_reason == "stop"
    assert stopped.text == everything[: everything.find(stop)]
    assert stopped.done.completion_tokens < 120 and stopped.done.accepted_draft_tokens > 0
    assert after.done.cached_prompt_tokens > 0
    margins = teacher_forced_margins(tiny_gguf, follow, after.ids, gpu_layers)
    assert max(margins) <= GREEDY_MARGIN, margins


async def test_identical_drafting_requests_together_stay_identical(
    gpu_layers: int, tiny_gguf: Path, worker: BatchingWorker
) -> None:
    request = GenerationRequest(LOOPING[1], max_tokens=120)
    results = await run_together(worker, [request] * 3 + [GenerationRequest("once", 120)])
    assert all(r.done.accepted_draft_tokens > 0 for r in results[:3])
    if bit_exact_batches(worker):
        assert results[0].ids == results[1].ids == results[2].ids
    for r in results[:3]:
        margins = teacher_forced_margins(tiny_gguf, request.prompt, r.ids, gpu_layers)
        assert max(margins) <= GREEDY_MARGIN, margins


@pytest.mark.slow
async def test_default_model_drafts_the_benchmark_list(
    gpu_layers: int, default_model: Path
) -> None:
    """The yardstick's prompt (../shared/bench): the model's answer repeats a digit, which
    the drafts predict, in half the steps or fewer; each token is still the model's greedy
    choice."""
    request = GenerationRequest("List the numbers from 1 to 300, separated by commas:", 128)
    async with BatchingWorker(
        default_model, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2
    ) as worker:
        result = await run(worker, request)
        steps = worker.load.decode_steps
    assert result.done.completion_tokens == 128
    assert result.done.accepted_draft_tokens >= 64 and steps <= 128 - 64
    margins = teacher_forced_margins(default_model, request.prompt, result.ids, gpu_layers)
    assert max(margins) <= GREEDY_MARGIN, margins
