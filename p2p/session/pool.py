"""Established sessions kept per peer and shared by concurrent requests.

A second request to the same node pays no handshake. One reader task per connection routes each
incoming message to its request by id; a connection with no request for `IDLE_CLOSE_S` closes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import trio

from crypto.identity import Identity
from p2p.protocol import wire
from p2p.protocol.requests_client import RequestClient
from p2p.session.local import Connection, local_pair
from p2p.session.secure import SessionError, connect

IDLE_CLOSE_S = 60.0

Inbox = trio.MemoryReceiveChannel[wire.Message | SessionError]


class MultiplexedSession:
    """The trio loop around `RequestClient`: one reader task routes each answer to the inbox of
    its request; the request rules (ids, finals, cancels, what to ignore) are the machine's."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.closed = False
        self.requests = RequestClient()
        self._routes: dict[int, trio.MemorySendChannel[wire.Message | SessionError]] = {}

    @property
    def peer_id(self) -> str:
        return self.conn.remote_peer_id

    async def run(self, idle_close_s: float = IDLE_CLOSE_S) -> None:
        """Route messages until the peer closes, the connection breaks, or it idles out."""
        reason = "node closed the connection"
        try:
            heard = trio.current_time()
            while True:
                # One scope for many messages (as in client/token_stream.py's receive_answer):
                # when it fires, the session closes only if nothing arrived for idle_close_s and
                # no request is open.
                with trio.CancelScope(deadline=heard + idle_close_s):
                    while True:
                        msg = await self.conn.receive()
                        if msg is None:
                            return
                        heard = trio.current_time()
                        await self._route(msg)
                if trio.current_time() >= heard + idle_close_s:
                    if not self._routes:
                        reason = "idle"
                        return
                    heard = trio.current_time()  # a request is open: wait another period
        except SessionError as exc:
            reason = str(exc)
        finally:
            self.closed = True
            for route in self._routes.values():
                route.send_nowait(SessionError(reason))
            with trio.CancelScope(shield=True):
                await self.conn.aclose()

    async def _route(self, msg: wire.Received) -> None:
        event = self.requests.receive(msg)
        if event is not None:
            route = self._routes.get(event.id)
            if route is not None:
                route.send_nowait(event)
        for out in self.requests.take_outgoing():
            await self.conn.send(out)

    @asynccontextmanager
    async def request(self, msg: wire.Generate) -> AsyncIterator[tuple[int, Inbox]]:
        """Send *msg* under a fresh id; yield (id, inbox). Leaving early sends `cancel`."""
        if self.closed:
            raise SessionError("session closed")
        opened = self.requests.start(msg)
        rid = opened.id
        send, receive = trio.open_memory_channel[wire.Message | SessionError](math.inf)
        self._routes[rid] = send
        try:
            await self.conn.send(opened)
            yield rid, receive
        finally:
            self._routes.pop(rid, None)
            cancel = self.requests.close(rid)
            if cancel is not None and not self.closed:
                with trio.CancelScope(shield=True), trio.move_on_after(1), suppress(SessionError):
                    await self.conn.send(cancel)


class SessionPool:
    def __init__(
        self,
        identity: Identity,
        nursery: trio.Nursery,
        *,
        psk: bytes | None = None,
        local: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        """`local`: the node's own connection handler, when this pool belongs to a node (its
        `--api` gateway); requests the ranking sends to the node itself then stay in-process."""
        self._identity = identity
        self._local = local
        self._psk = psk
        self._nursery = nursery
        self._sessions: dict[str, MultiplexedSession] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.handshakes = 0  # how many new sessions were opened (reuse is visible in tests)

    async def get(self, peer_id: str, address: str) -> MultiplexedSession:
        lock = self._locks.setdefault(peer_id, trio.Lock())
        async with lock:
            session = self._sessions.get(peer_id)
            if session is not None and not session.closed:
                return session
            if self._local is not None and peer_id == self._identity.peer_id:
                conn, node_side = local_pair(peer_id)
                self._nursery.start_soon(self._serve_local, node_side)
                session = MultiplexedSession(conn)
            else:
                session = MultiplexedSession(
                    await connect(address, self._identity, peer_id, psk=self._psk)
                )
                self.handshakes += 1
            self._sessions[peer_id] = session
            self._nursery.start_soon(session.run)
            return session

    async def _serve_local(self, conn: Connection) -> None:
        assert self._local is not None
        try:
            await self._local(conn)
        finally:
            await conn.aclose()

    def drop(self, peer_id: str) -> None:
        """Forget a session that misbehaved, so the next request dials again."""
        self._sessions.pop(peer_id, None)
