"""Same-prompt requests admitted together prefill their prompt once (inference/sibling_prefill.py):
the first prefills it, the others wait a step and share its cells, evaluating only the last
prompt token themselves; their greedy output stays the solo argmax within the margin."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from inference.batching import BatchingWorker
from inference.generation import GenerationRequest
from inference.sibling_prefill import MIN_SHARED_TOKENS
from tests.inference.test_batching import (
    GREEDY_MARGIN,
    Result,
    run,
    run_together,
    teacher_forced_margins,
    wait_until,
)

# ~110 tokens of the tiny vocabulary: long against MIN_SHARED_TOKENS, short against n_ctx
PROMPT = "the history of the river valley begins with the first farmers who came " * 3


def prefilled(results: list[Result]) -> int:
    """Prompt tokens the worker evaluated for these requests: those it did not share."""
    return sum(r.done.prompt_tokens - r.done.cached_prompt_tokens for r in results)


async def test_four_same_prompt_requests_prefill_once(gpu_layers: int, tiny_gguf: Path) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4, max_queue=4
    ) as worker:
        request = GenerationRequest(PROMPT, max_tokens=12)
        with trio.fail_after(120):
            results = await run_together(worker, [request] * 4)
        n = results[0].done.prompt_tokens
        assert n > 4 * MIN_SHARED_TOKENS
        # one prefill, plus each follower's last prompt token (for its own logits)
        assert prefilled(results) == n + 3, [r.done.cached_prompt_tokens for r in results]
        assert sorted(r.done.cached_prompt_tokens for r in results) == [0, n - 1, n - 1, n - 1]
        for r in results:
            assert r.done.completion_tokens == 12
            margins = teacher_forced_margins(tiny_gguf, PROMPT, r.ids, gpu_layers)
            assert max(margins) <= GREEDY_MARGIN, margins


async def test_a_prefill_in_chunks_is_waited_for_to_its_end(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    """With a batch of 32 tokens the prompt takes several steps; the followers wait them all."""
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=3, n_batch=32
    ) as worker:
        request = GenerationRequest(PROMPT, max_tokens=8)
        with trio.fail_after(120):
            results = await run_together(worker, [request] * 3)
        n = results[0].done.prompt_tokens
        assert n > 3 * 32
        assert prefilled(results) == n + 2
        for r in results:
            margins = teacher_forced_margins(tiny_gguf, PROMPT, r.ids, gpu_layers)
            assert max(margins) <= GREEDY_MARGIN, margins


async def test_different_prompts_and_reproducible_requests_do_not_wait(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4
    ) as worker:
        others = [GenerationRequest(f"{i} " + PROMPT, max_tokens=4) for i in range(3)]
        with trio.fail_after(120):
            results = await run_together(worker, others)
        # a shared BOS token is no reason to wait: each prefilled its own prompt
        assert all(r.done.cached_prompt_tokens <= 1 for r in results)
        assert worker.load.decode_steps == 4  # joined in one step, 4 tokens each

    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4, prefix_cache=False
    ) as worker:
        request = GenerationRequest(PROMPT, max_tokens=4)
        with trio.fail_after(120):
            results = await run_together(worker, [request] * 3)
        assert all(r.done.cached_prompt_tokens == 0 for r in results)
        assert worker.load.decode_steps == 4


async def test_a_follower_is_served_when_the_sibling_it_waits_for_is_cancelled(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=2, n_batch=16
    ) as worker:
        long_prompt = PROMPT * 3  # ~330 tokens: ~20 steps of prefill in 16-token chunks
        request = GenerationRequest(long_prompt, max_tokens=6)
        follower: list[Result] = []

        async def leader(cancel_scope: trio.CancelScope) -> None:
            with cancel_scope:
                await run(worker, request)

        async def follow() -> None:
            follower.append(await run(worker, request))

        scope = trio.CancelScope()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                with worker.admit_together():
                    nursery.start_soon(leader, scope)
                    nursery.start_soon(follow)
                    await trio.testing.wait_all_tasks_blocked()
                # the leader is a few 16-token steps into its prefill; the follower waits
                await wait_until(lambda: worker.load.decode_steps >= 2)
                scope.cancel()
        (result,) = follower
        assert result.done.completion_tokens == 6
        margins = teacher_forced_margins(tiny_gguf, long_prompt, result.ids, gpu_layers)
        assert max(margins) <= GREEDY_MARGIN, margins
