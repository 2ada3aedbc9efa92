"""The client side of the requests on one connection, as a state machine (h11's shape).

`start` gives a request a fresh id and returns the message to send; the server's messages go in
with `receive`, which returns those the caller must see (the answers of its open requests, the
pong of its ping) and drops the rest; `close` ends the caller's interest in a request and returns
the `Cancel` to send when the server still owes it an answer. No I/O, no clock: the session's
trio loop (`p2p/session/pool.py`) moves the messages.

The rules:

- Ids are fresh per connection (1, 2, ...), never reused, so a late answer of a finished request
  can never be taken for a new one's.
- A request is open until its final message (`Done` or `Error`) arrives; a token or a final for an
  id that is not open (never opened, already finished, closed by the caller) is ignored and
  counted, as is anything a server does not send (generate, cancel, ping): the server's mistake
  costs it nothing here but is visible in `ignored` / `unexpected`.
- A message invalid past its id (`wire.Malformed`) for an open request ends that request with an
  `internal` error (the node misbehaved; another may not) and queues a `Cancel` for it, so the
  server stops too; the other requests on the connection go on.
"""

from __future__ import annotations

import attrs

from p2p.errors import ErrorCode
from p2p.protocol.request_events import ClientEvent, LocalProtocolError
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


class RequestClient:
    def __init__(self) -> None:
        self._next_id = 1
        self._open: set[int] = set()  # started, final not yet received
        self._answered: set[int] = set()  # final received, caller not yet closed
        self._pings: set[int] = set()
        self._outgoing: list[Message] = []
        # Counters for logs, metrics and tests.
        self.ignored = 0  # answers for ids that are not open
        self.unexpected = 0  # messages a server does not send

    @property
    def open_requests(self) -> int:
        """Requests the caller has not closed yet, answered or not."""
        return len(self._open) + len(self._answered)

    def start(self, request: Request) -> Request:
        """*request* under a fresh id: the message to send."""
        rid = self._take_id()
        self._open.add(rid)
        return attrs.evolve(request, id=rid)

    def ping(self) -> Ping:
        rid = self._take_id()
        self._pings.add(rid)
        return Ping(rid)

    def is_answered(self, request_id: int) -> bool:
        return request_id in self._answered

    def receive(self, msg: Received) -> ClientEvent | None:
        """Take one message from the server; what the caller must see, if anything."""
        # Tokens, then Done for a generation; one final answer for every other request.
        if isinstance(msg, Answer):
            if msg.id not in self._open:
                self.ignored += 1
                return None
            if isinstance(msg, Final):
                self._finish(msg.id)
            return msg
        if isinstance(msg, Pong):
            if msg.id not in self._pings:
                self.ignored += 1
                return None
            self._pings.discard(msg.id)
            return msg
        if isinstance(msg, Malformed):
            if msg.id not in self._open:
                self.ignored += 1
                return None
            self._finish(msg.id)
            self._outgoing.append(Cancel(msg.id))
            what = msg.tag or "message"
            text = f"node sent an invalid {what:.20}: {msg.reason}"
            return Error(msg.id, ErrorCode.INTERNAL, text)
        self.unexpected += 1
        return None

    def close(self, request_id: int) -> Cancel | None:
        """The caller is done with *request_id*; the `Cancel` to send if it is still open."""
        if request_id in self._open:
            self._open.discard(request_id)
            return Cancel(request_id)
        if request_id in self._answered:
            self._answered.discard(request_id)
            return None
        raise LocalProtocolError(f"request {request_id} was not started or is already closed")

    def take_outgoing(self) -> list[Message]:
        """Messages the protocol itself wants sent (cancels of broken requests), in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _finish(self, request_id: int) -> None:
        self._open.discard(request_id)
        self._answered.add(request_id)
