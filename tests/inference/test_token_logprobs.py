"""Log-probabilities of generated tokens (inference/token_logprobs.py) in both workers, on the
tiny GGUF: one entry per released token, the raw distribution's numbers (equal to what scoring
the same tokens gives), greedy picks the top alternative, and speculation's kept drafts get
entries too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from inference.batching import BatchingWorker
from inference.generation import GenerationRequest, TokenChunk
from inference.prompt_logprobs import PROMPT_ROWS_PER_STEP
from inference.scoring import ScoreRequest
from inference.streaming import TextAssembler
from inference.token_logprobs import TokenLogprob, token_logprob, top_tokens
from tests.inference.test_batching import run

PROMPT = "the capital of france is"


# `batch` and `worker` (each test on both workers) are tests/inference/conftest.py's.


def entries(chunks: list[TokenChunk]) -> list[TokenLogprob]:
    out = []
    for chunk in chunks:
        assert len(chunk.logprobs) == len(chunk.token_ids)
        assert [e.token for e in chunk.logprobs] == list(chunk.token_ids)
        out.extend(chunk.logprobs)
    return out


def test_top_tokens_are_sorted_with_ties_by_id() -> None:
    logits = np.array([1.0, 3.0, 3.0, -2.0, 0.5], dtype=np.float32)
    assert top_tokens(logits, 3).tolist() == [1, 2, 0]
    assert top_tokens(logits, 9).tolist() == [1, 2, 0, 4, 3]
    entry = token_logprob(logits, 1, 2, lambda t: b"%d" % t)
    assert [a.token for a in entry.top] == [1, 2]
    expected = 3.0 - np.log(np.exp(logits.astype(np.float64)).sum())
    assert entry.logprob == pytest.approx(expected) == entry.top[0].logprob


def test_entries_go_with_the_chunk_that_releases_their_tokens() -> None:
    asm = TextAssembler(("STOP",))
    entry = {t: TokenLogprob(t, b"", -1.0) for t in range(5)}
    assert asm.add(0, b"ab", entry[0]) is not None  # released at once
    assert asm.add(1, b"\xc3", entry[1]) is None  # half a character: held back
    chunk = asm.add(2, b"\xa9S", entry[2])  # completes it; "S" may start the stop string
    assert chunk is None
    chunk = asm.add(3, b"x", entry[3])
    assert chunk is not None and chunk.token_ids == (1, 2, 3)
    assert [e.token for e in chunk.logprobs] == [1, 2, 3]
    assert asm.add(4, b"STOP", entry[4]) is None and asm.stopped  # never released


@pytest.mark.parametrize("temperature", [0.0, 1.2])
async def test_each_token_gets_its_raw_logprob(worker: Any, temperature: float) -> None:
    request = GenerationRequest(
        PROMPT, max_tokens=24, temperature=temperature, seed=3, logprobs=5, reproducible=True
    )
    result = await run(worker, request)
    got = entries(result.chunks)
    assert len(got) == sum(c.token_count for c in result.chunks) >= 1
    for e in got:
        assert e.logprob <= 0 and len(e.top) == 5
        tops = [a.logprob for a in e.top]
        assert tops == sorted(tops, reverse=True)
        mine = [a.logprob for a in e.top if a.token == e.token]
        if mine:
            assert mine[0] == pytest.approx(e.logprob)
        if temperature == 0:
            assert e.top[0].token == e.token  # greedy picks the raw argmax
    # The same numbers as teacher-forcing those tokens through the scoring path.
    scored = await worker.score(ScoreRequest(request, [e.token for e in got], top_logprobs=5))
    for e, p in zip(got, scored.positions, strict=True):
        assert e.logprob == pytest.approx(p.logprob, abs=1e-3)
        assert [a.token for a in e.top] == [t for t, _ in p.top]


async def test_off_by_default(worker: Any) -> None:
    result = await run(worker, GenerationRequest(PROMPT, max_tokens=8, reproducible=True))
    assert all(c.logprobs == () for c in result.chunks)


async def test_kept_drafts_get_entries(tiny_gguf: Path) -> None:
    """A greedy, repetitive run speculates; every token, drafted or not, has its entry."""
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_threads=2, slots=2, max_queue=2, speculate=True
    ) as w:
        request = GenerationRequest("the capital of france is", max_tokens=120, logprobs=0)
        result = await run(w, request)
    assert result.done.accepted_draft_tokens > 0
    got = entries(result.chunks)
    assert len(got) == sum(c.token_count for c in result.chunks)
    assert all(e.logprob <= 0 and e.top == () for e in got)


# -- the prompt's own entries (echo) ----------------------------------------------------------


async def test_prompt_entries_equal_scoring_the_prompt(worker: Any, tiny_gguf: Path) -> None:
    """Each prompt token from the second on gets the entry scoring gives it after the tokens
    before it; the first has only its text."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    ids = vocab.tokenize(PROMPT.encode(), add_bos=True, special=True)
    assert len(ids) > 2 and vocab.tokenize(b"", add_bos=True, special=True) == ids[:1]
    request = GenerationRequest(PROMPT, max_tokens=4, logprobs=3, prompt_logprobs=True)
    result = await run(worker, request)
    entries_ = result.done.prompt_logprobs
    assert [e.token for e in entries_] == ids[1:]
    scored = await worker.score(ScoreRequest(GenerationRequest(""), ids[1:], top_logprobs=3))
    for e, p in zip(entries_, scored.positions, strict=True):
        assert e.logprob == pytest.approx(p.logprob, abs=1e-3) and e.logprob <= 0
        assert [a.token for a in e.top] == [t for t, _ in p.top]
    assert result.done.prompt_first == vocab.detokenize(ids[:1])
    assert entries(result.chunks)  # the generated tokens keep theirs


async def test_a_cached_prefix_is_scored_again(batch: BatchingWorker) -> None:
    request = GenerationRequest(PROMPT, max_tokens=3, logprobs=0, prompt_logprobs=True)
    first = await run(batch, GenerationRequest(PROMPT + " paris", max_tokens=3))
    control = await run(batch, GenerationRequest(PROMPT, max_tokens=3))
    assert control.done.cached_prompt_tokens > 0  # without echo the prefix is reused
    await run(batch, GenerationRequest(PROMPT + " paris", max_tokens=3))
    again = await run(batch, request)
    assert first.done.prompt_logprobs == ()
    assert again.done.cached_prompt_tokens == 0
    plain = await run(batch, attrs.evolve(request, reproducible=True))
    assert [e.token for e in again.done.prompt_logprobs] == [
        e.token for e in plain.done.prompt_logprobs
    ]
    for a, b in zip(again.done.prompt_logprobs, plain.done.prompt_logprobs, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


async def test_long_prompts_are_scored_in_bounded_chunks(batch: BatchingWorker) -> None:
    """A prompt over PROMPT_ROWS_PER_STEP positions takes several steps and gets every entry."""
    long = " ".join(["paris"] * 150)
    result = await run(
        batch, GenerationRequest(long, max_tokens=2, logprobs=0, prompt_logprobs=True)
    )
    assert len(result.done.prompt_logprobs) == result.done.prompt_tokens - 1 > PROMPT_ROWS_PER_STEP
    assert batch.load.decode_steps >= result.done.prompt_tokens // PROMPT_ROWS_PER_STEP


def test_prompt_logprobs_need_logprobs() -> None:
    with pytest.raises(ValueError, match="prompt_logprobs"):
        GenerationRequest(PROMPT, prompt_logprobs=True)


@pytest.mark.parametrize("temperature", [0.0, 1.2])
async def test_a_resumed_run_gives_the_entries_of_its_own_tokens(
    worker: Any, temperature: float
) -> None:
    """Failover: the replayed tokens' entries came with the first node's text; the resumed
    run's chunks carry those of the tokens after them, as the uninterrupted run's."""
    request = GenerationRequest(
        PROMPT, max_tokens=20, temperature=temperature, seed=5, logprobs=2, reproducible=True
    )
    whole = await run(worker, request)
    cut = whole.chunks[0].token_count + whole.chunks[1].token_count
    replayed = tuple(whole.ids[:cut])
    resumed = await run(worker, attrs.evolve(request, replay_tokens=replayed))
    later = entries(whole.chunks)[cut:]
    got = entries(resumed.chunks)
    assert [e.token for e in got] == [e.token for e in later]
    for a, b in zip(got, later, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
