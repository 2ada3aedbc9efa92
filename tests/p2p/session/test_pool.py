"""MultiplexedSession as the trio loop around the client request machine (no socket, no node),
and dialling: the staggered race over a node's addresses, on MockClock and against tarpit
listeners on 127.41.0.x (issue #14, attack 4)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing

from crypto.identity import Identity
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.session.local import Connection, local_pair
from p2p.session.pool import DIAL_DEADLINE_S, MultiplexedSession, SessionPool, staggered_race
from p2p.session.secure import SessionError, serve_sessions

TIMEOUT_S = 10


async def test_an_invalid_answer_fails_its_request_only_and_is_cancelled_on_the_node() -> None:
    client_side, node_side = local_pair("peer")
    session = MultiplexedSession(client_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        with trio.fail_after(TIMEOUT_S):
            async with (
                session.request(wire.Generate(0, "m", "a")) as (broken, inbox_a),
                session.request(wire.Generate(0, "m", "b")) as (fine, inbox_b),
            ):
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


# --- dialling: the staggered race (RFC 8305's shape), on trio's MockClock ---


def _attempt(
    log: list[tuple[str, float]], name: str, after_s: float, *, fails: bool = False
) -> Callable[[], Awaitable[str]]:
    async def run() -> str:
        log.append((name, trio.current_time()))
        await trio.sleep(after_s)
        if fails:
            raise SessionError(f"{name} refused")
        return name

    return run


async def test_race_staggers_starts_and_starts_the_next_at_once_after_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, float]] = []
    discarded: list[str] = []

    async def discard(value: str) -> None:
        discarded.append(value)

    t0 = trio.current_time()
    attempts = [
        _attempt(log, "tarpit", 100),
        _attempt(log, "refused", 0.05, fails=True),
        _attempt(log, "fine", 0.1),
        _attempt(log, "never", 0.0),
    ]
    race = await staggered_race(attempts, 0.25, 3.0, discard)
    assert [(n, round(t - t0, 3)) for n, t in log] == [
        ("tarpit", 0.0),
        ("refused", 0.25),
        ("fine", 0.3),  # the failure started it at once, not 0.25 s later
    ]
    assert (race.winner, race.value) == (2, "fine")
    assert trio.current_time() - t0 == pytest.approx(0.4)
    assert set(race.failures) == {1} and race.unfinished == {0: pytest.approx(0.4)}
    assert not race.timed_out and discarded == []


async def test_race_ends_at_its_deadline_when_nobody_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, float]] = []
    t0 = trio.current_time()
    attempts = [_attempt(log, f"tarpit{i}", 1000) for i in range(8)]
    race = await staggered_race(attempts, 0.25, 3.0, lambda _v: trio.sleep(0))
    assert trio.current_time() - t0 == pytest.approx(3.0)
    assert race.timed_out and race.winner is None and len(race.unfinished) == 8


async def test_a_result_that_arrives_after_the_winner_is_discarded() -> None:
    discarded: list[str] = []

    async def discard(value: str) -> None:
        discarded.append(value)

    async def instant(name: str) -> str:
        return name  # no checkpoint: the second one returns before its cancellation lands

    async def second_wins_late() -> str:
        await trio.sleep(0)
        return "late"

    with trio.fail_after(TIMEOUT_S):
        race = await staggered_race([second_wins_late, partial(instant, "first")], 0, 3.0, discard)
    assert race.value in ("first", "late")
    assert len(discarded) <= 1 and race.value not in discarded


# --- dialling a real node: its addresses raced, the whole dial bounded ---

HONEST_LAST = 7  # tarpit addresses listed before the one that answers


async def _hold(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


async def _tarpits(nursery: trio.Nursery, n: int) -> list[str]:
    """*n* addresses on 127.41.0.<j> that accept TCP and never answer."""
    listeners: list[trio.SocketListener] = []
    for j in range(1, n + 1):
        listeners += await trio.open_tcp_listeners(0, host=f"127.41.0.{j}")
    nursery.start_soon(trio.serve_listeners, _hold, listeners)
    return [f"127.41.0.{j}:{lis.socket.getsockname()[1]}" for j, lis in enumerate(listeners, 1)]


async def _serve_quietly(conn: Connection) -> None:
    while await conn.receive() is not None:
        pass


async def test_a_node_is_reached_at_its_last_address_behind_seven_tarpits() -> None:
    server = Identity.generate()
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_sessions, server, "127.0.0.1", 0, _serve_quietly)
            honest = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            addresses = [*await _tarpits(nursery, HONEST_LAST), honest]
            pool = SessionPool(Identity.generate(), nursery)
            started = trio.current_time()
            session = await pool.get(server.peer_id, addresses)
            took = trio.current_time() - started
            assert session.peer_id == server.peer_id and pool.handshakes == 1
            # Before: one address after another, 10 s handshake timeout each (70 s). Now the
            # 8th address starts 7 x ADDRESS_STAGGER_S in; the bound is the dial's 3 s.
            assert took < DIAL_DEADLINE_S
            nursery.cancel_scope.cancel()


async def test_a_node_that_never_answers_costs_one_dial_deadline() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            addresses = await _tarpits(nursery, 8)
            pool = SessionPool(Identity.generate(), nursery)
            started = trio.current_time()
            with pytest.raises(SessionError, match=r"no handshake .* within 3 s"):
                await pool.get(Identity.generate().peer_id, addresses)
            took = trio.current_time() - started
            assert DIAL_DEADLINE_S <= took < DIAL_DEADLINE_S + 1  # not 8 x (5 s + 10 s)
            assert pool.handshakes == 0
            nursery.cancel_scope.cancel()
