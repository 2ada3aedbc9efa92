"""Encrypted sessions over TCP: the thin trio loop around `crypto.secure_session`.

The handshake and framing rules live in `crypto/` as sans-IO objects; this module only moves
bytes, applies deadlines and turns every way a peer can misbehave into one exception type per
fault, so the accept loop never dies because of one connection.
"""

from __future__ import annotations

import logging
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
from p2p import wire

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# A handshake is three small messages; anything slower is a broken or hostile peer.
HANDSHAKE_TIMEOUT_S = 10.0
RECEIVE_CHUNK = 64 * 1024


class SessionError(Exception):
    """The session broke: peer gone, garbage, failed authentication. One-line message."""


class SecureConnection:
    """One authenticated, encrypted connection carrying `wire` messages."""

    def __init__(self, stream: trio.abc.Stream, channel: FrameChannel, remote_peer_id: str) -> None:
        self._stream = stream
        self._channel = channel
        self.remote_peer_id = remote_peer_id
        self._send_lock = trio.Lock()

    async def send(self, msg: wire.Message) -> None:
        async with self._send_lock:
            data = self._channel.encrypt(wire.encode(msg))
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SessionError(f"connection to {self.remote_peer_id[:12]} lost") from exc

    async def receive(self) -> wire.Message | None:
        """Next message, or None when the peer closed cleanly between frames."""
        while True:
            try:
                frame = self._channel.next_frame()
            except FrameError as exc:
                raise SessionError(f"bad frame: {exc}") from exc
            if frame is not None:
                try:
                    return wire.decode(frame)
                except wire.ProtocolError as exc:
                    raise SessionError(f"bad message: {exc}") from exc
            try:
                data = await self._stream.receive_some(RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SessionError("connection lost") from exc
            if not data:
                if self._channel.buffered:
                    raise SessionError("connection closed in the middle of a frame")
                return None
            try:
                self._channel.receive_data(bytes(data))
            except FrameError as exc:
                raise SessionError(f"bad frame: {exc}") from exc

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


async def _handshake(stream: trio.abc.Stream, hs: SecureHandshake, first: bytes | None) -> bytes:
    """Drive the handshake; returns bytes that arrived after it (the first frames)."""
    reader = HandshakeReader()
    if first is not None:
        await stream.send_all(encode_handshake_message(first))
    while not hs.complete:
        msg = reader.next_message()
        if msg is None:
            data = await stream.receive_some(RECEIVE_CHUNK)
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


async def connect(address: str, identity: Identity, expected_peer_id: str) -> SecureConnection:
    """Open a session to *address* ("host:port") and insist the responder is *expected_peer_id*."""
    host, _, port = address.rpartition(":")
    try:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            stream = await trio.open_tcp_stream(host, int(port))
    except (OSError, trio.TooSlowError) as exc:
        raise SessionError(f"cannot connect to {address}: {exc or 'timed out'}") from exc
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            hs = SecureHandshake(identity, initiator=True, expected_peer_id=expected_peer_id)
            return await _secure(stream, hs, hs.start())
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, (HandshakeFailed, FrameError)):
            raise SessionError(f"handshake with {address} failed: {exc}") from exc
        if isinstance(exc, trio.TooSlowError):
            raise SessionError(f"handshake with {address} timed out") from exc
        if isinstance(exc, (trio.BrokenResourceError, OSError)):
            raise SessionError(f"connection to {address} lost during the handshake") from exc
        raise


Handler = Callable[[SecureConnection], Awaitable[None]]


async def _serve_one(identity: Identity, handler: Handler, stream: trio.SocketStream) -> None:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        peer = "?"
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            conn = await _secure(stream, SecureHandshake(identity, initiator=False), None)
    except (
        HandshakeFailed,
        FrameError,
        trio.TooSlowError,
        trio.BrokenResourceError,
        OSError,
    ) as exc:
        log.info("handshake from %s refused: %s", peer, exc or "timed out")
        await trio.aclose_forcefully(stream)
        return
    try:
        await handler(conn)
    except SessionError as exc:
        log.info("session with %s ended: %s", conn.remote_peer_id[:12], exc)
    except Exception:  # one connection's bug must not take the accept loop down
        log.exception("session handler failed")
    finally:
        await conn.aclose()


async def serve_sessions(
    identity: Identity,
    host: str,
    port: int,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    await trio.serve_listeners(partial(_serve_one, identity, handler), listeners)
