"""The session port's relay side, in trio: reads a relay preamble and serves it. Thin: the
bytes and messages are `relay_protocol.py`'s, the bounds and deadlines `relay_table.py`'s.

Every node runs one `ReachService` on its session port (`serve_sessions(preamble=...)`):
- CONTROL: a Noise session from a peer that holds a reservation here (if this node relays) or
  asks for a dial-back (`dial_back.py`);
- CONNECT / ACCEPT: the two halves of a relayed circuit, spliced byte for byte (CONNECT_PUNCH:
  the same, and each side is told the other's observed source address for a hole punch);
- PROBE: a dial-back this node asked for, arriving (`ProbeInbox`).

The splice forwards ciphertext it cannot read: client and volunteer run Noise end to end over
it. `forward_hook` lets a test see (or change) what the relay forwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from crypto.identity import Identity, peer_id_from_public_key
from p2p.errors import ErrorCode
from p2p.host_port import format_host_port
from p2p.reach.relay_protocol import (
    Circuit,
    DialBack,
    Kind,
    Observed,
    PreambleReader,
    Refused,
    RelayProtocolError,
    Reserve,
    Reserved,
    decode_control,
    encode_control,
    encode_status,
    is_preamble_start,
    split_spray,
)
from p2p.reach.relay_table import RelayRefused, RelayTable
from p2p.session.handshake_admission import NODE_DESCRIPTOR_BOUND
from p2p.session.secure import SecureConnection, SessionError, secure_stream

log = logging.getLogger(__name__)

PREAMBLE_S = 5.0  # the preamble is 37 bytes at most: sent at once by any honest dialler
# A control session must say what it wants this soon after its handshake.
FIRST_MESSAGE_S = 10.0
# Control sessions at once beyond the reservations: room for dial-back requests and renewals.
EXTRA_CONTROL_SESSIONS = 16
SPLICE_CHUNK = 64 * 1024
# The usual soft limit of descriptors, less the session port's own bound (established sessions,
# unfinished handshakes, its reserve) and a margin: what relay connections may hold (176).
RELAY_DESCRIPTOR_BUDGET = 1024 - NODE_DESCRIPTOR_BOUND - 16

_Stream = trio.SocketStream

# (direction "c>v" or "v>c", the bytes) -> the bytes to forward: a test's window on the relay.
ForwardHook = Callable[[str, bytes], bytes]
# Serves one dial-back request: (the session, its observed source host, the request).
DialBackHandler = Callable[[SecureConnection, str, DialBack], Awaitable[None]]


class ProbeInbox:
    """Nonces of dial-backs this node asked for; a PROBE with one of them sets its event."""

    MAX_WAITING = 16

    def __init__(self) -> None:
        self._waiting: dict[bytes, trio.Event] = {}

    def expect(self, nonce: bytes) -> trio.Event:
        if len(self._waiting) >= self.MAX_WAITING:
            self._waiting.pop(next(iter(self._waiting)))
        event = self._waiting[nonce] = trio.Event()
        return event

    def forget(self, nonce: bytes) -> None:
        self._waiting.pop(nonce, None)

    def arrived(self, nonce: bytes) -> bool:
        event = self._waiting.get(nonce)
        if event is None:
            return False
        event.set()
        return True


@attrs.define
class _Waiter:
    arrived: trio.Event = attrs.Factory(trio.Event)
    done: trio.Event = attrs.Factory(trio.Event)
    stream: trio.SocketStream | None = None
    leftover: bytes = b""
    observed: str = ""  # the volunteer's source ip:port for its ACCEPT connection
    # a port spray (relay_protocol.py): the client's source and the local ports each side told
    client_seen: str = ""
    client_port: int = 0
    volunteer_port: int = 0


def _peer_address(stream: trio.SocketStream) -> str:
    """The source ip:port this side sees for *stream* (what a hole punch aims at)."""
    peer = stream.socket.getpeername()
    return format_host_port(str(peer[0]), int(peer[1]))


class ReachService:
    def __init__(
        self,
        identity: Identity,
        table: RelayTable,
        *,
        psk: bytes | None = None,
        probes: ProbeInbox | None = None,
        dial_back: DialBackHandler | None = None,
    ) -> None:
        self.identity = identity
        self.table = table
        self.psk = psk
        self.probes = probes or ProbeInbox()
        self.dial_back = dial_back
        self.forward_hook: ForwardHook | None = None
        self._controls: dict[str, SecureConnection] = {}
        self._waiting: dict[bytes, _Waiter] = {}
        self._control_sessions = 0
        self.connections = 0  # relay connections held now (all kinds)

    def route(self, first: bytes) -> Callable[[trio.SocketStream, bytes], Awaitable[None]] | None:
        """`serve_sessions(preamble=...)`: this service takes connections that open with the
        relay preamble; every other one is a Noise handshake."""
        return self.handle if is_preamble_start(first) else None

    @property
    def max_connections(self) -> int:
        """Relay connections held at once: both halves of every circuit, every control session,
        and room for probes, within `RELAY_DESCRIPTOR_BUDGET`. Past it a new one is closed
        unread: the accept loop's admission bounds how fast they come, this how many stay."""
        limits = self.table.limits
        wanted = 2 * limits.max_circuits + limits.max_reservations + EXTRA_CONTROL_SESSIONS + 32
        return min(wanted, RELAY_DESCRIPTOR_BUDGET)

    async def handle(self, stream: trio.SocketStream, first: bytes) -> None:
        if self.connections >= self.max_connections:
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            reader = PreambleReader()
            with trio.move_on_after(PREAMBLE_S):
                data = first
                while reader.feed(data) is None:
                    data = bytes(await stream.receive_some(reader.needed))
                    if not data:
                        break
            preamble = reader.result
            if preamble is None:
                return
            if preamble.kind is Kind.CONTROL:
                await self._control(stream, reader.remaining)
            elif preamble.kind in (Kind.CONNECT, Kind.CONNECT_PUNCH, Kind.CONNECT_SPRAY):
                key, local_port = split_spray(preamble)
                target = peer_id_from_public_key(key)
                punch = preamble.kind is not Kind.CONNECT
                await self._connect(stream, target, reader, punch=punch, spray_port=local_port)
            elif preamble.kind in (Kind.ACCEPT, Kind.ACCEPT_SPRAY):
                token, local_port = split_spray(preamble)
                await self._accept(stream, token, reader.remaining, spray_port=local_port)
                return  # the splice owns the stream now and closes it
            else:
                ok = self.probes.arrived(preamble.payload)
                with trio.move_on_after(PREAMBLE_S):
                    await stream.send_all(encode_status(None if ok else ErrorCode.BAD_REQUEST))
        except (
            RelayProtocolError,
            ValueError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
        ) as exc:
            log.debug("relay connection dropped: %s", exc)
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    # --- control sessions ---

    async def _control(self, stream: trio.SocketStream, initial: bytes) -> None:
        limit = self.table.limits.max_reservations + EXTRA_CONTROL_SESSIONS
        if self._control_sessions >= limit:
            return
        self._control_sessions += 1
        try:
            observed = stream.socket.getpeername()[0]
            conn = await secure_stream(
                stream, self.identity, expected_peer_id=None, psk=self.psk, initial=initial
            )
            await self._control_loop(conn, str(observed))
        except (SessionError, RelayProtocolError, OSError) as exc:
            log.debug("control session ended: %s", exc)
        finally:
            self._control_sessions -= 1

    async def _control_loop(self, conn: SecureConnection, observed: str) -> None:
        peer = conn.remote_peer_id
        reserved = False
        try:
            while True:
                idle = self.table.limits.reservation_ttl_s if reserved else FIRST_MESSAGE_S
                with trio.move_on_after(idle):
                    data = await conn.receive_bytes()
                    if data is None:
                        return
                    msg = decode_control(data)
                    if isinstance(msg, Reserve):
                        reserved = await self._reserve(conn, peer)
                    elif isinstance(msg, DialBack) and self.dial_back is not None:
                        await self.dial_back(conn, observed, msg)
                    else:  # a message this side never answers: the session is not worth keeping
                        await conn.send_bytes(encode_control(Refused(ErrorCode.BAD_REQUEST)))
                        return
                    continue
                return  # idle past its deadline
        finally:
            if self._controls.get(peer) is conn:
                del self._controls[peer]
                self.table.release(peer)
            await conn.aclose()

    async def _reserve(self, conn: SecureConnection, peer: str) -> bool:
        try:
            ttl = self.table.reserve(peer, trio.current_time())
        except RelayRefused as exc:
            await conn.send_bytes(encode_control(Refused(exc.code, str(exc))))
            return False
        old = self._controls.get(peer)
        self._controls[peer] = conn
        if old is not None and old is not conn:  # a reconnect: the older session is stale
            await old.abort()
        await conn.send_bytes(encode_control(Reserved(ttl)))
        return True

    # --- circuits ---

    async def _connect(
        self,
        stream: trio.SocketStream,
        target: str,
        reader: PreambleReader,
        *,
        punch: bool,
        spray_port: int = 0,
    ) -> None:
        client_seen = _peer_address(stream) if punch else ""
        try:
            token = self.table.open_circuit(target, trio.current_time())
        except RelayRefused as exc:
            with trio.move_on_after(PREAMBLE_S):
                await stream.send_all(encode_status(exc.code))
            return
        waiter = self._waiting[token] = _Waiter(client_seen=client_seen, client_port=spray_port)
        try:
            control = self._controls.get(target)
            if control is not None:
                with trio.move_on_after(self.table.limits.pending_s):
                    circuit = Circuit(token, client_seen, spray_port)
                    await control.send_bytes(encode_control(circuit))
                    await waiter.arrived.wait()
            if waiter.stream is None:
                with trio.move_on_after(PREAMBLE_S):
                    await stream.send_all(encode_status(ErrorCode.NO_RESERVATION))
                return
            answer = encode_status(None)
            if punch:  # both sides' observed addresses: DCUtR's address exchange
                answer += Observed(waiter.observed, client_seen, waiter.volunteer_port).encode()
            await stream.send_all(answer)
            await self._splice(stream, reader.remaining, waiter, target)
        except (SessionError, trio.BrokenResourceError, OSError) as exc:
            log.debug("circuit to %s ended: %s", target[:12], exc)
        finally:
            self.table.close_circuit(token)
            self._waiting.pop(token, None)
            if waiter.stream is not None:
                await trio.aclose_forcefully(waiter.stream)
            waiter.done.set()

    async def _accept(
        self, stream: trio.SocketStream, token: bytes, leftover: bytes, *, spray_port: int = 0
    ) -> None:
        waiter = self._waiting.get(token)
        try:
            if waiter is None or waiter.stream is not None:
                raise RelayRefused("unknown circuit token", ErrorCode.NO_RESERVATION)
            self.table.accept(token, None, trio.current_time())
        except RelayRefused as exc:
            with trio.move_on_after(PREAMBLE_S):
                await stream.send_all(encode_status(exc.code))
            return
        observed = _peer_address(stream)
        answer = encode_status(None)
        if spray_port and waiter.client_port:  # the volunteer's own observed line
            answer += Observed(waiter.client_seen, observed, waiter.client_port).encode()
            waiter.volunteer_port = spray_port
        await stream.send_all(answer)
        waiter.stream, waiter.leftover, waiter.observed = stream, leftover, observed
        waiter.arrived.set()
        await waiter.done.wait()

    async def _splice(
        self, client: trio.SocketStream, c_leftover: bytes, waiter: _Waiter, target: str
    ) -> None:
        volunteer = waiter.stream
        assert volunteer is not None
        budget = self.table.budget(target)
        idle_s = self.table.limits.circuit_idle_s
        last = [trio.current_time()]

        async def pump(src: _Stream, dst: _Stream, way: str, first: bytes) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await _copy(src, dst, way, first)
            nursery.cancel_scope.cancel()  # one side is gone: the circuit ends

        async def _copy(src: _Stream, dst: _Stream, way: str, data: bytes) -> None:
            while True:
                if data:
                    # paced before it is forwarded: the peer's rate holds for every chunk
                    delay = budget.spend(len(data), trio.current_time())
                    if delay > 0:
                        await trio.sleep(delay)
                    if self.forward_hook is not None:
                        data = self.forward_hook(way, data)
                    await dst.send_all(data)
                    last[0] = trio.current_time()
                with trio.move_on_after(idle_s):
                    data = bytes(await src.receive_some(SPLICE_CHUNK))
                    if not data:
                        return
                    continue
                if trio.current_time() - last[0] >= idle_s:
                    return  # idle both ways
                data = b""

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, volunteer, "c>v", c_leftover)
            nursery.start_soon(pump, volunteer, client, "v>c", waiter.leftover)
