"""An in-process connection between a node's own gateway and the node.

`gpunet node --api` serves the OpenAI API from the node's process. When the ranking picks the
node itself, its requests need neither a Noise handshake nor encryption nor a loopback socket:
each of those costs CPU per token on the same cores llama.cpp decodes on. A `LocalConnection`
pair carries the same `wire` messages over trio memory channels, so the node's request handling
(admission, cancellation, draining) is exactly what a remote peer gets.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

from p2p.protocol import wire
from p2p.session.secure import SessionError


class Connection(Protocol):
    """What a session carries: `wire` messages between two authenticated peers."""

    @property
    def remote_peer_id(self) -> str: ...

    async def send(self, msg: wire.Message) -> None: ...

    async def receive(self) -> wire.Received | None:
        """The next message (`wire.Malformed` for one invalid past its id); None once closed."""
        ...

    async def aclose(self) -> None: ...

    def requests_changed(self, live: int) -> None:
        """The server's request layer reports its *live* requests after each change: what the
        node's session deadlines and eviction go by (p2p/protocol/session_table.py)."""
        ...


class LocalConnection:
    def __init__(
        self,
        remote_peer_id: str,
        send: trio.MemorySendChannel[wire.Message],
        receive: trio.MemoryReceiveChannel[wire.Message],
    ) -> None:
        self._remote = remote_peer_id
        self._send = send
        self._receive = receive

    @property
    def remote_peer_id(self) -> str:
        return self._remote

    async def send(self, msg: wire.Message) -> None:
        try:
            self._send.send_nowait(msg)  # unbounded, as a socket's buffer is to the writer
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise SessionError("local connection is closed") from exc

    async def receive(self) -> wire.Message | None:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    def requests_changed(self, live: int) -> None:
        pass  # the node's own gateway: one connection per process, never hoarded

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def local_pair(peer_id: str) -> tuple[LocalConnection, LocalConnection]:
    """(client side, node side) of a connection from a node to itself."""
    to_node_send, to_node_receive = trio.open_memory_channel[wire.Message](math.inf)
    to_client_send, to_client_receive = trio.open_memory_channel[wire.Message](math.inf)
    return (
        LocalConnection(peer_id, to_node_send, to_client_receive),
        LocalConnection(peer_id, to_client_send, to_node_receive),
    )
