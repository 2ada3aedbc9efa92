"""The per-request sampler chain (inference/llama_lowlevel.py `Sampler`) on the tiny GGUF: each
parameter has the effect it names, in BatchingWorker and in ModelWorker, and a replayed request
with penalties continues exactly as the uninterrupted one."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from inference.batching import BatchingWorker
from inference.generation import GenerationError, GenerationRequest
from tests.inference.test_batching import check_replay, exact_replays, run

PROMPT = "the capital of france is"
# Sampled runs: a temperature high enough that the random tiny model's choices spread out.
SAMPLED = GenerationRequest(PROMPT, max_tokens=40, temperature=1.5, seed=11, reproducible=True)


# `batch` and `worker` (each test on both workers) are tests/inference/conftest.py's.


def greedy(**fields: Any) -> GenerationRequest:
    return GenerationRequest(PROMPT, max_tokens=40, reproducible=True, **fields)


def repeats(ids: list[int]) -> int:
    """Tokens that already occurred earlier in the output."""
    return len(ids) - len(set(ids))


async def test_logit_bias_ban_removes_a_token_greedy_output_had(worker: Any) -> None:
    plain = await run(worker, greedy())
    banned = max(set(plain.ids), key=plain.ids.count)
    biased = await run(worker, greedy(logit_bias={banned: -100}))
    assert banned not in biased.ids
    assert len(biased.ids) == len(plain.ids)  # still generated to max_tokens


async def test_logit_bias_favours_a_token(worker: Any) -> None:
    plain = await run(worker, greedy())
    favoured = next(t for t in range(300, 400) if t not in plain.ids)
    biased = await run(worker, greedy(logit_bias={favoured: 100}))
    assert set(biased.ids) == {favoured}


async def test_top_k_1_equals_greedy(worker: Any) -> None:
    plain = await run(worker, greedy())
    top1 = await run(worker, attrs.evolve(SAMPLED, top_k=1))
    sampled = await run(worker, SAMPLED)
    assert top1.ids == plain.ids
    assert sampled.ids != plain.ids  # the seed alone would not have given greedy output


@pytest.mark.parametrize(
    "penalty",
    [{"repeat_penalty": 1.5}, {"frequency_penalty": 1.5}, {"presence_penalty": 1.5}],
    ids=lambda p: next(iter(p)),
)
async def test_penalties_change_a_repetitive_greedy_continuation(
    worker: Any, penalty: dict[str, Any]
) -> None:
    plain = await run(worker, greedy())
    assert repeats(plain.ids) > 10  # the random model loops
    penalized = await run(worker, greedy(**penalty))
    assert penalized.ids != plain.ids
    assert repeats(penalized.ids) < repeats(plain.ids)


async def test_penalty_window_of_0_turns_penalties_off(batch: BatchingWorker) -> None:
    plain = await run(batch, greedy())
    off = await run(batch, greedy(repeat_penalty=1.5, penalty_last_n=0))
    assert off.ids == plain.ids


# The random model's 40 likeliest tokens are nearly equally likely, so only a min_p close to 1
# removes any of them.
@pytest.mark.parametrize("sampler", [{"min_p": 0.9}, {"typical_p": 0.3}], ids=str)
async def test_min_p_and_typical_p_change_a_sampled_run(
    worker: Any, sampler: dict[str, Any]
) -> None:
    base = await run(worker, attrs.evolve(SAMPLED, min_p=0.0))
    again = await run(worker, attrs.evolve(SAMPLED, min_p=0.0))
    changed = await run(worker, attrs.evolve(SAMPLED, **{"min_p": 0.0, **sampler}))
    assert again.ids == base.ids  # same seed, same draws
    assert changed.ids != base.ids


async def test_ignore_eos_generates_past_the_end_to_max_tokens(worker: Any) -> None:
    eos = 2  # the tiny vocabulary's </s>
    ends = await run(worker, greedy(logit_bias={eos: 100}))
    assert ends.done.finish_reason == "stop" and ends.done.completion_tokens == 0
    past = await run(worker, greedy(logit_bias={eos: 100}, ignore_eos=True))
    assert past.done.finish_reason == "length" and past.done.completion_tokens == 40
    assert eos not in past.ids


async def test_a_bias_outside_the_vocabulary_is_refused(worker: Any) -> None:
    with pytest.raises(GenerationError, match="logit_bias token 100000"):
        await run(worker, greedy(logit_bias={100_000: 1.0}))


async def test_replay_with_penalties_continues_exactly(batch: BatchingWorker) -> None:
    exact = not exact_replays(batch)
    sampled = attrs.evolve(
        SAMPLED,
        repeat_penalty=1.3,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        reproducible=exact,
    )
    await check_replay(batch, sampled, 7)
    penalized_greedy = attrs.evolve(
        greedy(frequency_penalty=1.0, logit_bias={5: -100}), reproducible=exact
    )
    await check_replay(batch, penalized_greedy, 9)


async def test_a_biased_greedy_request_still_drafts_only_chain_picks(
    batch: BatchingWorker,
) -> None:
    """Speculation keeps a draft token only when the request's own chain picks it: a banned
    token never comes back through a draft, though the bare argmax would have drafted it."""
    plain = await run(batch, greedy())
    banned = max(set(plain.ids), key=plain.ids.count)
    request = GenerationRequest(PROMPT, max_tokens=60, logit_bias={banned: -100})
    drafting = await run(batch, request)
    solo = await run(batch, attrs.evolve(request, reproducible=True))
    assert banned not in drafting.ids and banned not in solo.ids
