"""A node serving `Score` requests: the answer matches the request, hostile ones get a code and
the node goes on, and they go through the same admission as generation."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from p2p.client.network import lookup_key
from p2p.client.ranking import rank_providers
from p2p.client.spot_check import score_on
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.protocol.score_wire import Scores
from tests.p2p.client.live_checks import REQUEST, live_network

TIMEOUT_S = 120


async def test_scores_hostile_scores_and_the_node_goes_on(tmp_path: Path, tiny_gguf: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, tiny_gguf, [("node", "")]) as net:
            sha = net.nodes["node"].models[0].sha256
            records, _ = await net.client.find_records(lookup_key(sha))
            (provider,) = rank_providers(net.client.ranker, records, sha)
            request = attrs.evolve(REQUEST, model=sha)
            good = wire.Score(0, request, (5, 6, 7, 8), 3)
            answer = await score_on(net.client, provider, good)
            assert isinstance(answer, Scores), answer
            assert answer.token_ids == (5, 6, 7, 8) and answer.prompt_tokens > 0
            assert all(len(t) == 3 for t in answer.top_ids)
            assert all(lp <= 0 for lp in answer.logprobs)
            for hostile, code in [
                (wire.Score(0, request, (10**6,), 0), ErrorCode.BAD_REQUEST),  # past the vocab
                (wire.Score(0, attrs.evolve(request, model="nothing"), (5,), 0), None),
                (wire.Score(0, attrs.evolve(request, prompt="x" * 5000), (5,), 0), None),
            ]:
                refused = await score_on(net.client, provider, hostile)
                assert isinstance(refused, str), refused
                if code is not None:
                    assert code.value in refused
            again = await score_on(net.client, provider, good)
            assert isinstance(again, Scores) and again.logprobs == answer.logprobs
