"""Real TCP sessions on loopback: identity pinning, private networks, clean close vs truncation,
and hostile peers (junk, floods of silent connections, drip-feeding) that must not stop a
legitimate session from being served.

Attackers connect from other loopback addresses (127.0.0.2 and up: all of 127/8 is loopback on
Linux) so that per-source limits apply to them and not to the legitimate client on 127.0.0.1.
No sleeps synchronise anything: events, the order of the accept queue, and deadlines do.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest
import trio

from crypto.identity import Identity
from crypto.secure_session import SecureHandshake, encode_handshake_message
from p2p.protocol import wire
from p2p.session.secure import (
    HandshakeAdmission,
    SecureConnection,
    SessionError,
    SessionLimits,
    SessionTruncated,
    connect,
    serve_sessions,
    source_key,
)

NETWORK_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


async def echo_handler(conn: SecureConnection) -> None:
    while (msg := await conn.receive()) is not None:
        if isinstance(msg, wire.Ping):
            await conn.send(wire.Pong(msg.id))


async def start_server(
    nursery: trio.Nursery,
    identity: Identity,
    handler: object = echo_handler,
    *,
    psk: bytes | None = None,
    admission: HandshakeAdmission | None = None,
) -> str:
    listeners = await nursery.start(
        lambda task_status: serve_sessions(
            identity,
            "127.0.0.1",
            0,
            handler,  # type: ignore[arg-type]
            psk=psk,
            admission=admission,
            task_status=task_status,
        )
    )
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


async def _ping(address: str, server: Identity, psk: bytes | None = None) -> None:
    conn = await connect(address, Identity.generate(), server.peer_id, psk=psk)
    assert conn.remote_peer_id == server.peer_id
    await conn.send(wire.Ping(7))
    assert await conn.receive() == wire.Pong(7)
    await conn.aclose()


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends before it closes or resets the connection."""
    received = b""
    try:
        while data := await stream.receive_some(4096):
            received += data
    except trio.BrokenResourceError:  # a reset
        pass
    return received


@pytest.mark.parametrize("psk", [None, NETWORK_KEY], ids=["public", "private"])
async def test_ping_over_an_authenticated_session(psk: bytes | None) -> None:
    server = Identity.generate()
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server, psk=psk)
        conn = await connect(address, Identity.generate(), server.peer_id, psk=psk)
        assert conn.remote_peer_id == server.peer_id
        for i in range(3):
            await conn.send(wire.Ping(i))
            assert await conn.receive() == wire.Pong(i)
        await conn.aclose()
        await conn.aclose()  # twice is fine
        with pytest.raises(SessionError):
            await conn.send(wire.Ping(9))
        nursery.cancel_scope.cancel()


async def test_initiator_refuses_a_responder_with_another_identity() -> None:
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, Identity.generate())
        with pytest.raises(SessionError, match="handshake"):
            await connect(address, Identity.generate(), Identity.generate().peer_id)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("client_psk", "server_psk"),
    [(OTHER_KEY, NETWORK_KEY), (None, NETWORK_KEY), (NETWORK_KEY, None)],
    ids=["other-key", "public-to-private", "private-to-public"],
)
async def test_other_network_is_refused_and_told_nothing(
    client_psk: bytes | None, server_psk: bytes | None
) -> None:
    server = Identity.generate()
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server, psk=server_psk)
        with pytest.raises(SessionError, match="closed the connection"):
            await connect(address, Identity.generate(), server.peer_id, psk=client_psk)
        # At the byte level: the server answers message 1 with nothing at all, just a close.
        stream = await trio.open_tcp_stream("127.0.0.1", _port(address))
        first = SecureHandshake(Identity.generate(), initiator=True, psk=client_psk).start()
        await stream.send_all(encode_handshake_message(first))
        with trio.fail_after(5):
            assert await _read_until_closed(stream) == b""
        await stream.aclose()
        await _ping(address, server, server_psk)  # members are still served
        nursery.cancel_scope.cancel()


class Recorder:
    """A handler that echoes pings and records how each session ended."""

    def __init__(self, *, then: str = "wait") -> None:
        self.then = then  # after one pong: "wait" for the peer, "close" or "abort"
        self.outcomes: list[str] = []
        self.ended = trio.Event()

    async def __call__(self, conn: SecureConnection) -> None:
        try:
            while (msg := await conn.receive()) is not None:
                if isinstance(msg, wire.Ping):
                    await conn.send(wire.Pong(msg.id))
                    if self.then == "close":
                        await conn.aclose()
                        return
                    if self.then == "abort":
                        await conn.abort()
                        return
            self.outcomes.append("closed")
        except SessionTruncated:
            self.outcomes.append("truncated")
            raise
        finally:
            self.ended.set()


@pytest.mark.parametrize("ending", ["aclose", "abort"])
async def test_server_tells_a_clean_close_from_a_truncation(ending: str) -> None:
    server, recorder = Identity.generate(), Recorder()
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server, recorder)
        conn = await connect(address, Identity.generate(), server.peer_id)
        await conn.send(wire.Ping(1))
        assert await conn.receive() == wire.Pong(1)
        await (conn.aclose() if ending == "aclose" else conn.abort())
        with trio.fail_after(5):
            await recorder.ended.wait()
        assert recorder.outcomes == ["closed" if ending == "aclose" else "truncated"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("then", ["close", "abort"])
async def test_client_tells_a_clean_close_from_a_truncation(then: str) -> None:
    server = Identity.generate()
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server, Recorder(then=then))
        conn = await connect(address, Identity.generate(), server.peer_id)
        await conn.send(wire.Ping(1))
        with trio.fail_after(5):
            assert await conn.receive() == wire.Pong(1)
            if then == "close":
                assert await conn.receive() is None
                assert await conn.receive() is None  # stays closed
            else:
                with pytest.raises(SessionTruncated, match="without a close frame"):
                    await conn.receive()
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_garbage_and_silent_peers_do_not_stop_the_server() -> None:
    server = Identity.generate()
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server)
        silent = await trio.open_tcp_stream("127.0.0.1", _port(address))  # says nothing
        junks = (
            b"\x00\x00",  # empty handshake message
            b"\xff\xff" + b"A" * 100,  # announces 65535 bytes: refused on the header
            b"\x00\x20" + bytes(32),  # a low-order "ephemeral key"
            b"\x00\x20" + bytes(range(32)) + b"\x00\x00\x00\x10" + bytes(16),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        for junk in junks:
            s = await trio.open_tcp_stream("127.0.0.1", _port(address))
            await s.send_all(junk)
            with trio.fail_after(5):  # the server hangs up on garbage instead of waiting
                received = await _read_until_closed(s)
            assert len(received) in (0, 2 + 192)  # nothing, or message 2 to a valid-looking e
            await s.aclose()
        await _ping(address, server)
        await silent.aclose()
        nursery.cancel_scope.cancel()


@pytest.fixture
def fd_room() -> Iterator[int]:
    """Room for 1,000 attacker sockets plus the server's ends: raise the soft descriptor limit
    (up to the hard one) for the test and put it back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * 1000 + 256
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("sources", "limits"),
    [
        (1, SessionLimits()),  # the defaults, one attacking host
        (100, SessionLimits(max_half_open=32, max_half_open_per_source=4)),  # fills the table
    ],
    ids=["one-source-defaults", "many-sources-full-table"],
)
async def test_a_thousand_silent_connections_do_not_stop_a_session(
    fd_room: int, sources: int, limits: SessionLimits
) -> None:
    count = min(1000, (fd_room - 256) // 2)
    assert count >= 400, f"descriptor limit {fd_room} is too low for this test"
    server = Identity.generate()
    admission = HandshakeAdmission(limits)
    attackers: list[trio.SocketStream] = []
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server, admission=admission)
        try:
            for i in range(count):
                attackers.append(
                    await trio.open_tcp_stream(
                        "127.0.0.1", _port(address), local_address=f"127.0.0.{2 + i % sources}"
                    )
                )
            # The legitimate client's connection queues behind all of them in the accept queue,
            # so the server has admitted or refused every attacker before it sees this one.
            with trio.fail_after(10):
                await _ping(address, server)
            # Every attacker was refused unread, evicted, or still holds a half-open slot.
            refused = admission.refused_busy + admission.refused_rate
            assert admission.admitted + refused == count + 1
            assert admission.half_open <= limits.max_half_open
            assert admission.admitted == admission.evicted + admission.half_open + 1
        finally:
            for s in attackers:
                await trio.aclose_forcefully(s)
        if sources == 1:  # one host never holds more than its share
            assert refused == count - limits.max_half_open_per_source
        else:  # the table was full: the oldest gave way, the legitimate client got in
            assert admission.evicted >= count - limits.max_half_open
        nursery.cancel_scope.cancel()


async def test_drip_feeders_are_cut_at_the_deadline_and_do_not_block_a_session() -> None:
    deadline = 1.0
    server = Identity.generate()
    admission = HandshakeAdmission(SessionLimits(handshake_timeout_s=deadline))
    cut_after: list[float] = []
    connected: list[int] = []
    all_dripping = trio.Event()
    drippers = 20

    async def drip(index: int, port: int) -> None:
        s = await trio.open_tcp_stream("127.0.0.1", port, local_address=f"127.0.0.{2 + index % 4}")
        started = trio.current_time()
        await s.send_all(b"\x00\x30")  # announces a 48-byte message 1, then 1 byte per 50 ms
        connected.append(index)
        if len(connected) == drippers:
            all_dripping.set()
        try:
            for _ in range(200):  # bounded: 10 s at most
                with trio.move_on_after(0.05):
                    if not await s.receive_some(1):
                        break  # the server closed it
                    raise AssertionError("the server answered a half message")
                await s.send_all(b"\x01")
        except trio.BrokenResourceError:
            pass  # the server reset it
        cut_after.append(trio.current_time() - started)
        await s.aclose()

    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server, admission=admission)
        async with trio.open_nursery() as attack:
            for i in range(drippers):
                attack.start_soon(drip, i, _port(address))
            await all_dripping.wait()
            with trio.fail_after(5):
                await _ping(address, server)
        assert len(cut_after) == drippers
        assert all(deadline * 0.9 <= t < deadline + 3.0 for t in cut_after), cut_after
        nursery.cancel_scope.cancel()


# --- admission, sans-IO ------------------------------------------------------------------------


def test_admission_rate_per_source() -> None:
    admission = HandshakeAdmission(
        SessionLimits(handshakes_per_source_per_s=2.0, handshake_burst_per_source=3)
    )
    tickets = [admission.admit("a", 0.0, lambda: None) for _ in range(4)]
    assert [t is not None for t in tickets] == [True, True, True, False]
    for t in tickets:
        if t is not None:
            admission.release(t)
    assert admission.admit("b", 0.0, lambda: None) is not None  # another source is unaffected
    assert admission.admit("a", 0.4, lambda: None) is None  # 0.8 token so far
    assert admission.admit("a", 0.5, lambda: None) is not None  # 1 token after 0.5 s at 2/s
    assert admission.refused_rate == 2


def test_admission_per_source_cap_and_release() -> None:
    admission = HandshakeAdmission(SessionLimits(max_half_open_per_source=2))
    first = admission.admit("a", 0.0, lambda: None)
    second = admission.admit("a", 0.0, lambda: None)
    assert first is not None and second is not None
    assert admission.admit("a", 0.0, lambda: None) is None
    assert admission.refused_busy == 1
    admission.release(first)
    admission.release(first)  # twice is harmless
    assert admission.admit("a", 0.0, lambda: None) is not None
    assert admission.half_open == 2


def test_admission_evicts_the_oldest_when_full() -> None:
    aborted: list[int] = []
    admission = HandshakeAdmission(SessionLimits(max_half_open=3))
    tickets = [admission.admit(f"s{i}", 0.0, lambda i=i: aborted.append(i)) for i in range(5)]
    assert all(t is not None for t in tickets)
    assert aborted == [0, 1] and admission.evicted == 2 and admission.half_open == 3
    admission.release(tickets[0])  # an evicted ticket's release changes nothing
    assert admission.half_open == 3


def test_admission_forgets_idle_sources_first() -> None:
    admission = HandshakeAdmission(SessionLimits(tracked_sources=3, handshake_burst_per_source=1))
    for name in ("a", "b", "c"):
        ticket = admission.admit(name, 0.0, lambda: None)
        assert ticket is not None
        admission.release(ticket)
    assert admission.admit("a", 0.0, lambda: None) is None  # a's bucket is empty and known
    assert admission.admit("d", 0.0, lambda: None) is not None  # forgets b, the least recent
    assert admission.admit("a", 0.0, lambda: None) is None  # a still remembered


@pytest.mark.parametrize(
    ("address", "key"),
    [
        (("192.0.2.7", 1234), "192.0.2.7"),
        (("2001:db8::1", 1234, 0, 0), "2001:db8::/64"),
        (("2001:db8::ffff:1", 1, 0, 0), "2001:db8::/64"),
        (("::ffff:192.0.2.7", 1, 0, 0), "192.0.2.7"),
        (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
        ("?", "?"),
    ],
)
def test_source_key(address: object, key: str) -> None:
    assert source_key(address) == key
