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

One port, two protocols: with `serve_sessions(preamble=...)` a connection whose first byte is
not a Noise handshake's (a 2-byte length <= 1024 starts with 0x00..0x04) goes to that route,
the relay protocol of p2p/reach/, once it passed the same admission.

Rejected alternatives: refusing new connections when the total cap is full (an attacker keeps it
full with idle connections and every legitimate client is refused: the SYN-flood failure); a
cookie round trip as in WireGuard (the cheap checks above already make junk cost the node no
cryptography; a cookie would cost every client a round trip).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial

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
from p2p.host_port import parse_host_port
from p2p.protocol import wire
from p2p.protocol.session_table import SessionTable, source_key
from p2p.session.handshake_admission import (  # re-exported: the session port's one module
    DESCRIPTOR_RESERVE,
    HANDSHAKE_BURST_PER_SOURCE,
    HANDSHAKE_TIMEOUT_S,
    HANDSHAKES_PER_SOURCE_PER_S,
    MAX_HALF_OPEN_HANDSHAKES,
    MAX_HALF_OPEN_PER_SOURCE,
    NODE_DESCRIPTOR_BOUND,
    TRACKED_SOURCES,
    HandshakeAdmission,
    SessionLimits,
)
from p2p.session.observers import AcceptObserver, note_dial, observing_accepts

__all__ = [
    "DESCRIPTOR_RESERVE",
    "HANDSHAKES_PER_SOURCE_PER_S",
    "HANDSHAKE_BURST_PER_SOURCE",
    "HANDSHAKE_TIMEOUT_S",
    "MAX_HALF_OPEN_HANDSHAKES",
    "MAX_HALF_OPEN_PER_SOURCE",
    "NODE_DESCRIPTOR_BOUND",
    "TRACKED_SOURCES",
    "HandshakeAdmission",
    "SecureConnection",
    "SessionError",
    "SessionLimits",
    "SessionTruncated",
    "connect",
    "open_tcp",
    "secure_stream",
    "serve_established",
    "serve_sessions",
]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# How long aclose() waits to hand the close frame to the kernel before closing anyway.
CLOSE_TIMEOUT_S = 1.0
RECEIVE_CHUNK = 64 * 1024
# Handshake reads: messages are at most 1 KiB, so a small read bounds what an unauthenticated
# peer can make us hold to a few KiB per connection.
HANDSHAKE_RECEIVE_CHUNK = 4096


class SessionError(Exception):
    """The session broke: peer gone, garbage, failed authentication. One-line message."""


class SessionTruncated(SessionError):
    """The byte stream ended without the peer's authenticated close frame: the peer crashed, or
    someone on the path cut the connection. What was received before is authentic, but it may
    not be all the peer sent."""


class SecureConnection:
    """One authenticated, encrypted connection carrying `wire` messages."""

    def __init__(self, stream: trio.abc.Stream, channel: FrameChannel, remote_peer_id: str) -> None:
        self._stream = stream
        self._channel = channel
        self.remote_peer_id = remote_peer_id
        self._send_lock = trio.Lock()
        self._closed = False
        # The relay's peer id when this session runs over a relayed circuit (p2p/reach/).
        self.via_relay: str | None = None
        # Set by serve_sessions on the node's side: the session's deadlines follow its requests.
        self.on_requests: Callable[[int], None] | None = None

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The TCP peer (host, port), a relayed session's the relay; None off a live socket."""
        try:
            peer = self._stream.socket.getpeername()  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            return None
        return (str(peer[0]), int(peer[1]))

    def requests_changed(self, live: int) -> None:
        """The request layer's count of live requests on this session (see SessionTable)."""
        if self.on_requests is not None:
            self.on_requests(live)

    async def send(self, msg: wire.Message) -> None:
        await self.send_bytes(wire.encode(msg))

    async def send_bytes(self, plaintext: bytes) -> None:
        """One encrypted frame (the relay's control sessions carry their own messages)."""
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
            data = self._channel.encrypt(plaintext)
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
        frame = await self.receive_bytes()
        if frame is None:
            return None
        try:
            return wire.decode_received(frame)
        except wire.ProtocolError as exc:
            raise SessionError(f"bad message: {exc}") from exc

    async def receive_bytes(self) -> bytes | None:
        """The next frame's plaintext, or None after the peer's close frame (see `receive`)."""
        while True:
            try:
                frame = self._channel.next_frame()
            except FrameError as exc:
                raise SessionError(f"bad frame: {exc}") from exc
            if frame is not None:
                return frame
            if self._channel.peer_closed:
                return None
            try:
                # The rest of an announced frame in one read (the header check bounds it).
                data = await self._stream.receive_some(max(RECEIVE_CHUNK, self._channel.missing))
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


async def _handshake(
    stream: trio.abc.Stream, hs: SecureHandshake, first: bytes | None, initial: bytes = b""
) -> bytes:
    """Drive the handshake; returns bytes that arrived after it (the first frames). *initial*:
    bytes already read from the stream (the accept loop's peek at the first chunk)."""
    reader = HandshakeReader()
    if initial:
        reader.feed(initial)
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
    stream: trio.abc.Stream, hs: SecureHandshake, first: bytes | None, initial: bytes = b""
) -> SecureConnection:
    leftover = await _handshake(stream, hs, first, initial)
    channel = hs.channel()
    if leftover:
        channel.receive_data(leftover)
    peer = hs.remote_peer_id
    assert peer is not None
    return SecureConnection(stream, channel, peer)


async def open_tcp(address: str, *, local_address: str | None = None) -> trio.SocketStream:
    """A TCP connection to *address* ("host:port") within CONNECT_TIMEOUT_S, or SessionError."""
    try:
        host, port = parse_host_port(address)
        note_dial(host)  # who this node sent to (p2p/session/observers.py)
        with trio.fail_after(CONNECT_TIMEOUT_S):
            return await trio.open_tcp_stream(host, port, local_address=local_address)
    except (OSError, ValueError, trio.TooSlowError) as exc:
        raise SessionError(f"cannot connect to {address}: {exc or 'timed out'}") from exc


async def secure_stream(
    stream: trio.abc.Stream,
    identity: Identity,
    *,
    expected_peer_id: str | None,
    psk: bytes | None = None,
    initial: bytes = b"",
    label: str = "the peer",
) -> SecureConnection:
    """Run Noise XX over an open *stream* (a relayed circuit, a relay's control connection):
    the initiator when *expected_peer_id* is given (and insisting on it), else the responder.
    Within HANDSHAKE_TIMEOUT_S; any failure closes the stream and raises SessionError."""
    initiator = expected_peer_id is not None
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            hs = SecureHandshake(
                identity, initiator=initiator, expected_peer_id=expected_peer_id, psk=psk
            )
            return await _secure(stream, hs, hs.start() if initiator else None, initial)
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, (HandshakeFailed, FrameError)):
            raise SessionError(f"handshake with {label} failed: {exc}") from exc
        if isinstance(exc, trio.TooSlowError):
            raise SessionError(f"handshake with {label} timed out") from exc
        if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, OSError)):
            raise SessionError(f"handshake with {label} failed: connection lost") from exc
        raise


async def connect(
    address: str,
    identity: Identity,
    expected_peer_id: str,
    *,
    psk: bytes | None = None,
    local_address: str | None = None,
    preamble: bytes = b"",
) -> SecureConnection:
    """Open a session to *address* ("host:port") and insist the responder is *expected_peer_id*.

    *psk* is the network key of a private network (crypto.network_key.load_network_key), None
    for the public network; it must be the responder's. *local_address*: the source address to
    bind (tests stand in for many networks with many 127.x.y.z sources). *preamble*: bytes sent
    before the handshake (a relay CONTROL preamble, p2p/reach/relay_protocol.py).
    """
    stream = await open_tcp(address, local_address=local_address)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            if preamble:
                await stream.send_all(preamble)
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


# A connection whose first bytes are not a Noise handshake (a relay preamble): given those bytes,
# the handler that takes the connection over, or None for "a handshake, as usual".
PreambleRoute = Callable[[bytes], Callable[[trio.SocketStream, bytes], Awaitable[None]] | None]


async def _serve_one(
    identity: Identity,
    handler: Handler,
    admission: HandshakeAdmission,
    sessions: SessionTable,
    psk: bytes | None,
    preamble: PreambleRoute | None,
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
    taken_over: Callable[[trio.SocketStream, bytes], Awaitable[None]] | None = None
    first = b""
    try:
        with scope:
            if preamble is not None:
                first = bytes(await stream.receive_some(HANDSHAKE_RECEIVE_CHUNK))
                taken_over = preamble(first) if first else None
            if taken_over is None:
                hs = SecureHandshake(identity, initiator=False, psk=psk)
                conn = await _secure(stream, hs, None, first)
    except (HandshakeFailed, FrameError, trio.BrokenResourceError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
    finally:
        admission.release(ticket)
    if taken_over is not None:  # the relay's own bounds and deadlines apply from here
        await taken_over(stream, first)
        return
    if conn is None:
        if scope.cancelled_caught and trio.current_time() < scope.deadline:
            reason = "evicted: too many unfinished handshakes"
        # Logged at debug: at info, a flood of junk would become a flood of log lines.
        log.debug("handshake from %s refused: %s", peer, reason)
        _reset(stream)
        await trio.aclose_forcefully(stream)
        return
    await serve_established(conn, source, handler, sessions, label=str(peer))


async def serve_established(
    conn: SecureConnection,
    source: str,
    handler: Handler,
    sessions: SessionTable,
    *,
    label: str = "",
) -> None:
    """Run *handler* on an authenticated session within the session table's bounds (counted
    under *source*), then close it; the accept loop's second half, also used for sessions that
    arrive through a relay (p2p/reach/)."""
    # Authenticated now, but as a key anyone can make: the session table decides how long the
    # session may stay (its deadline follows its requests) and may evict it for a newcomer.
    label = label or source
    session_scope = trio.CancelScope()
    place = sessions.admit(source, trio.current_time(), session_scope.cancel)
    if place is None:
        log.debug("session from %s refused: its share is full of sessions in use", label)
        await conn.aclose()
        return
    conn.on_requests = partial(_requests_changed, sessions, place, session_scope)
    session_scope.deadline = sessions.deadline(place)
    try:
        with session_scope:
            await handler(conn)
        if session_scope.cancelled_caught:  # at debug: silent sessions must not flood the log
            log.debug("session from %s closed: idle, silent or evicted", label)
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
    preamble: PreambleRoute | None = None,
    on_accept: AcceptObserver | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept sessions on host:port and run *handler* for each authenticated one.

    *psk*: the private network's key (None: public network); initiators with another key are
    dropped at their first message. *admission*: pass one to choose the limits
    (``HandshakeAdmission(SessionLimits(...))``) or to read its counters; default: the module
    constants. *sessions*: the same for established sessions (``SessionTable(...)``).
    *preamble*: routes connections that open with something other than a handshake (the relay
    protocol shares the session port: p2p/reach/relay_protocol.py). *on_accept*: told each
    connection's source and local address first (p2p/reach/strangers.py).
    """
    admission = admission or HandshakeAdmission()
    sessions = sessions if sessions is not None else SessionTable()
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    serve_one = partial(_serve_one, identity, handler, admission, sessions, psk, preamble)
    await trio.serve_listeners(observing_accepts(serve_one, on_accept), listeners)
