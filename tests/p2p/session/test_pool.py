"""MultiplexedSession as the trio loop around the client request machine: no socket, no node."""

from __future__ import annotations

import trio

from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.session.local import local_pair
from p2p.session.pool import MultiplexedSession

TIMEOUT_S = 10


async def test_an_invalid_answer_fails_its_request_only_and_is_cancelled_on_the_node() -> None:
    client_side, node_side = local_pair("peer")
    session = MultiplexedSession(client_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        with trio.fail_after(TIMEOUT_S):
            async with session.request(wire.Generate(0, "m", "a")) as (broken, inbox_a), \
                    session.request(wire.Generate(0, "m", "b")) as (fine, inbox_b):
                assert broken != fine
                for _ in range(2):
                    assert isinstance(await node_side.receive(), wire.Generate)
                bad = wire.Malformed(broken, "token", "text", "text must be a string")
                await node_side._send.send(bad)  # type: ignore[arg-type]
                failure = await inbox_a.receive()
                assert isinstance(failure, wire.Error) and failure.code is ErrorCode.INTERNAL
                assert await node_side.receive() == wire.Cancel(broken)
                await node_side.send(wire.Token(999, "nobody's"))  # ignored, not a crash
                await node_side.send(wire.Done(fine, "stop", 1, 1, 0.0, 1.0))
                assert isinstance(await inbox_b.receive(), wire.Done)
            assert session.requests.ignored == 1
            assert not session.closed
        nursery.cancel_scope.cancel()
