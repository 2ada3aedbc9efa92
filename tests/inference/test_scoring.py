"""Scoring (inference/scoring.py): prompt + given tokens teacher-forced in batched prefills, each
position's logprob, rank, margin and alternatives as a plain token-by-token decode gives them;
chunked within its bounds; in BatchingWorker between decode steps without disturbing the batch;
in ModelWorker on its own context."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

import inference.scoring as scoring
from inference.batching import BatchingWorker
from inference.generation import (
    GenerationError,
    GenerationRequest,
    PromptTooLong,
    TokenChunk,
    WorkerBusy,
)
from inference.llama_lowlevel import LoadedModel
from inference.scoring import (
    MAX_SCORE_TOKENS,
    MAX_TOP_LOGPROBS,
    ScoreRequest,
    ScoreResult,
    score_tokens,
)
from inference.worker import ModelWorker
from tests.inference.test_batching import bit_exact_batches, run, run_together, wait_until

PROMPT = "the capital of france is"
GREEDY = GenerationRequest(PROMPT, max_tokens=30)
# Batched prefill against one-token decodes on the tiny model: logits agree to ~1e-5 on the CPU;
# on a GPU's kernels to a few hundredths.
TOLERANCE = 0.03


@pytest.fixture
async def batch(gpu_layers: int, tiny_gguf: Path) -> AsyncIterator[BatchingWorker]:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4, max_queue=2,
        prefix_cache=False,
    ) as worker:  # fmt: skip
        yield worker


def plain_decode_logits(path: Path, prompt: str, tokens: list[int]) -> np.ndarray[Any, Any]:
    """The logits before each given token, from a context fed one token per decode."""
    model = LoadedModel.load(path, n_ctx=512, n_seq=1, n_threads=2, n_gpu_layers=0)
    try:
        ids = model.tokenize(prompt)
        rows = []
        for pos, token in enumerate([*ids, *tokens[:-1]]):
            model.clear_batch()
            model.add(token, pos, 0, True)
            assert model.decode() == 0
            if pos >= len(ids) - 1:
                rows.append(model.logits(0).copy())
        return np.array(rows)
    finally:
        model.close()


def assert_matches(result: ScoreResult, reference: np.ndarray[Any, Any], tokens: list[int]) -> None:
    assert len(result.positions) == len(tokens) == len(reference)
    for i, (p, row, token) in enumerate(zip(result.positions, reference, tokens, strict=True)):
        row = row.astype(np.float64)
        logsoftmax = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        assert p.index == i and p.token == token
        assert p.logprob == pytest.approx(logsoftmax[token], abs=TOLERANCE)
        assert p.margin == pytest.approx(row.max() - row[token], abs=TOLERANCE)
        assert p.margin >= 0 and p.logprob <= 0
        gaps = np.abs(row - row[token])
        gaps[token] = np.inf
        if gaps.min() > 2 * TOLERANCE:  # no near-tie that noise could reorder
            assert p.rank == int((row > row[token]).sum())
        assert [lp for _, lp in p.top] == sorted((lp for _, lp in p.top), reverse=True)
        for alt, lp in p.top:
            assert lp == pytest.approx(logsoftmax[alt], abs=TOLERANCE)
        if p.top:
            assert p.top[0][1] == pytest.approx(logsoftmax.max(), abs=TOLERANCE)


async def test_scores_equal_a_plain_decode(batch: BatchingWorker, tiny_gguf: Path) -> None:
    with trio.fail_after(60):
        generated = (await run(batch, GREEDY)).ids
        tokens = [*generated[:10], 300, 5, 411, *generated[10:20]]  # some unlikely ones too
        result = await batch.score(ScoreRequest(GREEDY, tokens, top_logprobs=MAX_TOP_LOGPROBS))
    assert_matches(result, plain_decode_logits(tiny_gguf, PROMPT, tokens), tokens)
    assert result.prompt_tokens > 1 and result.seconds > 0
    assert all(len(p.top) == MAX_TOP_LOGPROBS for p in result.positions)
    # A plain greedy request's pick is the raw argmax: its choice margin is the margin.
    assert [p.choice_margin for p in result.positions] == [p.margin for p in result.positions]
    assert all(p.rank == 0 for p in result.positions[:10])  # its own greedy tokens


async def test_only_the_asked_positions_are_scored(batch: BatchingWorker) -> None:
    tokens = list(range(300, 340))
    request = GenerationRequest(PROMPT, temperature=0.9, seed=3, repeat_penalty=1.3)
    with trio.fail_after(60):
        full = await batch.score(ScoreRequest(request, tokens))
        some = await batch.score(ScoreRequest(request, tokens, only=(0, 7, 8, 39)))
    assert [p.index for p in some.positions] == [0, 7, 8, 39]
    for p in some.positions:  # the penalties and the draw's step saw the skipped tokens too
        q = full.positions[p.index]
        assert p.token == q.token and p.rank == q.rank
        assert p.logprob == pytest.approx(q.logprob, abs=TOLERANCE)
        assert p.choice_margin == pytest.approx(q.choice_margin, abs=TOLERANCE)


def test_chunks_bound_each_decode(monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path) -> None:
    tokens = list(range(300, 330))
    request = ScoreRequest(GenerationRequest(PROMPT), tokens, top_logprobs=3)
    decodes: list[int] = []
    original = LoadedModel.decode

    def counted(self: LoadedModel) -> int:
        decodes.append(self.n_tokens)
        return original(self)

    model = LoadedModel.load(tiny_gguf, n_ctx=512, n_seq=1, n_threads=2, n_gpu_layers=0)
    small = LoadedModel.load(tiny_gguf, n_ctx=512, n_seq=1, n_threads=2, n_gpu_layers=0, n_batch=8)
    try:
        whole = score_tokens(model, 0, request)
        monkeypatch.setattr(scoring, "SCORE_CHUNK", 4)
        monkeypatch.setattr(LoadedModel, "decode", counted)
        chunked = score_tokens(small, 0, request)
    finally:
        model.close()
        small.close()
    n_feed = whole.prompt_tokens + len(tokens) - 1
    assert sum(decodes) == n_feed and max(decodes) <= 8
    assert len(decodes) <= math.ceil(len(tokens) / 4) + math.ceil(whole.prompt_tokens / 8) + 1
    for a, b in zip(whole.positions, chunked.positions, strict=True):
        assert (a.token, a.rank) == (b.token, b.rank)
        assert a.logprob == pytest.approx(b.logprob, abs=TOLERANCE)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


def test_score_request_bounds() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ScoreRequest(GREEDY, ())
    with pytest.raises(ValueError, match="at most"):
        ScoreRequest(GREEDY, [1] * (MAX_SCORE_TOKENS + 1))
    with pytest.raises(ValueError, match="token ids"):
        ScoreRequest(GREEDY, [1, -2])
    with pytest.raises(ValueError):
        ScoreRequest(GREEDY, [1], top_logprobs=MAX_TOP_LOGPROBS + 1)
    with pytest.raises(ValueError, match="increasing"):
        ScoreRequest(GREEDY, [1, 2, 3], only=(2, 1))
    with pytest.raises(ValueError, match="increasing"):
        ScoreRequest(GREEDY, [1, 2, 3], only=(3,))
    assert ScoreRequest(GREEDY, [1] * MAX_SCORE_TOKENS).tokens == (1,) * MAX_SCORE_TOKENS


async def test_bad_score_requests_fail_alone(batch: BatchingWorker) -> None:
    with trio.fail_after(60):
        with pytest.raises(PromptTooLong):
            await batch.score(ScoreRequest(GREEDY, [300] * 510))
        with pytest.raises(GenerationError, match="vocabulary"):
            await batch.score(ScoreRequest(GREEDY, [300, 10_000]))
        assert len((await batch.score(ScoreRequest(GREEDY, [300, 301]))).positions) == 2
        assert batch.load.active_requests == 0 and batch.load.queue_depth == 0


async def test_scoring_counts_against_the_bound(gpu_layers: int, tiny_gguf: Path) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=1, max_queue=0
    ) as worker:
        with trio.fail_after(60):
            async with worker.generate(GenerationRequest(PROMPT, max_tokens=200)) as stream:
                await stream.__anext__()
                with pytest.raises(WorkerBusy):
                    await worker.score(ScoreRequest(GREEDY, [300]))
            await wait_until(lambda: worker.load.active_requests == 0)  # cancelled within a step
            await worker.score(ScoreRequest(GREEDY, [300]))  # room again
    with pytest.raises(GenerationError, match="not been started"):
        await BatchingWorker(tiny_gguf).score(ScoreRequest(GREEDY, [300]))


async def test_scoring_between_steps_leaves_the_batch_untouched(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4, prefix_cache=False,
        speculate=False,  # its drafts change from run to run what a step holds
    ) as batch:  # fmt: skip
        await check_scoring_leaves_the_batch_untouched(batch)


async def check_scoring_leaves_the_batch_untouched(batch: BatchingWorker) -> None:
    requests = [GenerationRequest(p, max_tokens=60) for p in ("hello world", "the city of")]
    with trio.fail_after(120):
        alone = await run_together(batch, requests)
        scored: list[ScoreResult] = []
        results: list[list[int]] = [[], []]

        async def generate(i: int, started: trio.Event) -> None:
            async with batch.generate(requests[i]) as stream:
                async for item in stream:
                    started.set()
                    results[i] += item.token_ids if isinstance(item, TokenChunk) else ()
                    if not isinstance(item, TokenChunk):
                        results[i] += item.token_ids

        async with trio.open_nursery() as nursery:
            events = [trio.Event(), trio.Event()]
            with batch.admit_together():  # as `alone` joined: the same steps, but for scoring
                for i in range(2):
                    nursery.start_soon(generate, i, events[i])
                await trio.testing.wait_all_tasks_blocked()
            for event in events:
                await event.wait()  # both are generating: the scoring runs between their steps
            for _ in range(3):
                scored.append(await batch.score(ScoreRequest(GREEDY, list(range(300, 400)))))
        again = await batch.score(ScoreRequest(GREEDY, list(range(300, 400))))
    assert batch.load.decode_steps > 0 and all(len(s.positions) == 100 for s in scored)
    if bit_exact_batches(batch):
        assert results == [r.ids for r in alone]
    for s in scored:  # the scores themselves see the pool's other cells: equal up to noise
        assert [p.logprob for p in s.positions] == pytest.approx(
            [p.logprob for p in again.positions], abs=TOLERANCE
        )
    else:
        assert [len(r) for r in results] == [len(r.ids) for r in alone]


async def test_model_worker_scores_as_the_batching_worker(
    batch: BatchingWorker, gpu_layers: int, tiny_gguf: Path
) -> None:
    tokens = list(range(300, 330))
    request = ScoreRequest(GenerationRequest(PROMPT, temperature=0.7, seed=1), tokens)
    async with ModelWorker(tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2) as solo:
        with trio.fail_after(60):
            before = await run(solo, GREEDY)
            mine = await solo.score(request)
            after = await run(solo, GREEDY)
            theirs = await batch.score(request)
    assert before.ids == after.ids  # the context is left as it was found
    for a, b in zip(mine.positions, theirs.positions, strict=True):
        assert a.token == b.token
        assert a.logprob == pytest.approx(b.logprob, abs=TOLERANCE)
        assert a.choice_margin == pytest.approx(b.choice_margin, abs=TOLERANCE)


async def test_a_score_given_up_while_queued_frees_its_place(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=1, max_queue=1
    ) as worker:
        with trio.fail_after(60):
            async with worker.generate(GenerationRequest(PROMPT, max_tokens=400)) as stream:
                await stream.__anext__()  # the only slot is busy
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(worker.score, ScoreRequest(GREEDY, [300]))
                        await trio.testing.wait_all_tasks_blocked()
                        assert worker.load.queue_depth == 1
                        scope.cancel()
                await wait_until(lambda: worker.load.queue_depth == 0)
            await wait_until(lambda: worker.load.active_requests == 0)
            assert len((await worker.score(ScoreRequest(GREEDY, [300, 301]))).positions) == 2
