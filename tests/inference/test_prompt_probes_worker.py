"""BatchingWorker's prompt probes (inference/probe_rows.py): each draw's value is the prompt's
own log-probability at the position it names (the echo entries, computed by the prefill), also
when the prompt came from the prefix cache, beside other sequences, after a first-token finish,
for a reproducible request, and with every spare id taken by several requests at once."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from inference.batching import BatchingWorker
from inference.generation import GenerationDone, GenerationRequest
from inference.probe_rows import SPARE_SEQS
from inference.prompt_probes import DEFAULT_PROBES, DRAW_SPAN, probe_positions

# A probe row decoded alone and the same row in a prefill chunk differ by the kernels a batch
# picks (honest noise: median 0.00025 nats, largest 0.034 on the default model; the tiny one
# can be noisier); a wrong token or position is off by whole nats.
TOLERANCE = 0.05
PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the mat. " * 3


def ask(prompt: str, **fields: Any) -> GenerationRequest:
    return GenerationRequest(prompt, **fields)


async def run(worker: Any, request: GenerationRequest) -> GenerationDone:
    done = None
    async with worker.generate(request) as stream:
        async for item in stream:
            if isinstance(item, GenerationDone):
                done = item
    assert done is not None
    return done


def draws(n: int = DEFAULT_PROBES) -> tuple[int, ...]:
    # the ends too: position 0 (its row sees only itself) and n - 2
    return (0, DRAW_SPAN - 1, *(secrets.randbits(32) for _ in range(n - 2)))


def echo_values(done: GenerationDone, picks: tuple[int, ...]) -> list[float]:
    positions = probe_positions(picks, done.prompt_tokens)
    return [done.prompt_logprobs[p].logprob for p in positions]


def close(a: tuple[float, ...] | list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOLERANCE for x, y in zip(a, b, strict=True))


@pytest.fixture
async def worker(tiny_gguf: Path) -> Any:
    w = BatchingWorker(tiny_gguf, n_ctx=256, slots=8, n_threads=2)
    await w.start()
    try:
        yield w
    finally:
        await w.aclose()


async def test_probe_values_equal_the_echo_log_probabilities(worker: Any) -> None:
    picks = draws()
    with trio.fail_after(180):
        done = await run(
            worker, ask(PROMPT, max_tokens=4, prompt_logprobs=True, logprobs=0, probes=picks)
        )
        assert len(done.probe_logprobs) == len(picks)
        assert done.cached_prompt_tokens == 0  # every probe row is the prefill's own
        assert close(done.probe_logprobs, echo_values(done, picks))
        # the same prompt again: now from the prefix cache, never computed in this request
        again = await run(worker, ask(PROMPT, max_tokens=4, probes=picks))
        assert again.cached_prompt_tokens > len(PROMPT) // 8
        assert close(again.probe_logprobs, echo_values(done, picks))


async def test_probes_beside_other_sequences_and_with_spares_short(worker: Any) -> None:
    """8 requests join in one step, their prompts from the prefix cache: 64 probe rows for 16
    spare ids, so they take several steps (each finish is held until its probes are read);
    each sequence's values are still its own prompt's."""
    prompts = [
        f"{i} little pigs went to market and {i * 7} came home again. " * 2 for i in range(8)
    ]
    picks = [draws() for _ in prompts]
    with trio.fail_after(300):  # a hang, not a speed check: this machine can be slow
        echo = [
            await run(worker, ask(p, max_tokens=1, prompt_logprobs=True, logprobs=0))
            for p in prompts
        ]
        results: list[GenerationDone | None] = [None] * len(prompts)

        async def one(i: int) -> None:
            # max_tokens=1: every finish is held for the probe rows
            request = ask(prompts[i], max_tokens=1, probes=picks[i])
            results[i] = await run(worker, request)

        async with trio.open_nursery() as nursery:
            with worker.admit_together():
                for i in range(len(prompts)):
                    nursery.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()
    assert len(prompts) * DEFAULT_PROBES > SPARE_SEQS
    for i, done in enumerate(results):
        assert done is not None and done.completion_tokens == 1
        assert done.cached_prompt_tokens > 0  # so the probes' rows were the spare ids'
        assert close(done.probe_logprobs, echo_values(echo[i], picks[i]))


async def test_reproducible_requests_and_one_token_prompts(worker: Any) -> None:
    picks = draws()
    with trio.fail_after(180):
        echo = await run(worker, ask(PROMPT, max_tokens=1, prompt_logprobs=True, logprobs=0))
        solo = await run(worker, ask(PROMPT, max_tokens=3, reproducible=True, probes=picks))
        plain = await run(worker, ask(PROMPT, max_tokens=3, reproducible=True))
        assert close(solo.probe_logprobs, echo_values(echo, picks))
        assert solo.token_ids == plain.token_ids  # probes leave its own rows alone
        short = await run(worker, ask("", max_tokens=2, probes=picks))
        assert short.prompt_tokens == 1 and short.probe_logprobs == ()
        none = await run(worker, ask(PROMPT, max_tokens=2))
        assert none.probe_logprobs == ()


async def test_probes_with_replay_and_sampling(worker: Any) -> None:
    picks = draws(16)
    with trio.fail_after(180):
        echo = await run(worker, ask(PROMPT, max_tokens=1, prompt_logprobs=True, logprobs=0))
        replay = tuple(e.token for e in echo.prompt_logprobs[3:5])  # ordinary tokens
        replayed = ask(
            PROMPT, max_tokens=4, seed=5, temperature=0.9, probes=picks, replay_tokens=replay
        )
        done = await run(worker, replayed)
    assert close(done.probe_logprobs, echo_values(echo, picks))
