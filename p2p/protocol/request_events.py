"""What the request state machines tell their callers, and the one error that is our own bug.

`RequestServer` turns a client's messages into `RequestStarted` / `RequestCancelled`;
`RequestClient` passes the answers of open requests on as the `wire` messages themselves.
"""

from __future__ import annotations

import attrs

from p2p.protocol.wire import Answer, Pong, Request


class LocalProtocolError(RuntimeError):
    """This side broke the request protocol (a second final message, a token after the final,
    an answer for an id that was never opened): a bug in our code, never the peer's doing."""


@attrs.frozen
class RequestStarted:
    """Serve *request*: answer through `RequestServer.send`, then call `RequestServer.end`."""

    request: Request


@attrs.frozen
class RequestCancelled:
    """Stop serving request *id*: the client cancelled it, or it was refused midway (a duplicate
    id, an invalid message for it); whatever the server still sends for it is dropped."""

    id: int


ServerEvent = RequestStarted | RequestCancelled
# The client's events are the answers themselves: tokens, the final message, a pong.
ClientEvent = Answer | Pong
