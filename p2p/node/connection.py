"""The trio loop around `RequestServer`: one session's requests, each served in its own task.

The request rules (ids, the per-connection cap, cancel, ping, one final message per request,
what a client may not send) are the state machine's (`p2p/protocol/requests_server.py`); this loop
only moves messages, starts a task per request and cancels it when the machine says so. It tells
the connection how many requests are live after each change, which is what the node's session
deadlines and eviction go by (`p2p/protocol/session_table.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress

import trio

from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.protocol.request_events import RequestCancelled, RequestStarted
from p2p.protocol.requests_server import MAX_REQUESTS_PER_CONNECTION, RequestServer
from p2p.session.local import Connection
from p2p.session.secure import SessionError


class Reply:
    """Where the answers of one request go: tokens, then one final message."""

    def __init__(self, conn: Connection, requests: RequestServer, request_id: int) -> None:
        self._conn = conn
        self._requests = requests
        self.request_id = request_id
        self.finished = False  # its final message was handed over

    @property
    def peer_id(self) -> str:
        return self._conn.remote_peer_id

    async def send(self, msg: wire.Answer) -> None:
        out = self._requests.send(msg)  # LocalProtocolError on a second final: our bug
        if isinstance(msg, wire.Final):
            self.finished = True
        if out is not None:
            await self._conn.send(out)

    async def fail(self, code: ErrorCode, text: str) -> None:
        await self.send(wire.Error(self.request_id, code, text))


Serve = Callable[[wire.Request, Reply], Awaitable[None]]


async def serve_connection(
    conn: Connection, serve: Serve, *, max_requests: int = MAX_REQUESTS_PER_CONNECTION
) -> None:
    """Serve the requests of *conn* with *serve* until the client closes it; then stop them."""
    requests = RequestServer(max_requests)
    scopes: dict[int, trio.CancelScope] = {}
    async with trio.open_nursery() as nursery:
        while (msg := await conn.receive()) is not None:
            event = requests.receive(msg)
            for out in requests.take_outgoing():
                await conn.send(out)
            if isinstance(event, RequestStarted):
                scope = scopes[event.request.id] = trio.CancelScope()
                conn.requests_changed(requests.live_requests)
                nursery.start_soon(_serve_one, conn, requests, serve, event.request, scope, scopes)
            elif isinstance(event, RequestCancelled) and event.id in scopes:
                scopes[event.id].cancel()
        # The client closed the connection: stop generating for it now.
        requests.peer_closed()
        nursery.cancel_scope.cancel()


async def _serve_one(
    conn: Connection,
    requests: RequestServer,
    serve: Serve,
    msg: wire.Request,
    scope: trio.CancelScope,
    scopes: dict[int, trio.CancelScope],
) -> None:
    try:
        with scope:
            await serve(msg, Reply(conn, requests, msg.id))
    except SessionError:
        pass  # the client went away; the loop of the connection ends too
    finally:
        scopes.pop(msg.id, None)
        missing = requests.end(msg.id)
        conn.requests_changed(requests.live_requests)
        if missing is not None:  # `serve` returned without a final message: still one
            with suppress(SessionError):
                await conn.send(missing)
