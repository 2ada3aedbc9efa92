"""The relay side of the session port over real TCP on loopback, without models: one port for
Noise sessions and relay preambles, circuits spliced end to end, refusals with their codes,
dial-back to the observed source address only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from crypto.identity import Identity
from p2p.dht.records import RelayHint
from p2p.errors import ErrorCode
from p2p.host_port import format_host_port
from p2p.reach.dial_back import DialBackHelper, ask_dial_back
from p2p.reach.relay_client import RelayDialError, dial_via_relay, hold_reservation
from p2p.reach.relay_protocol import Kind, Preamble, StatusReader
from p2p.reach.relay_service import ProbeInbox, ReachService
from p2p.reach.relay_table import RelayLimits, RelayRefused, RelayTable
from p2p.session.secure import SecureConnection, SessionError, connect, serve_sessions

TIMEOUT_S = 20.0


async def _echo(conn: SecureConnection, *_: object) -> None:
    while (frame := await conn.receive_bytes()) is not None:
        await conn.send_bytes(frame.upper())


async def _unused(conn: SecureConnection) -> None:
    await conn.aclose()


@asynccontextmanager
async def relay(
    host: str, limits: RelayLimits | None = None
) -> AsyncIterator[tuple[RelayHint, ReachService]]:
    identity = Identity.generate()
    service = ReachService(
        identity, RelayTable(limits), probes=ProbeInbox(), dial_back=DialBackHelper()
    )
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(serve_sessions, identity, host, 0, _echo, preamble=service.route)
        )
        port = listeners[0].socket.getsockname()[1]
        yield RelayHint(identity.peer_id, format_host_port(host, port)), service
        nursery.cancel_scope.cancel()


async def _status_of(address: str, preamble: bytes) -> ErrorCode | str | None:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(preamble)
    reader = StatusReader()
    while not reader.done:
        data = await stream.receive_some(64)
        if not data:
            return "closed"
        reader.feed(data)
    await stream.aclose()
    return reader.code


async def test_one_port_serves_sessions_and_relayed_circuits() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with relay("127.0.5.1") as (hint, service), trio.open_nursery() as nursery:
            # an ordinary session still works on the relay's port
            direct = await connect(hint.address, Identity.generate(), hint.peer_id)
            await direct.send_bytes(b"ping")
            assert await direct.receive_bytes() == b"PING"
            await direct.aclose()

            volunteer = Identity.generate()
            reserved = trio.Event()
            nursery.start_soon(
                partial(
                    hold_reservation,
                    hint,
                    volunteer,
                    _echo,
                    on_reserved=lambda _ttl: reserved.set(),
                )
            )
            await reserved.wait()
            seen: list[bytes] = []
            service.forward_hook = lambda _way, data: seen.append(data) or data
            conn = await dial_via_relay(hint, volunteer.peer_id, Identity.generate())
            assert conn.remote_peer_id == volunteer.peer_id and conn.via_relay == hint.peer_id
            await conn.send_bytes(b"a secret through the relay")
            assert await conn.receive_bytes() == b"A SECRET THROUGH THE RELAY"
            await conn.aclose()
            assert seen and b"secret" not in b"".join(seen) and b"SECRET" not in b"".join(seen)
            nursery.cancel_scope.cancel()


async def test_refusals_carry_their_codes() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with relay("127.0.5.2", RelayLimits(max_reservations=0)) as (hint, service):
            stranger = Identity.generate()
            try:
                await dial_via_relay(hint, stranger.peer_id, Identity.generate())
                raise AssertionError("a circuit to a peer without a reservation")
            except RelayDialError as exc:
                assert exc.code is ErrorCode.NO_RESERVATION
            try:
                await hold_reservation(hint, stranger, _echo)
                raise AssertionError("a reservation past the bound")
            except RelayRefused as exc:
                assert exc.code is ErrorCode.RELAY_FULL
            token = Preamble(Kind.ACCEPT, b"\x07" * 16).encode()
            assert await _status_of(hint.address, token) is ErrorCode.NO_RESERVATION
            assert await _status_of(hint.address, b"\xf7\x01\x63rest") == "closed"  # bad kind
            assert service.connections == 0  # every relay connection was let go


async def test_dial_back_reaches_the_observed_source_only() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with relay("127.0.5.3") as (helper, _), relay("127.0.5.4") as (me, mine):
            asker = Identity.generate()
            port = int(me.address.rsplit(":", 1)[1])
            # dialling from the address it listens on: the helper's probe gets through
            got = await ask_dial_back(
                helper, asker, mine.probes, port=port, dht_port=1, local_address="127.0.5.4"
            )
            assert got is not None and got.tcp and got.host == "127.0.5.4"
            # dialling from another address (as behind a NAT): the probe goes there, and fails
            # (the helper's limit is per peer and per address: a new asker identity here)
            got = await ask_dial_back(
                helper,
                Identity.generate(),
                mine.probes,
                port=port,
                dht_port=1,
                local_address="127.0.5.5",
            )
            assert got is not None and not got.tcp and got.host == "127.0.5.5"
            # a re-check at once on another port (a router's new mapping) goes through, the
            # same port again does not: the helper's limit refuses, no answer, no dial
            answers = []
            for asked in (port + 1, port + 1, port):
                again = await ask_dial_back(
                    helper,
                    asker,
                    mine.probes,
                    port=asked,
                    dht_port=1,
                    mapped=True,
                    local_address="127.0.5.4",
                )
                answers.append(again is not None)
            assert answers == [True, False, False]


async def test_a_session_error_is_not_a_relay_refusal() -> None:
    with trio.fail_after(TIMEOUT_S):
        try:
            nobody = RelayHint(Identity.generate().peer_id, "127.0.5.9:9")
            await dial_via_relay(nobody, Identity.generate().peer_id, Identity.generate())
            raise AssertionError("connected to a closed port")
        except SessionError as exc:
            assert not isinstance(exc, RelayDialError)


async def test_a_private_networks_circuits_need_its_key() -> None:
    key = b"k" * 32
    with trio.fail_after(TIMEOUT_S):
        identity = Identity.generate()
        service = ReachService(identity, RelayTable(), psk=key)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(
                    serve_sessions,
                    identity,
                    "127.0.5.6",
                    0,
                    _unused,
                    psk=key,
                    preamble=service.route,
                )
            )
            hint = RelayHint(identity.peer_id, f"127.0.5.6:{listeners[0].socket.getsockname()[1]}")
            volunteer = Identity.generate()
            reserved = trio.Event()
            nursery.start_soon(
                partial(
                    hold_reservation,
                    hint,
                    volunteer,
                    _echo,
                    psk=key,
                    on_reserved=lambda _ttl: reserved.set(),
                )
            )
            await reserved.wait()
            conn = await dial_via_relay(hint, volunteer.peer_id, Identity.generate(), psk=key)
            await conn.send_bytes(b"member")
            assert await conn.receive_bytes() == b"MEMBER"
            await conn.aclose()
            try:
                await dial_via_relay(hint, volunteer.peer_id, Identity.generate())
                raise AssertionError("a stranger without the key got a session")
            except SessionError as exc:
                assert "handshake" in str(exc)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def circuit(limits: RelayLimits, host: str) -> AsyncIterator[SecureConnection]:
    """A relay with *limits*, a volunteer that echoes, and a client's session through them."""
    async with relay(host, limits) as (hint, _), trio.open_nursery() as nursery:
        volunteer = Identity.generate()
        reserved = trio.Event()
        nursery.start_soon(
            partial(hold_reservation, hint, volunteer, _echo, on_reserved=lambda _t: reserved.set())
        )
        await reserved.wait()
        conn = await dial_via_relay(hint, volunteer.peer_id, Identity.generate())
        yield conn
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_an_idle_circuit_is_closed_by_the_relay() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with circuit(RelayLimits(circuit_idle_s=0.5), "127.0.5.7") as conn:
            await conn.send_bytes(b"hello")
            assert await conn.receive_bytes() == b"HELLO"
            started = trio.current_time()
            try:
                await conn.receive_bytes()  # nothing more is sent: the relay gives up on it
                raise AssertionError("the idle circuit delivered something")
            except SessionError as exc:
                assert "closed" in str(exc) or "lost" in str(exc)
            assert trio.current_time() - started >= 0.4


async def test_the_relay_paces_a_relayed_peer_to_its_byte_rate() -> None:
    rate = 100_000.0  # bytes/s, both directions together; a second's worth of burst
    with trio.fail_after(TIMEOUT_S):
        async with circuit(RelayLimits(bytes_per_s_per_peer=rate), "127.0.5.8") as conn:
            payload = b"z" * 50_000
            started = trio.current_time()
            for _ in range(2):
                await conn.send_bytes(payload)
                assert await conn.receive_bytes() == payload.upper()
            took = trio.current_time() - started
    # 200 kB crossed the relay; less the 100 kB burst, that is 1 s at 100 kB/s
    assert took >= 0.8, took
