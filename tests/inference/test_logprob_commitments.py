"""Logprob commitments (issue #16): the log-probabilities a serving node signs for its tokens (the
worker's own, from the logits it sampled each token from, batched with other requests) are what
an independent verifier's scoring of the same tokens gives, within the honest tolerance; made-up
ones are not, and `judge` says so."""

from __future__ import annotations

import random
from pathlib import Path

import attrs
import trio

from crypto.receipts import pack_logprobs, unpack_logprobs
from inference.batching import BatchingWorker
from inference.generation import GenerationRequest
from inference.scoring import ScoreRequest
from inference.verification import LOGPROB_TOLERANCE, judge
from inference.worker import ModelWorker
from tests.inference.test_batching import run_together

PROMPTS = ["the capital of france is", "once upon a time", "def add(a, b):", "1 2 3 4"]


async def test_committed_logprobs_match_an_independent_scoring(tiny_gguf: Path) -> None:
    samplers: list[dict[str, float]] = [
        {},
        {"temperature": 0.8, "seed": 3},
        {},
        {"temperature": 0.7, "seed": 9},
    ]
    asked = [
        GenerationRequest(p, max_tokens=24, ignore_eos=True, logprobs=0, **sampler)  # type: ignore[arg-type]
        for p, sampler in zip(PROMPTS, samplers, strict=True)
    ]
    with trio.fail_after(120):
        async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=4) as node:
            results = await run_together(node, asked)  # four requests in one batch
        async with ModelWorker(tiny_gguf, n_ctx=512, n_threads=1) as verifier:
            for request, result in zip(asked, results, strict=True):
                entries = [e.logprob for c in result.chunks for e in c.logprobs]
                assert len(entries) == len(result.ids) == 24  # ignore_eos: no stop string
                committed = unpack_logprobs(pack_logprobs(entries))
                plain = attrs.evolve(request, logprobs=-1)
                scored = await verifier.score(ScoreRequest(plain, result.ids, top_logprobs=0))
                deltas = [
                    abs(p.logprob - c)
                    for p, c in zip(scored.positions, committed, strict=True)
                    if c is not None
                ]
                # honest noise (batch shape, threads, prefill vs decode) plus the 1/1024 step
                assert max(deltas) < LOGPROB_TOLERANCE / 5, deltas
                sampled = request.temperature > 0
                stat = judge(scored.positions, sampled=sampled, committed=committed)
                assert stat.verdict == "consistent" and stat.n == 24, stat
                rng = random.Random(len(result.ids))
                lies = unpack_logprobs(pack_logprobs([-rng.uniform(0, 5) for _ in entries]))
                lied = judge(scored.positions, sampled=sampled, committed=lies)
                assert lied.verdict == "inconsistent", lied
