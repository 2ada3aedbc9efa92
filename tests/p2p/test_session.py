"""Real TCP sessions on loopback: identity pinning, hostile bytes, message exchange."""

from __future__ import annotations

import pytest
import trio

from crypto.identity import Identity
from p2p import wire
from p2p.session import SecureConnection, SessionError, connect, serve_sessions


async def echo_handler(conn: SecureConnection) -> None:
    while (msg := await conn.receive()) is not None:
        if isinstance(msg, wire.Ping):
            await conn.send(wire.Pong(msg.id))


async def start_server(nursery: trio.Nursery, identity: Identity) -> str:
    listeners = await nursery.start(serve_sessions, identity, "127.0.0.1", 0, echo_handler)
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_ping_over_an_authenticated_session() -> None:
    server = Identity.generate()
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server)
        conn = await connect(address, Identity.generate(), server.peer_id)
        assert conn.remote_peer_id == server.peer_id
        for i in range(3):
            await conn.send(wire.Ping(i))
            assert await conn.receive() == wire.Pong(i)
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_initiator_refuses_a_responder_with_another_identity() -> None:
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, Identity.generate())
        with pytest.raises(SessionError, match="handshake"):
            await connect(address, Identity.generate(), Identity.generate().peer_id)
        nursery.cancel_scope.cancel()


async def test_garbage_and_silent_peers_do_not_stop_the_server() -> None:
    server = Identity.generate()
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server)
        host, _, port = address.rpartition(":")
        silent = await trio.open_tcp_stream(host, int(port))  # opens and says nothing
        for junk in (b"\x00\x00", b"\xff\xff" + b"A" * 100, b"\x00\x20" + b"\x01" * 32):
            s = await trio.open_tcp_stream(host, int(port))
            await s.send_all(junk)
            await s.send_eof()
            # the server hangs up on garbage instead of waiting
            with trio.fail_after(5):
                while await s.receive_some(4096):
                    pass
            await s.aclose()
        conn = await connect(address, Identity.generate(), server.peer_id)
        await conn.send(wire.Ping(7))
        assert await conn.receive() == wire.Pong(7)
        await conn.aclose()
        await silent.aclose()
        nursery.cancel_scope.cancel()
