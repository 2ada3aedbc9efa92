"""The server side of the requests on one connection, as a state machine (h11's shape).

Messages from the client go in with `receive`, which returns what the caller must do
(`RequestStarted`, `RequestCancelled`) and queues the answers the protocol gives by itself
(pongs, refusals) for `take_outgoing`. The caller's answers go through `send`, which checks them
and returns the message to put on the wire. No I/O, no clock: the node's trio loop
(`p2p/node/runtime.py`) moves the messages.

The rules:

- A request lives from its `Generate` until the caller calls `end` (its task finished); its id is
  taken meanwhile. A `Generate` with a taken id is answered `bad_request` for that id, and if that
  request is still being served it is stopped: one id, one final message.
- At most `max_requests` live on one connection; the next is answered `busy` at once.
- `Cancel` of a live request stops it (`RequestCancelled`); of any other id it is ignored.
- `Ping` is answered `Pong` with its id.
- A message a client does not send (token, done, error, pong), or one invalid past its id
  (`wire.Malformed`), is answered `bad_request` for its id, and a live request of that id is
  stopped. Nothing a client sends closes the connection here: only a message whose id cannot be
  read does that, and that never reaches this object (`wire.decode` raises `ProtocolError`).
- Every request gets exactly one final message (`Done` or `Error`) unless the client cancelled
  it: a second final, or a token after it, is a `LocalProtocolError`; a request that ends without
  one gets an `internal` error from `end`.
"""

from __future__ import annotations

import enum

from p2p.errors import ErrorCode
from p2p.protocol.request_events import (
    LocalProtocolError,
    RequestCancelled,
    RequestStarted,
    ServerEvent,
)
from p2p.protocol.wire import (
    Answer,
    Cancel,
    Error,
    Final,
    Malformed,
    Message,
    Ping,
    Pong,
    Received,
    Request,
)

# A gateway multiplexes many users over one session, so one connection may carry many requests;
# 64 is four times the per-peer concurrency of admission (16), so the node's admission, not this
# cap, is what a busy gateway meets first.
MAX_REQUESTS_PER_CONNECTION = 64


class _State(enum.Enum):
    SERVING = "serving"  # started, no final message yet
    ANSWERED = "answered"  # its final message was sent; waiting for `end`
    STOPPED = "stopped"  # cancelled or refused midway; anything more for it is dropped


class RequestServer:
    def __init__(self, max_requests: int = MAX_REQUESTS_PER_CONNECTION) -> None:
        self.max_requests = max_requests
        self.peer_gone = False
        self._requests: dict[int, _State] = {}
        self._outgoing: list[Message] = []
        # Counters for logs, metrics and tests.
        self.refused = 0  # messages answered with an error by the protocol itself
        self.ignored = 0  # cancels of ids that are not live

    @property
    def live_requests(self) -> int:
        return len(self._requests)

    def receive(self, msg: Received) -> ServerEvent | None:
        """Take one message from the client; the event for the caller, if any."""
        if self.peer_gone:
            raise LocalProtocolError("receive() after peer_closed()")
        # Every request kind is served like a generation (a Score, an Embed, a share fetch, a
        # control op with one final answer).
        if isinstance(msg, Request):
            return self._generate(msg)
        if isinstance(msg, Cancel):
            return self._cancel(msg.id)
        if isinstance(msg, Ping):
            self._outgoing.append(Pong(msg.id))
            return None
        if isinstance(msg, Malformed):
            what = msg.tag or "message"
            return self._refuse(msg.id, ErrorCode.BAD_REQUEST, f"invalid {what:.20}: {msg.reason}")
        kind = type(msg).__name__.lower()
        return self._refuse(msg.id, ErrorCode.BAD_REQUEST, f"a client does not send {kind}")

    def send(self, msg: Answer) -> Message | None:
        """Check an answer of the caller's; the message to send, or None to drop it (its request
        was stopped, or the peer is gone). Raises `LocalProtocolError` on a misuse."""
        if not isinstance(msg, Answer):
            raise LocalProtocolError(f"a server does not send {type(msg).__name__}")
        state = self._requests.get(msg.id)
        if state is None:
            raise LocalProtocolError(f"request {msg.id} is not live")
        if state is _State.ANSWERED:
            raise LocalProtocolError(f"request {msg.id} already had its final message")
        if state is _State.STOPPED or self.peer_gone:
            return None
        if isinstance(msg, Final):
            self._requests[msg.id] = _State.ANSWERED
        return msg

    def end(self, request_id: int) -> Error | None:
        """The caller stopped serving *request_id*, which frees its id and its place. Returns the
        `internal` error to send when it had no final message and was not cancelled."""
        state = self._requests.pop(request_id, None)
        if state is None:
            raise LocalProtocolError(f"request {request_id} is not live")
        if state is _State.SERVING and not self.peer_gone:
            return Error(request_id, ErrorCode.INTERNAL, "the request ended without an answer")
        return None

    def peer_closed(self) -> None:
        """The connection is gone: nothing more will be sent or received on it."""
        self.peer_gone = True
        self._outgoing.clear()

    def take_outgoing(self) -> list[Message]:
        """The messages the protocol itself answered with since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def _generate(self, msg: Request) -> ServerEvent | None:
        if msg.id in self._requests:
            return self._refuse(msg.id, ErrorCode.BAD_REQUEST, "duplicate id: that one is live")
        if len(self._requests) >= self.max_requests:
            self.refused += 1
            self._outgoing.append(
                Error(msg.id, ErrorCode.BUSY, "too many requests on this connection")
            )
            return None
        self._requests[msg.id] = _State.SERVING
        return RequestStarted(msg)

    def _cancel(self, request_id: int) -> ServerEvent | None:
        if self._requests.get(request_id) is not _State.SERVING:
            self.ignored += 1
            return None
        self._requests[request_id] = _State.STOPPED
        return RequestCancelled(request_id)

    def _refuse(self, request_id: int, code: ErrorCode, text: str) -> ServerEvent | None:
        """Answer *request_id* with an error; stop its request if one is being served."""
        self.refused += 1
        self._outgoing.append(Error(request_id, code, text))
        if self._requests.get(request_id) is not _State.SERVING:
            return None
        self._requests[request_id] = _State.STOPPED
        return RequestCancelled(request_id)
