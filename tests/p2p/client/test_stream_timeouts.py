"""The client's token timeouts and the session's idle close, on trio's MockClock.

Both keep one cancel scope for many messages and move its deadline only when it fires, so these
check that the timeouts still count from the latest message, not from when the scope began.
"""

from __future__ import annotations

import trio
import trio.testing

from p2p.client.token_stream import (
    FIRST_TOKEN_TIMEOUT_S,
    TOKEN_TIMEOUT_S,
    Progress,
    receive_answer,
)
from p2p.protocol import wire
from p2p.session.local import LocalConnection, local_pair
from p2p.session.pool import MultiplexedSession

REQUEST = wire.Generate(id=0, model="m", prompt="p", max_tokens=100)


async def _node(conn: LocalConnection, gaps: list[float], done: bool) -> None:
    """Answer one request: a token after each gap (seconds), then Done or silence."""
    msg = await conn.receive()
    assert isinstance(msg, wire.Generate)
    for i, gap in enumerate(gaps):
        await trio.sleep(gap)
        await conn.send(wire.Token(msg.id, f"t{i}", (i,)))
    if done:
        await conn.send(wire.Done(msg.id, "length", 1, len(gaps), 0.1, 10.0))
    else:
        await trio.sleep_forever()


async def _ask(gaps: list[float], *, done: bool) -> tuple[wire.Done | str, float, Progress]:
    client_side, node_side = local_pair("peer")
    session = MultiplexedSession(client_side)
    progress = Progress()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        nursery.start_soon(_node, node_side, gaps, done)
        outcome = await receive_answer(session, REQUEST, progress, lambda _text: None)
        ended = trio.current_time()
        nursery.cancel_scope.cancel()
    return outcome, ended, progress


async def test_a_stall_is_caught_one_timeout_after_the_latest_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    outcome, ended, progress = await _ask([5, 10, 10], done=False)
    assert outcome == "node stalled"
    assert progress.chunks == 3
    assert ended - start == 25 + TOKEN_TIMEOUT_S  # not 120 s from the start, not earlier


async def test_a_silent_node_is_given_the_first_token_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    outcome, ended, progress = await _ask([], done=False)
    assert outcome == "node stalled"
    assert progress.chunks == 0
    assert ended - start == FIRST_TOKEN_TIMEOUT_S


async def test_slow_steady_tokens_outlast_many_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a first token after 100 s (within the first-token timeout), then one every 0.9 timeouts
    gaps = [100.0] + [TOKEN_TIMEOUT_S * 0.9] * 12
    outcome, _ended, progress = await _ask(gaps, done=True)
    assert isinstance(outcome, wire.Done)
    assert progress.chunks == 13
    assert progress.token_ids == list(range(13))


async def test_an_idle_session_closes_once_nothing_came_for_the_idle_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_side, node_side = local_pair("peer")
    session = MultiplexedSession(client_side)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def chatter() -> None:
            for _ in range(5):  # messages for no request, 40 s apart: each resets the idle time
                await trio.sleep(40)
                await node_side.send(wire.Pong(99))

        nursery.start_soon(chatter)
        await session.run(idle_close_s=60)
    assert session.closed
    assert trio.current_time() - start == 5 * 40 + 60


async def test_a_session_with_an_open_request_is_not_closed_for_idling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_side, node_side = local_pair("peer")
    session = MultiplexedSession(client_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run, 60)
        async with session.request(REQUEST) as (_rid, inbox):
            await trio.sleep(500)  # the node is silent far longer than the idle time
            assert not session.closed
            generate = await node_side.receive()
            assert isinstance(generate, wire.Generate)
            await node_side.send(wire.Token(generate.id, "late", (1,)))
            msg = await inbox.receive()
            assert isinstance(msg, wire.Token) and msg.text == "late"
        nursery.cancel_scope.cancel()
