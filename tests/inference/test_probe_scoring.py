"""The verifier's prompt-probe values (inference/probe_scoring.py via inference/scoring.py): per
draw, in order, the log-probability of the next prompt token at the position it names, as a
token-by-token decode and the echo entries give them; with `only` sampling, on both workers,
none for a one-token prompt or a request without draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from inference.batching import BatchingWorker
from inference.generation import GenerationDone, GenerationRequest
from inference.llama_lowlevel import LoadedModel
from inference.prompt_probes import DRAW_SPAN, probe_positions
from inference.scoring import ScoreRequest
from inference.worker import ModelWorker

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the mat. " * 2
# Prefill rows against one-token decodes on the tiny model: ~1e-5 on a CPU.
TOLERANCE = 0.03
DRAWS = (0, DRAW_SPAN - 1, 123_456_789, 2**31, 2**31, 3_000_000_000, 77, 4_000_000_000)


def reference(path: Path, prompt: str) -> tuple[list[int], list[float]]:
    """The prompt's tokens and, per position p, log p(prompt[p+1] | prompt[..p]) from a
    context fed one token per decode."""
    model = LoadedModel.load(path, n_ctx=512, n_seq=1, n_threads=2, n_gpu_layers=0)
    try:
        ids = model.tokenize(prompt)
        values = []
        for pos, token in enumerate(ids[:-1]):
            model.clear_batch()
            model.add(token, pos, 0, True)
            assert model.decode() == 0
            row = model.logits(0).astype(np.float64)
            norm = row.max() + np.log(np.exp(row - row.max()).sum())
            values.append(float(row[ids[pos + 1]] - norm))
        return ids, values
    finally:
        model.close()


def request(prompt: str = PROMPT, **fields: Any) -> GenerationRequest:
    return GenerationRequest(prompt, max_tokens=4, **{"probes": DRAWS, **fields})


async def test_scoring_returns_the_values_at_the_named_positions(tiny_gguf: Path) -> None:
    ids, values = reference(tiny_gguf, PROMPT)
    wanted = [values[p] for p in probe_positions(DRAWS, len(ids))]
    async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=2) as worker:
        with trio.fail_after(60):
            every = await worker.score(ScoreRequest(request(), (5, 6, 7, 8)))
            sampled = await worker.score(ScoreRequest(request(), (5, 6, 7, 8), only=(2,)))
            plain = await worker.score(ScoreRequest(request(probes=()), (5, 6, 7, 8)))
            echo: GenerationDone | None = None
            asked = request(prompt_logprobs=True, logprobs=0, probes=())
            async with worker.generate(asked) as stream:
                async for item in stream:
                    if isinstance(item, GenerationDone):
                        echo = item
    assert every.probe_logprobs == pytest.approx(wanted, abs=TOLERANCE)
    assert sampled.probe_logprobs == pytest.approx(wanted, abs=TOLERANCE)
    assert len(every.probe_logprobs) == len(DRAWS)  # one per draw, repeats included
    assert every.probe_logprobs[3] == every.probe_logprobs[4]
    assert plain.probe_logprobs == ()
    # the output's scores are the same with or without probe rows
    assert [p.logprob for p in every.positions] == pytest.approx(
        [p.logprob for p in plain.positions], abs=1e-4
    )
    assert echo is not None  # OpenAI's echo entries: the same values
    echo_values = [echo.prompt_logprobs[p].logprob for p in probe_positions(DRAWS, len(ids))]
    assert every.probe_logprobs == pytest.approx(echo_values, abs=TOLERANCE)


async def test_model_worker_and_a_one_token_prompt(tiny_gguf: Path) -> None:
    ids, values = reference(tiny_gguf, PROMPT)
    wanted = [values[p] for p in probe_positions(DRAWS, len(ids))]
    async with ModelWorker(tiny_gguf, n_ctx=512, n_threads=2) as worker:
        with trio.fail_after(60):
            result = await worker.score(ScoreRequest(request(), (5, 6)))
            short = await worker.score(ScoreRequest(request(prompt="a"), (5, 6)))
    assert result.probe_logprobs == pytest.approx(wanted, abs=TOLERANCE)
    assert short.prompt_tokens < 2 or len(short.probe_logprobs) == len(DRAWS)
    if short.prompt_tokens < 2:
        assert short.probe_logprobs == ()
