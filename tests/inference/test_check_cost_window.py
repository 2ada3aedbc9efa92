"""tools/bench_verification.py --window (tools/_window_checks.py): an honest answer of the tiny
model, scored whole and then as window checks whose feed stops after the last checked position,
gives the same verdict both ways, close numbers at every checked position, and a summary per
mode."""

from __future__ import annotations

from pathlib import Path

import trio

from inference.batching import BatchingWorker
from inference.generation import GenerationDone, GenerationRequest, TokenChunk
from inference.scoring import ScoreRequest
from p2p.client.spot_check import CHECK_POSITIONS
from tools import _window_checks
from tools._verification_stats import Claim

REQUEST = GenerationRequest("the capital of france is", max_tokens=60, ignore_eos=True, logprobs=0)


async def test_window_checks_judge_an_honest_answer_as_the_whole_feed(tiny_gguf: Path) -> None:
    with trio.fail_after(120):
        async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=1) as worker:
            ids: list[int] = []
            committed: list[float | None] = []
            async with worker.generate(REQUEST) as stream:
                async for item in stream:
                    ids += item.token_ids
                    if isinstance(item, TokenChunk):
                        committed += [e.logprob for e in item.logprobs]
                    elif isinstance(item, GenerationDone):
                        committed += [None] * len(item.token_ids)
            assert len(ids) == 60 > CHECK_POSITIONS
            claim = Claim("honest-t2", "prose", REQUEST, tuple(ids), 1.0, tuple(committed))
            whole = await worker.score(ScoreRequest(REQUEST, claim.tokens, top_logprobs=0))
            claim.margins = [p.choice_margin for p in whole.positions]
            claim.logprobs = [p.logprob for p in whole.positions]
            report = await _window_checks.window_checks(worker, [claim], draws=4)
    summary = report["honest-t2"]
    assert summary["checks"] == 4 and 0 < summary["fed_fraction_median"] <= 1
    assert summary["max_logprob_gap"] < 0.03  # a shorter prefill: ~1e-5 on the CPU
    for feed in ("window", "whole"):
        assert summary[feed]["verdicts"]["consistent"] == 4
    _window_checks.print_window_checks(report)  # prints without failing
