"""kademlia's protocol, hardened by subclassing (the package itself is not forked).

What changes against upstream kademlia 2.2.3 / rpcudp 5.0.1, and why:
- Every datagram is size-checked and parsed inside a try block, and the number of datagram tasks
  in flight is bounded: upstream spawns an unbounded task per datagram and lets a parse error
  escape into the loop's exception handler.
- `_timeout` and `_accept_response` skip futures already done: a trio-side cancellation cancels the
  future, and upstream's timeout would later call `set_result` on it (InvalidStateError, crash).
- `rpc_store` validates the record (signature, key binding, lifetime, size) and merges it into a
  per-signer slot; the return value tells the sender whether it was accepted.
- `rpc_find_value` returns a *list* of record blobs; our lookup takes the union over responders.
- `welcome_if_new` uses the stored 160-bit key as is (upstream hashes it a second time, so key
  hand-off to a newly joined close node was random).
- Replies from peers are shape-checked before the crawlers touch them, so an odd reply counts as no
  reply instead of raising inside a lookup.

Beware: rpcudp's `__getattr__` turns any missing attribute into a remote call, so a typo in a
`self.` name here becomes an RPC, not an AttributeError.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

import umsgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from p2p.record_store import RecordStore

log = logging.getLogger(__name__)

MAX_DATAGRAM = 16 * 1024  # requests are <= 8 KiB (rpcudp's own bound); answers are ours
MAX_ANSWER_DATAGRAM = 64 * 1024
MAX_TASKS_IN_FLIGHT = 256
MAX_CONTACTS_IN_ANSWER = 40
# Light clients (`ask`, `peers`, the gateway) send this id: they come and go within seconds, and
# a departed client in a routing table costs every later lookup an RPC timeout.
CLIENT_ID = bytes(20)


def valid_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 20


def _valid_contact(c: object) -> bool:
    if not (isinstance(c, (list, tuple)) and len(c) == 3):
        return False
    nid, ip, port = c
    if not (valid_id(nid) and isinstance(ip, str) and isinstance(port, int)):
        return False
    if not 0 < port < 65536:
        return False
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


def sanitize_nodes_answer(result: Any) -> tuple[bool, Any]:
    ok, answer = result
    if not ok:
        return result  # type: ignore[no-any-return]
    if (
        isinstance(answer, list)
        and len(answer) <= MAX_CONTACTS_IN_ANSWER
        and all(_valid_contact(c) for c in answer)
    ):
        return True, [tuple(c) for c in answer]
    return False, None


def sanitize_value_answer(result: Any) -> tuple[bool, Any]:
    ok, answer = result
    if ok and isinstance(answer, dict):
        blobs = answer.get("value")
        if isinstance(blobs, list) and all(isinstance(b, bytes) for b in blobs):
            return True, {"value": blobs}
        return False, None
    return sanitize_nodes_answer(result)


class GpunetProtocol(KademliaProtocol):  # type: ignore[misc]
    def __init__(
        self,
        source_node: Node,
        storage: RecordStore,
        ksize: int,
        *,
        wait_timeout: float,
        client_mode: bool = False,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self.wire_id = CLIENT_ID if client_mode else bytes(source_node.id)
        self._wait_timeout = wait_timeout
        self.record_store = storage
        self.tasks_in_flight = 0
        self.dropped_datagrams = 0
        self.refused_stores = 0
        self._handoffs: set[asyncio.Future[Any]] = set()

    # --- datagram intake -------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not 22 <= len(data) <= MAX_ANSWER_DATAGRAM or (
            data[:1] == b"\x00" and len(data) > MAX_DATAGRAM
        ):
            self.dropped_datagrams += 1
            return
        if self.tasks_in_flight >= MAX_TASKS_IN_FLIGHT:
            self.dropped_datagrams += 1
            return
        self.tasks_in_flight += 1
        task = asyncio.ensure_future(self._handle_datagram(data, addr))
        task.add_done_callback(self._task_done)

    def _task_done(self, _task: asyncio.Future[None]) -> None:
        self.tasks_in_flight -= 1

    async def _handle_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg_id = data[1:21]
            payload = umsgpack.unpackb(data[21:])
            if data[:1] == b"\x00":
                await self._accept_request(msg_id, payload, addr)
            elif data[:1] == b"\x01":
                self._accept_response(msg_id, payload, addr)
            else:
                self.dropped_datagrams += 1
        except Exception as exc:  # a stranger's garbage is an expected event
            self.dropped_datagrams += 1
            log.debug("dropped datagram from %s: %r", addr, exc)

    def _accept_response(self, msg_id: bytes, data: Any, address: tuple[str, int]) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is None:
            return
        future, timeout = entry
        timeout.cancel()
        if not future.done():
            future.set_result((True, data))

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    # --- RPC handlers (everything arriving here is hostile) -------------------------------

    def _contact(self, sender: tuple[str, int], nodeid: object) -> Node:
        if not valid_id(nodeid):
            raise ValueError("bad node id")
        return Node(nodeid, sender[0], sender[1])

    def rpc_ping(self, sender: tuple[str, int], nodeid: object) -> bytes:
        self.welcome_if_new(self._contact(sender, nodeid))
        return bytes(self.wire_id)

    def rpc_store(
        self, sender: tuple[str, int], nodeid: object, key: object, value: object
    ) -> bool:
        source = self._contact(sender, nodeid)
        if not valid_id(key):
            return False
        self.welcome_if_new(source)
        assert isinstance(key, bytes)
        accepted, reason = self.record_store.offer(key, value, now=time.time())
        if not accepted:
            self.refused_stores += 1
            log.debug("refused store from %s: %s", sender, reason)
        return accepted

    def rpc_find_node(
        self, sender: tuple[str, int], nodeid: object, key: object
    ) -> list[tuple[bytes, str, int]]:
        source = self._contact(sender, nodeid)
        if not valid_id(key):
            raise ValueError("bad key")
        self.welcome_if_new(source)
        neighbors = self.router.find_neighbors(Node(key), exclude=source)
        return [tuple(n) for n in neighbors]

    def rpc_find_value(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        source = self._contact(sender, nodeid)
        if not valid_id(key):
            raise ValueError("bad key")
        assert isinstance(key, bytes)
        blobs = self.record_store.answer(key, now=time.time())
        if not blobs:
            return self.rpc_find_node(sender, nodeid, key)
        self.welcome_if_new(source)
        return {"value": blobs}

    # --- outgoing calls, answers shape-checked --------------------------------------------

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self.find_node(address, self.wire_id, node_to_find.id)
        return self.handle_call_response(sanitize_nodes_answer(result), node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self.find_value(address, self.wire_id, node_to_find.id)
        return self.handle_call_response(sanitize_value_answer(result), node_to_ask)

    async def call_ping(self, node_to_ask: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        ok, answer = await self.ping(address, self.wire_id)
        result = (True, answer) if ok and valid_id(answer) else (False, None)
        return self.handle_call_response(result, node_to_ask)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        ok, answer = await self.store(address, self.wire_id, key, value)
        return self.handle_call_response((ok, answer is True), node_to_ask)

    def welcome_if_new(self, node: Node) -> None:
        if node.id == CLIENT_ID or not self.router.is_new_node(node):
            return
        for dkey, signed in self.record_store.items(now=time.time()):
            keynode = Node(dkey)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                this_closest = self.source_node.distance_to(keynode) < neighbors[0].distance_to(
                    keynode
                )
            if not neighbors or (new_node_close and this_closest):
                task = asyncio.ensure_future(self.call_store(node, dkey, signed.blob))
                self._handoffs.add(task)
                task.add_done_callback(self._handoffs.discard)
        self.router.add_contact(node)
