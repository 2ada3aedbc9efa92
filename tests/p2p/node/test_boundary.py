"""Attack 3 of issue #14 over a real session to a node serving the tiny model: a value out of
the worker's bounds (the seed 2**32-1, a replay as long as max_tokens) is one `bad_request` for
that request, naming the field, while the session and its other requests go on."""

from __future__ import annotations

from pathlib import Path

import trio

from crypto.identity import Identity
from inference.generation import RANDOM_SEED
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.session.secure import connect
from tests.p2p.node.test_requests import serving


async def test_invalid_fields_are_refused_for_their_request_and_the_session_goes_on(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    async with serving(tiny_gguf, tmp_path) as (node, address):
        conn = await connect(address, Identity.generate(), node.identity.peer_id)
        finals: dict[int, wire.Done | wire.Error] = {}
        with trio.fail_after(60):
            await conn.send(wire.Generate(1, "tiny-llama", "once upon a time", 48))
            first = await conn.receive()
            assert isinstance(first, wire.Token) and first.id == 1  # request 1 is being served
            # encode() checks nothing: these reach the node as a hostile client would send them
            await conn.send(wire.Generate(2, "tiny-llama", "hi", 8, seed=RANDOM_SEED))
            await conn.send(wire.Generate(3, "tiny-llama", "hi", 8, replay_tokens=(5,) * 8))
            await conn.send(wire.Generate(4, "tiny-llama", "hello", 8, seed=7))
            while len(finals) < 4:
                msg = await conn.receive()
                assert msg is not None, "the node closed the session"
                if isinstance(msg, wire.Done | wire.Error):
                    finals[msg.id] = msg
        await conn.aclose()
    for rid, field in ((2, "seed"), (3, "replay_tokens")):
        error = finals[rid]
        assert isinstance(error, wire.Error) and error.code is ErrorCode.BAD_REQUEST
        assert field in error.message, error.message
    assert isinstance(finals[1], wire.Done) and finals[1].completion_tokens == 48
    assert isinstance(finals[4], wire.Done) and finals[4].completion_tokens == 8
