"""Encrypted sessions over TCP: the thin trio loop around `crypto.secure_session`.

The handshake and framing rules live in `crypto/` as sans-IO objects; this module only moves
bytes, applies deadlines and turns every way a peer can misbehave into one exception type per
fault, so the accept loop never dies because of one connection.

Admission (``HandshakeAdmission``): a volunteer's port is open to anyone, and a connection that
has not finished its handshake is a stranger. What a stranger can make the node spend is
bounded before any byte is read:

- per source address (an IPv4 address, or an IPv6 /64, which one host usually owns whole), a
  token bucket of handshakes per second and a cap on concurrent unfinished handshakes; over
  either, the connection is reset at once, unread;
- in total, a cap on unfinished handshakes; when it is full, a new connection evicts the oldest
  unfinished one instead of being refused, so that idle or slow-dripping connections cannot
  lock out a client whose handshake takes one round trip;
- each handshake has a deadline, and its messages are at most 1 KiB
  (crypto.secure_session.MAX_HANDSHAKE_MESSAGE), read in small chunks.

Established sessions (``p2p.protocol.session_table.SessionTable``): caps in total, per source and
per source network, a deadline for a session that sends no request and one after its last
request, and eviction of the idlest when full; the node's descriptors stay under
``NODE_DESCRIPTOR_BOUND``. The request layer reports each session's live requests through
``SecureConnection.requests_changed``.

Rejected alternatives: refusing new connections when the total cap is full (an attacker keeps it
full with idle connections and every legitimate client is refused: the SYN-flood failure); a
cookie round trip as in WireGuard (the cheap checks above already make junk cost the node no
cryptography; a cookie would cost every client a round trip).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from crypto.identity import Identity
from crypto.secure_session import (
    FrameChannel,
    FrameError,
    HandshakeFailed,
    HandshakeReader,
    SecureHandshake,
    encode_handshake_message,
)
from p2p.bounded_lru import BoundedLRU
from p2p.host_port import parse_host_port
from p2p.protocol import wire
from p2p.protocol.session_table import MAX_SESSIONS, SessionTable, source_key
from p2p.token_bucket import KeyedBuckets

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# A handshake is three small messages, one and a half round trips; anything slower is a broken
# or hostile peer. Generous for a slow intercontinental link, short enough that a connection
# which never completes gives its slot back soon.
HANDSHAKE_TIMEOUT_S = 10.0
# How long aclose() waits to hand the close frame to the kernel before closing anyway.
CLOSE_TIMEOUT_S = 1.0
RECEIVE_CHUNK = 64 * 1024
# Handshake reads: messages are at most 1 KiB, so a small read bounds what an unauthenticated
# peer can make us hold to a few KiB per connection.
HANDSHAKE_RECEIVE_CHUNK = 4096

# --- admission limits (see the module docstring). Every number is per node. ---
# Unfinished handshakes in total. Each costs a task, a socket and < 6 KiB of buffers; 256 is far
# above what honest traffic needs (a client's handshake takes one round trip, a node serves a
# handful of generations at a time) and well below the usual 1024-descriptor soft limit.
MAX_HALF_OPEN_HANDSHAKES = 256
# Unfinished handshakes from one source: several clients behind one NAT, or a gateway opening a
# few sessions at once, fit; one host holding the whole table does not.
MAX_HALF_OPEN_PER_SOURCE = 8
# Handshakes started per source per second (token bucket: sustained rate, burst). A client keeps
# its sessions in a pool and reuses them; a gateway in front of many users may burst. Each
# admitted handshake costs the responder ~0.3 ms of cryptography (three X25519, one Ed25519 sign
# and one verify) and ~1 ms of process CPU all told (accept, task, socket; tools/bench_crypto.py),
# so 20/s from one source is ~2 % of a core. A refused connection costs no cryptography at all.
HANDSHAKES_PER_SOURCE_PER_S = 20.0
HANDSHAKE_BURST_PER_SOURCE = 40
# Sources whose token buckets are remembered; beyond it, idle ones are forgotten first (a
# forgotten source just starts again with a full bucket). Bounds the table to ~1 MiB.
TRACKED_SOURCES = 4096
# What the node's descriptors stay under: established sessions (SessionTable's cap), unfinished
# handshakes, and a reserve of 64 for the listeners (IPv4 and IPv6), the DHT's UDP socket, model
# files, trio's wakeup pair, logs and the odd outbound session of a node's own gateway. Under the
# usual soft limit of 1,024, so the accept loop never meets EMFILE.
DESCRIPTOR_RESERVE = 64
NODE_DESCRIPTOR_BOUND = MAX_SESSIONS + MAX_HALF_OPEN_HANDSHAKES + DESCRIPTOR_RESERVE


class SessionError(Exception):
    """The session broke: peer gone, garbage, failed authentication. One-line message."""


class SessionTruncated(SessionError):
    """The byte stream ended without the peer's authenticated close frame: the peer crashed, or
    someone on the path cut the connection. What was received before is authentic, but it may
    not be all the peer sent."""


@attrs.frozen
class SessionLimits:
    """The admission limits of one server; the defaults are the module constants above."""

    max_half_open: int = MAX_HALF_OPEN_HANDSHAKES
    max_half_open_per_source: int = MAX_HALF_OPEN_PER_SOURCE
    handshakes_per_source_per_s: float = HANDSHAKES_PER_SOURCE_PER_S
    handshake_burst_per_source: int = HANDSHAKE_BURST_PER_SOURCE
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    tracked_sources: int = TRACKED_SOURCES


class HandshakeAdmission:
    """Which new connections may start a handshake; sans-IO (the caller passes the time and a
    callback that aborts a connection).

    ``admit`` returns a ticket, or None for "reset it unread". Over the total cap it admits the
    newcomer and calls the abort callback of the oldest unfinished handshake. ``release`` must
    be called with the ticket when the handshake ends, however it ends.
    """

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits = limits or SessionLimits()
        self._buckets: KeyedBuckets[str] = KeyedBuckets(
            limits.handshakes_per_source_per_s,
            float(limits.handshake_burst_per_source),
            limits.tracked_sources,
        )
        # ticket -> (source, abort); over the total cap the oldest is evicted (and aborted).
        self._half_open: BoundedLRU[int, tuple[str, Callable[[], None]]] = BoundedLRU(
            limits.max_half_open, on_evict=self._evict
        )
        self._per_source: collections.Counter[str] = collections.Counter()
        self._next_ticket = 0
        # Counters for logs, metrics and tests.
        self.admitted = 0
        self.refused_rate = 0
        self.refused_busy = 0
        self.evicted = 0

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def admit(self, source: str, now: float, abort: Callable[[], None]) -> int | None:
        if self._per_source[source] >= self.limits.max_half_open_per_source:
            self.refused_busy += 1
            return None
        if not self._buckets.take(source, now):
            self.refused_rate += 1
            return None
        ticket = self._next_ticket
        self._next_ticket += 1
        self._per_source[source] += 1
        self.admitted += 1
        self._half_open.set(ticket, (source, abort))
        return ticket

    def _evict(self, _ticket: int, entry: tuple[str, Callable[[], None]]) -> None:
        source, abort = entry
        self._drop_source(source)
        self.evicted += 1
        abort()

    def _drop_source(self, source: str) -> None:
        self._per_source[source] -= 1
        if self._per_source[source] <= 0:
            del self._per_source[source]

    def release(self, ticket: int) -> None:
        entry = self._half_open.pop(ticket)
        if entry is not None:  # None: it was evicted, and its source already counted down
            self._drop_source(entry[0])


class SecureConnection:
    """One authenticated, encrypted connection carrying `wire` messages."""

    def __init__(self, stream: trio.abc.Stream, channel: FrameChannel, remote_peer_id: str) -> None:
        self._stream = stream
        self._channel = channel
        self.remote_peer_id = remote_peer_id
        self._send_lock = trio.Lock()
        self._closed = False
        # Set by serve_sessions on the node's side: the session's deadlines follow its requests.
        self.on_requests: Callable[[int], None] | None = None

    def requests_changed(self, live: int) -> None:
        """The request layer's count of live requests on this session (see SessionTable)."""
        if self.on_requests is not None:
            self.on_requests(live)

    async def send(self, msg: wire.Message) -> None:
        # The lock keeps frames whole when several requests share the connection. Taken without
        # a schedule point when it is free (the usual case), as one is a trip through trio's
        # loop per token; send_all below still checkpoints.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if self._closed:
                raise SessionError(f"connection to {self.remote_peer_id[:12]} is closed")
            data = self._channel.encrypt(wire.encode(msg))
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SessionError(f"connection to {self.remote_peer_id[:12]} lost") from exc
        finally:
            self._send_lock.release()

    async def receive(self) -> wire.Received | None:
        """Next message, or None once the peer has closed cleanly (its authenticated close
        frame arrived). A connection that ends without that frame raises SessionTruncated.

        A message invalid past its id comes back as `wire.Malformed`, for the request layer to
        answer; only one whose id cannot be read (or a bad frame) breaks the session."""
        while True:
            try:
                frame = self._channel.next_frame()
            except FrameError as exc:
                raise SessionError(f"bad frame: {exc}") from exc
            if frame is not None:
                try:
                    return wire.decode_received(frame)
                except wire.ProtocolError as exc:
                    raise SessionError(f"bad message: {exc}") from exc
            if self._channel.peer_closed:
                return None
            try:
                data = await self._stream.receive_some(RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SessionTruncated("connection lost") from exc
            if not data:
                if self._channel.buffered:
                    raise SessionTruncated("connection closed in the middle of a frame")
                raise SessionTruncated("connection closed without a close frame")
            try:
                self._channel.receive_data(bytes(data))
            except FrameError as exc:
                raise SessionError(f"bad frame: {exc}") from exc

    async def aclose(self) -> None:
        """Send the close frame (waiting at most CLOSE_TIMEOUT_S), then close the socket.
        Safe to call twice; a broken connection is just closed."""
        if self._closed:
            return
        try:
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                async with self._send_lock:
                    self._closed = True
                    await self._stream.send_all(self._channel.encrypt_close())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, FrameError):
            pass
        finally:
            self._closed = True
            await trio.aclose_forcefully(self._stream)

    async def abort(self) -> None:
        """Close without the close frame, so the peer sees a truncated session: for when this
        side cannot vouch that it sent everything it meant to (a local failure)."""
        self._closed = True
        await trio.aclose_forcefully(self._stream)


async def _handshake(stream: trio.abc.Stream, hs: SecureHandshake, first: bytes | None) -> bytes:
    """Drive the handshake; returns bytes that arrived after it (the first frames)."""
    reader = HandshakeReader()
    if first is not None:
        await stream.send_all(encode_handshake_message(first))
    while not hs.complete:
        msg = reader.next_message()
        if msg is None:
            data = await stream.receive_some(HANDSHAKE_RECEIVE_CHUNK)
            if not data:
                raise HandshakeFailed("peer closed the connection during the handshake")
            reader.feed(bytes(data))
            continue
        reply = hs.receive(msg)
        if reply is not None:
            await stream.send_all(encode_handshake_message(reply))
    return reader.take_remaining()


async def _secure(
    stream: trio.abc.Stream, hs: SecureHandshake, first: bytes | None
) -> SecureConnection:
    leftover = await _handshake(stream, hs, first)
    channel = hs.channel()
    if leftover:
        channel.receive_data(leftover)
    peer = hs.remote_peer_id
    assert peer is not None
    return SecureConnection(stream, channel, peer)


async def connect(
    address: str,
    identity: Identity,
    expected_peer_id: str,
    *,
    psk: bytes | None = None,
    local_address: str | None = None,
) -> SecureConnection:
    """Open a session to *address* ("host:port") and insist the responder is *expected_peer_id*.

    *psk* is the network key of a private network (crypto.network_key.load_network_key), None
    for the public network; it must be the responder's. *local_address*: the source address to
    bind (tests stand in for many networks with many 127.x.y.z sources).
    """
    try:
        host, port = parse_host_port(address)
        with trio.fail_after(CONNECT_TIMEOUT_S):
            stream = await trio.open_tcp_stream(host, port, local_address=local_address)
    except (OSError, ValueError, trio.TooSlowError) as exc:
        raise SessionError(f"cannot connect to {address}: {exc or 'timed out'}") from exc
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            hs = SecureHandshake(
                identity, initiator=True, expected_peer_id=expected_peer_id, psk=psk
            )
            return await _secure(stream, hs, hs.start())
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        network = "its network key" if psk is not None else "the public network (no key)"
        hint = f" (is it a gpunet node of the same network? this side uses {network})"
        if isinstance(exc, (HandshakeFailed, FrameError)):
            if "closed the connection" not in str(exc):
                hint = ""
            raise SessionError(f"handshake with {address} failed: {exc}{hint}") from exc
        if isinstance(exc, trio.TooSlowError):
            raise SessionError(f"handshake with {address} timed out") from exc
        if isinstance(exc, (trio.BrokenResourceError, OSError)):
            # A responder refuses with a reset, whatever the reason: we learn no more than this.
            raise SessionError(
                f"handshake with {address} failed: the peer closed the connection{hint}"
            ) from exc
        raise


Handler = Callable[[SecureConnection], Awaitable[None]]


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """True when *exc* is *kind*, or an exception group made only of *kind* (a handler's
    nursery wraps a SessionError in a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(inner, kind) for inner in exc.exceptions)
    return isinstance(exc, kind)


def _reset(stream: trio.SocketStream) -> None:
    """Make the coming close a TCP reset: the connection leaves no TIME_WAIT behind here, and
    unread bytes are dropped by the kernel rather than read by us."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _serve_one(
    identity: Identity,
    handler: Handler,
    admission: HandshakeAdmission,
    sessions: SessionTable,
    psk: bytes | None,
    stream: trio.SocketStream,
) -> None:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        peer = "?"
    source = source_key(peer)
    limits = admission.limits
    scope = trio.CancelScope(deadline=trio.current_time() + limits.handshake_timeout_s)
    ticket = admission.admit(source, trio.current_time(), scope.cancel)
    if ticket is None:
        log.debug("connection from %s refused unread (over the limits of %s)", peer, source)
        _reset(stream)
        await trio.aclose_forcefully(stream)
        return
    conn: SecureConnection | None = None
    reason = "timed out"
    try:
        with scope:
            conn = await _secure(stream, SecureHandshake(identity, initiator=False, psk=psk), None)
    except (HandshakeFailed, FrameError, trio.BrokenResourceError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
    finally:
        admission.release(ticket)
    if conn is None:
        if scope.cancelled_caught and trio.current_time() < scope.deadline:
            reason = "evicted: too many unfinished handshakes"
        # Logged at debug: at info, a flood of junk would become a flood of log lines.
        log.debug("handshake from %s refused: %s", peer, reason)
        _reset(stream)
        await trio.aclose_forcefully(stream)
        return
    # Authenticated now, but as a key anyone can make: the session table decides how long the
    # session may stay (its deadline follows its requests) and may evict it for a newcomer.
    session_scope = trio.CancelScope()
    place = sessions.admit(source, trio.current_time(), session_scope.cancel)
    if place is None:
        log.debug("session from %s refused: its share is full of sessions in use", peer)
        await conn.aclose()
        return
    conn.on_requests = partial(_requests_changed, sessions, place, session_scope)
    session_scope.deadline = sessions.deadline(place)
    try:
        with session_scope:
            await handler(conn)
        if session_scope.cancelled_caught:  # at debug: silent sessions must not flood the log
            log.debug("session from %s closed: idle, silent or evicted", peer)
    except BaseException as exc:
        if _only(exc, SessionError):
            log.info("session with %s ended: %s", conn.remote_peer_id[:12], exc)
        elif isinstance(exc, Exception):  # one connection's bug must not take the server down
            log.exception("session handler failed")
        else:
            raise
    finally:
        sessions.release(place)
        await conn.aclose()


def _requests_changed(
    sessions: SessionTable, ticket: int, scope: trio.CancelScope, live: int
) -> None:
    sessions.requests_changed(ticket, live, trio.current_time())
    scope.deadline = sessions.deadline(ticket)


async def serve_sessions(
    identity: Identity,
    host: str,
    port: int,
    handler: Handler,
    *,
    psk: bytes | None = None,
    admission: HandshakeAdmission | None = None,
    sessions: SessionTable | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept sessions on host:port and run *handler* for each authenticated one.

    *psk*: the private network's key (None: public network); initiators with another key are
    dropped at their first message. *admission*: pass one to choose the limits
    (``HandshakeAdmission(SessionLimits(...))``) or to read its counters; default: the module
    constants. *sessions*: the same for established sessions (``SessionTable(...)``).
    """
    admission = admission or HandshakeAdmission()
    sessions = sessions if sessions is not None else SessionTable()
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    serve_one = partial(_serve_one, identity, handler, admission, sessions, psk)
    await trio.serve_listeners(serve_one, listeners)
