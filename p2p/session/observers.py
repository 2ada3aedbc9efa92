"""Who a node talks to over TCP, for p2p/reach/strangers.py: a dial-back proves that strangers
reach the node only when it comes from a host the node never sent anything to.

- `DIAL_OBSERVER`: a context variable told the host of every outbound TCP connection
  (`secure.open_tcp`) made by the tasks of the node that set it. A context variable, so that
  every dial is seen whichever module makes it (sessions, relays, dial-backs, probes), and nodes
  sharing one process stay apart.
- `observing_accepts`: wraps the accept loop's per-connection handler so that an observer is told
  each inbound connection's source host and the local address it arrived at, before anything is
  read (`secure.serve_sessions(on_accept=...)`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable

import trio

DIAL_OBSERVER: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "gpunet_dial_observer", default=None
)

# (source host, local address) of an inbound connection.
AcceptObserver = Callable[[str, str], None]
StreamHandler = Callable[[trio.SocketStream], Awaitable[None]]


def note_dial(host: str) -> None:
    """Tell this task's dial observer, if any, that a connection to *host* is being opened
    (the SYN alone opens an address-filtering NAT to that host)."""
    observer = DIAL_OBSERVER.get()
    if observer is not None:
        observer(host)


def observing_accepts(serve_one: StreamHandler, on_accept: AcceptObserver | None) -> StreamHandler:
    """*serve_one*, telling *on_accept* first where each connection comes from."""
    if on_accept is None:
        return serve_one
    observer = on_accept

    async def serve(stream: trio.SocketStream) -> None:
        try:
            peer, local = stream.socket.getpeername(), stream.socket.getsockname()
        except OSError:  # gone already: the handler deals with it
            pass
        else:
            observer(str(peer[0]), str(local[0]))
        await serve_one(stream)

    return serve
