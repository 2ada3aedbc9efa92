"""The check statistic (inference/verification.py `judge`) on real runs: an honest run scored by
another worker of the same model is consistent, whatever its threads, slots and speculation; a
run of another model, random tokens and a dropped prompt prefix are inconsistent; too few
positions are inconclusive."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
import trio

from inference.batching import BatchingWorker
from inference.generation import GenerationRequest
from inference.scoring import PositionScore, ScoreRequest
from inference.verification import (
    HONEST_RATE_GREEDY,
    HONEST_RATE_SAMPLED,
    LOGPROB_TOLERANCE,
    MIN_POSITIONS,
    MISMATCH_MARGIN,
    CheckStat,
    judge,
    mismatch_threshold,
)
from tests.inference.test_batching import run

PROMPTS = ("the capital of france is", "hello world, the model", "once there was a city")
SETTINGS = (
    {},  # greedy
    {"temperature": 0.8, "seed": 3},
    {"temperature": 0.7, "seed": 4, "top_p": 0.9, "repeat_penalty": 1.2},
)
# The tiny random model's logits span ~2 (a trained model's 20 or more): its mismatch margin
# scales down with them (inference/verification.py MISMATCH_MARGIN).
TINY_MARGIN = 0.1


def position(choice_margin: float) -> PositionScore:
    return PositionScore(
        token=1, logprob=-1.0, rank=0, margin=0.0, choice_margin=choice_margin, top=()
    )


def test_verdicts_from_choice_margins() -> None:
    n = max(MIN_POSITIONS, 64)
    assert judge([position(0.0)] * n, sampled=True).verdict == "consistent"
    assert judge([position(math.inf)] * n, sampled=False).verdict == "inconsistent"
    assert judge([position(math.inf)] * (MIN_POSITIONS - 1), sampled=True).verdict == (
        "inconclusive"
    )
    # Noise-sized margins and a rare filtered-out token (a filter's boundary moved) pass.
    noisy = [position(0.0)] * (n - 3) + [position(0.05), position(0.2), position(math.inf)]
    stat = judge(noisy, sampled=True)
    assert stat.verdict == "consistent" and stat.n == n
    # A run without its seed cannot be judged.
    nan = judge([position(math.nan)] * n, sampled=True)
    assert attrs.evolve(nan, threshold=0) == CheckStat(0, 0, 0.0, "inconclusive")


def test_verdicts_from_logprob_commitments() -> None:
    n = 64
    honest = [position(0.0)] * n  # the verifier's logprob of each token is -1.0
    # Honest-sized noise (|delta| 0.05 at p = 0.37: under the honest p90) passes; the same
    # half a nat off at every position is no numerical noise (inference/commitment_stat.py).
    near = [-1.0 + 0.05 * (-1) ** i for i in range(n)]
    stat = judge(honest, sampled=False, committed=near)
    assert stat.verdict == "consistent" and stat.committed_n == n and stat.committed_score == 0
    half = [-1.0 + LOGPROB_TOLERANCE / 2] * n
    stat = judge(honest, sampled=False, committed=half)
    assert stat.verdict == "inconsistent" and stat.mismatches == 0
    assert stat.committed_score >= stat.committed_threshold
    # The tokens are the model's choice, but the node's own logprobs were not these (another
    # prompt, a coarser quantization, or made up): inconsistent on the commitments alone.
    far = [-1.0 - 2 * LOGPROB_TOLERANCE] * n
    stat = judge(honest, sampled=False, committed=far)
    assert stat.verdict == "inconsistent" and stat.mismatches == n
    # Positions without a commitment are judged on their margins only (as nodes that commit
    # nothing are); a sampled run without its seed is judged on its commitments.
    assert judge(honest, sampled=False, committed=[None] * n).verdict == "consistent"
    unseeded = [position(math.nan)] * n
    assert judge(unseeded, sampled=True, committed=far).verdict == "inconsistent"
    assert judge(unseeded, sampled=True, committed=near).verdict == "consistent"
    # A verifier logprob below the commitments' floor (-32 nats) compares as the floor.
    deep = [attrs.evolve(position(0.0), logprob=-50.0)] * n
    assert judge(deep, sampled=False, committed=[-32.0] * n).verdict == "consistent"


def test_the_threshold_is_a_binomial_tail() -> None:
    # 96 positions: 7 mismatches greedy (honest rate 0.5 %), 9 sampled (1 %), at ALPHA 1e-6.
    assert mismatch_threshold(96, HONEST_RATE_GREEDY) == 7
    assert mismatch_threshold(96, HONEST_RATE_SAMPLED) == 9
    assert mismatch_threshold(4096, HONEST_RATE_SAMPLED) > 41  # above the mean, not at it
    stat = judge([position(math.inf)] * 9 + [position(0.0)] * 87, sampled=True)
    assert (stat.mismatches, stat.threshold, stat.verdict) == (9, 9, "inconsistent")
    stat = judge([position(math.inf)] * 8 + [position(0.0)] * 88, sampled=True)
    assert stat.verdict == "consistent" and stat.score == pytest.approx(8 / 96)


@pytest.fixture(scope="module")
def tiny_other(
    tmp_path_factory: pytest.TempPathFactory, make_tiny_gguf: Callable[..., Path]
) -> Path:
    """Another random-weight tiny model, the same vocabulary: a node serving it cheats."""
    return make_tiny_gguf(tmp_path_factory.mktemp("other") / "other.gguf", seed=1)


@pytest.fixture
async def verifier(gpu_layers: int, tiny_gguf: Path) -> AsyncIterator[BatchingWorker]:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=1, slots=1, speculate=False,
        prefix_cache=False,
    ) as worker:  # fmt: skip
        yield worker


async def claims(
    worker: BatchingWorker, serve: Callable[[GenerationRequest], GenerationRequest] = lambda r: r
) -> list[tuple[GenerationRequest, list[int]]]:
    """Each prompt in each setting, as the node claims it: (request asked, tokens returned)."""
    out = []
    for prompt in PROMPTS:
        for fields in SETTINGS:
            request = GenerationRequest(prompt, max_tokens=48, **fields)  # type: ignore[arg-type]
            out.append((request, (await run(worker, serve(request))).ids))
    return out


async def verdicts(
    verifier: BatchingWorker,
    claimed: list[tuple[GenerationRequest, list[int]]],
    margin: float = TINY_MARGIN,
) -> list[str]:
    out = []
    for request, tokens in claimed:
        result = await verifier.score(ScoreRequest(request, tokens, top_logprobs=0))
        stat = judge(result.positions, sampled=request.temperature > 0, mismatch_margin=margin)
        out.append(stat.verdict)
    return out


async def test_honest_batched_runs_are_consistent(
    verifier: BatchingWorker, gpu_layers: int, tiny_gguf: Path
) -> None:
    async with BatchingWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, slots=4
    ) as node:
        with trio.fail_after(120):
            claimed = await claims(node)
            assert await verdicts(verifier, claimed) == ["consistent"] * len(claimed)


async def test_another_model_is_inconsistent(
    verifier: BatchingWorker, gpu_layers: int, tiny_other: Path
) -> None:
    async with BatchingWorker(tiny_other, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2) as node:
        with trio.fail_after(120):
            claimed = await claims(node)
            assert await verdicts(verifier, claimed) == ["inconsistent"] * len(claimed)


async def test_random_tokens_and_a_dropped_prefix_are_inconsistent(
    verifier: BatchingWorker, gpu_layers: int, tiny_gguf: Path
) -> None:
    def random_tokens(r: GenerationRequest) -> GenerationRequest:
        seed = (r.seed or 0) + 1000  # a cheat's own noise, not the request's
        return attrs.evolve(r, temperature=10.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)

    def dropped_prefix(r: GenerationRequest) -> GenerationRequest:
        return attrs.evolve(r, prompt=r.prompt[len(r.prompt) // 2 :])

    async with BatchingWorker(tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2) as node:
        with trio.fail_after(120):
            for cheat in (random_tokens, dropped_prefix):
                claimed = await claims(node, cheat)
                assert await verdicts(verifier, claimed) == ["inconsistent"] * len(claimed)


async def test_default_model_honest_and_cheating(
    gpu_layers: int, default_model: Path, tiny_gguf: Path
) -> None:
    """The real model: an honest batched run with speculation is consistent; the tiny model's
    tokens and random tokens, claimed as its output, are not."""
    prompts = ("def add(a, b):\n", "The history of the printing press")
    requests = [
        GenerationRequest(p, max_tokens=40, **f)  # type: ignore[arg-type]
        for p in prompts
        for f in ({}, {"temperature": 0.8, "seed": 9})
    ]
    options = {"n_ctx": 512, "n_gpu_layers": gpu_layers, "prefix_cache": False}
    async with (
        BatchingWorker(default_model, n_threads=1, slots=1, speculate=False, **options) as check,
        BatchingWorker(default_model, n_threads=2, slots=2, **options) as honest,
        BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2) as tiny,
    ):
        with trio.fail_after(300):
            for node, want in ((honest, "consistent"), (tiny, "inconsistent")):
                claimed = [(r, (await run(node, r)).ids) for r in requests]
                assert await verdicts(check, claimed, MISMATCH_MARGIN) == [want] * len(claimed)
            noise = attrs.evolve(requests[1], temperature=10.0, top_k=0, min_p=0.0)
            claimed = [(requests[1], (await run(honest, noise)).ids)]
            assert await verdicts(check, claimed, MISMATCH_MARGIN) == ["inconsistent"]
