"""The trio side of SessionTable over real TCP sessions on loopback: a silent session is closed
at its first-request deadline (pings do not count), a served one at its idle deadline, and a
newcomer from another network evicts the idlest session when the table is full."""

from __future__ import annotations

import trio

from crypto.identity import Identity
from p2p.node.connection import Reply, serve_connection
from p2p.protocol import wire
from p2p.protocol.session_table import SessionTable, SessionTableLimits
from p2p.session.secure import SecureConnection, connect, serve_sessions

SERVER = Identity.generate()
FIRST_REQUEST_S = 0.5
IDLE_S = 1.5


async def answer(msg: wire.Generate, reply: Reply) -> None:
    await reply.send(wire.Done(msg.id, "length", 1, 1, 0.0, 1.0))


async def handler(conn: SecureConnection) -> None:
    await serve_connection(conn, answer)


async def start(nursery: trio.Nursery, table: SessionTable) -> str:
    listeners = await nursery.start(
        lambda task_status: serve_sessions(
            SERVER, "127.0.0.1", 0, handler, sessions=table, task_status=task_status
        )
    )
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def closed_after(conn: SecureConnection) -> float:
    """Seconds until the node closes *conn* cleanly, answering nothing."""
    started = trio.current_time()
    assert await conn.receive() is None
    return trio.current_time() - started


async def test_silent_and_idle_sessions_are_closed_at_their_deadlines() -> None:
    limits = SessionTableLimits(first_request_s=FIRST_REQUEST_S, idle_s=IDLE_S)
    table = SessionTable(limits)
    async with trio.open_nursery() as nursery:
        address = await start(nursery, table)
        with trio.fail_after(10):
            silent = await connect(address, Identity.generate(), SERVER.peer_id)
            assert await closed_after(silent) < FIRST_REQUEST_S + 3.0  # slack for a loaded machine
            pinger = await connect(address, Identity.generate(), SERVER.peer_id)
            await pinger.send(wire.Ping(1))
            assert await pinger.receive() == wire.Pong(1)
            assert await pinger.receive() is None  # a ping is not a request
            served = await connect(address, Identity.generate(), SERVER.peer_id)
            await served.send(wire.Generate(1, "m", "p"))
            assert isinstance(await served.receive(), wire.Done)
            idle = await closed_after(served)
            assert IDLE_S - 0.2 < idle < IDLE_S + 3.0  # not the first-request deadline
        assert len(table) == 0
        nursery.cancel_scope.cancel()


async def test_a_full_table_evicts_the_idlest_for_a_newcomer_from_another_network() -> None:
    table = SessionTable(SessionTableLimits(max_sessions=4, max_per_source=4))
    async with trio.open_nursery() as nursery:
        address = await start(nursery, table)
        with trio.fail_after(10):
            crowd = [
                await connect(address, Identity.generate(), SERVER.peer_id, local_address=src)
                for src in ("127.40.0.1", "127.40.0.1", "127.40.0.2", "127.40.0.3")
            ]
            newcomer = await connect(
                address, Identity.generate(), SERVER.peer_id, local_address="127.41.0.1"
            )
            assert await crowd[0].receive() is None  # the idlest of the crowded /24 went
            await newcomer.send(wire.Generate(1, "m", "p"))
            assert isinstance(await newcomer.receive(), wire.Done)
        assert table.evicted == 1 and len(table) == 4
        for conn in (*crowd, newcomer):
            await conn.aclose()
        nursery.cancel_scope.cancel()
