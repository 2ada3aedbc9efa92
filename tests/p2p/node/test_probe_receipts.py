"""Prompt probes through real nodes: the client's fresh draws reach the node, whose signed
receipt commits to one value per draw, the prompt's own log-probabilities (checked against the
echo of the same prompt); a drop-prefix cheat's values in the dropped part are made up; draws
out of bounds are refused with bad_request and the node goes on."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

from inference.batching import BatchingWorker
from inference.generation import GenerationDone, GenerationRequest
from inference.prompt_probes import DEFAULT_PROBES, DRAW_SPAN, MAX_PROBES, probe_positions
from p2p.client.failover import generate, with_probes
from p2p.client.network import AskError
from p2p.client.segments import Segment
from p2p.errors import ErrorCode
from p2p.node.cheats import DroppedPrefix
from tests.p2p.client.live_checks import REQUEST, live_network

TIMEOUT_S = 180
# The worker's noise (a probe row against the prefill's row: a few 1e-4 nats, rarely more than
# 1e-3 on the tiny model) plus the receipt's quantisation (1/1024 nats, rounded).
TOLERANCE = 0.05 + 0.5 / 1024
# Made-up values land this far from the truth at least (the tiny model's made-up probes were
# 0.12-0.35 nats off; random ones nats).
MADE_UP = 0.01
PROMPT = "The quick brown fox jumps over the lazy dog, and then the dog sleeps in the sun. " * 2


async def echo(model: Path, prompt: str) -> GenerationDone:
    """The prompt's own log-probabilities, from the prefill (OpenAI's echo)."""
    worker = BatchingWorker(model, n_ctx=512, slots=1, n_threads=1)
    await worker.start()
    try:
        request = GenerationRequest(prompt, max_tokens=1, prompt_logprobs=True, logprobs=0)
        async with worker.generate(request) as stream:
            async for item in stream:
                if isinstance(item, GenerationDone):
                    return item
    finally:
        await worker.aclose()
    raise AssertionError("no answer")


def honest_values(done: GenerationDone, draws: tuple[int, ...]) -> list[float]:
    return [done.prompt_logprobs[p].logprob for p in probe_positions(draws, done.prompt_tokens)]


def committed(segment: Segment) -> tuple[float, ...]:
    assert segment.problem == "" and segment.receipt is not None, segment.problem
    assert segment.receipt.verify()
    values = segment.receipt.receipt.probes()
    assert all(v is not None for v in values)
    return tuple(v for v in values if v is not None)


async def test_receipts_commit_to_the_prompt_probes(tmp_path: Path, tiny_gguf: Path) -> None:
    request = attrs.evolve(REQUEST, prompt=PROMPT, max_tokens=6)
    with trio.fail_after(TIMEOUT_S):
        truth = await echo(tiny_gguf, PROMPT)
        roles = [("honest", ""), ("dropper", "drop-prefix"), ("liar", "lying-logprobs")]
        async with live_network(tmp_path, tiny_gguf, roles) as net:
            (honest,) = await net.ask("honest", request)
            (again,) = await net.ask("honest", request)
            # draws the client chose: some in each half of the prompt
            spread = tuple(i * (DRAW_SPAN // DEFAULT_PROBES) for i in range(DEFAULT_PROBES))
            (dropper,) = await net.ask("dropper", attrs.evolve(request, probes=spread))
            (liar,) = await net.ask("liar", request)
            # draws out of bounds: bad_request, and the node serves on
            sha = net.nodes["honest"].models[0].sha256
            for bad in [(DRAW_SPAN,), (1,) * (MAX_PROBES + 1), (-1,)]:
                hostile = attrs.evolve(request, model=sha, probes=bad)
                with pytest.raises(AskError) as refused:
                    await generate(
                        net.client, sha, hostile, lambda _t: None, prefer=net.peer("honest")
                    )
                assert refused.value.code is ErrorCode.BAD_REQUEST
            (after,) = await net.ask("honest", request)

    # fresh draws per request, one committed value per draw, the prompt's own values
    assert len(honest.request.probes) == DEFAULT_PROBES
    assert honest.request.probes != again.request.probes
    assert honest.prompt_tokens == truth.prompt_tokens
    for segment in (honest, again, after):
        values = committed(segment)
        assert len(values) == DEFAULT_PROBES
        truths = honest_values(truth, segment.request.probes)
        assert all(abs(v - t) <= TOLERANCE for v, t in zip(values, truths, strict=True))

    # drop-prefix: in the dropped part, one made-up value (the mean of the others), not the truth
    made_up = committed(dropper)
    truths = honest_values(truth, dropper.request.probes)
    kept = DroppedPrefix(truth.prompt_tokens, dropper.prompt_tokens, dropper.request.probes)
    positions = kept.kept_positions()
    dropped = [(v, t) for v, t, q in zip(made_up, truths, positions, strict=True) if q is None]
    real = [v for v, q in zip(made_up, positions, strict=True) if q is not None]
    assert dropper.prompt_tokens < truth.prompt_tokens  # it computed less
    assert len(made_up) == DEFAULT_PROBES and dropped and real
    assert all(abs(v - sum(real) / len(real)) <= 1 / 1024 for v, _ in dropped)
    # a made-up value can land near the truth by chance; most do not
    assert 2 * sum(abs(v - t) > MADE_UP for v, t in dropped) > len(dropped)

    # lying-logprobs: random values, nowhere near the prompt's own
    lies = committed(liar)
    truths = honest_values(truth, liar.request.probes)
    assert len(lies) == DEFAULT_PROBES
    assert sum(abs(v - t) > 10 * MADE_UP for v, t in zip(lies, truths, strict=True)) >= 6


def test_the_client_draws_fresh_probes_once_per_request() -> None:
    """The client side alone: generate gives every request its own draws (kept when given)."""
    a, b = with_probes(REQUEST), with_probes(REQUEST)
    assert len(a.probes) == DEFAULT_PROBES and a.probes != b.probes
    assert all(0 <= d < DRAW_SPAN for d in a.probes)
    given = attrs.evolve(REQUEST, probes=(7, 8))
    assert with_probes(given).probes == (7, 8)
    assert with_probes(a) == a  # a failover replay keeps them
