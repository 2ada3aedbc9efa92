"""The DHT as trio code sees it: publish signed records, find the records under a key.

`DhtServer` is kademlia's `Server` with our protocol and storage (asyncio side); `Dht` is the thin
trio facade around it, reached through `p2p.aio_bridge`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node

from crypto.identity import dht_node_id
from p2p.aio_bridge import open_asyncio_loop, run_aio
from p2p.dht_protocol import GpunetProtocol, sanitize_value_answer, valid_id
from p2p.record_store import RecordStore
from p2p.records import (
    CapabilityRecord,
    RecordError,
    SignedRecord,
    dht_digest,
    newest_per_peer,
    open_record,
)

log = logging.getLogger(__name__)

# Upstream waits 5 s for every RPC. On the paths a user waits on (bootstrap, lookups) 3 s is
# plenty for an answer from anywhere on Earth and keeps "nobody reachable" errors prompt.
RPC_TIMEOUT_S = 3.0


class DhtServer(Server):  # type: ignore[misc]
    def __init__(
        self, node_id: bytes, *, rpc_timeout: float = RPC_TIMEOUT_S, client_mode: bool = False
    ) -> None:
        super().__init__(ksize=20, alpha=3, node_id=node_id, storage=RecordStore())
        self.rpc_timeout = rpc_timeout
        self.client_mode = client_mode

    def _create_protocol(self) -> GpunetProtocol:
        return GpunetProtocol(
            self.node,
            self.storage,
            self.ksize,
            wait_timeout=self.rpc_timeout,
            client_mode=self.client_mode,
        )

    async def _refresh_table(self) -> None:
        # Upstream also republishes every stored value hourly; our records are republished by
        # their owners (they expire in minutes), so only the bucket refresh remains.
        for node_id in self.protocol.get_refresh_ids():
            node = Node(node_id)
            nearest = self.protocol.router.find_neighbors(node, self.alpha)
            await NodeSpiderCrawl(self.protocol, node, nearest, self.ksize, self.alpha).find()

    async def bootstrap_node(self, addr: tuple[str, int]) -> Node | None:
        ok, answer = await self.protocol.ping(addr, self.protocol.wire_id)
        return Node(answer, addr[0], addr[1]) if ok and valid_id(answer) else None

    async def closest_nodes(self, dkey: bytes) -> list[Node]:
        node = Node(dkey)
        nearest = self.protocol.router.find_neighbors(node)
        if not nearest:
            return []
        found: list[Node] = await NodeSpiderCrawl(
            self.protocol, node, nearest, self.ksize, self.alpha
        ).find()
        return found

    async def store_everywhere(self, dkey: bytes, blob: bytes) -> int:
        nodes = await self.closest_nodes(dkey)
        results = await asyncio.gather(*(self.protocol.call_store(n, dkey, blob) for n in nodes))
        return sum(1 for ok, accepted in results if ok and accepted)

    async def collect(self, dkey: bytes) -> list[bytes]:
        """Union of the values held by the k closest nodes (not the majority's value)."""
        nodes = await self.closest_nodes(dkey)
        target = Node(dkey)
        answers = await asyncio.gather(*(self.protocol.call_find_value(n, target) for n in nodes))
        blobs: list[bytes] = []
        for answer in answers:
            ok, value = sanitize_value_answer(answer)
            if ok and isinstance(value, dict):
                blobs.extend(value["value"])
        return blobs


class Dht:
    """Trio-facing handle on a running DHT node."""

    def __init__(self, server: DhtServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop

    @property
    def port(self) -> int:
        sockname: Any = self._server.transport.get_extra_info("sockname")
        return int(sockname[1])

    @property
    def node_id(self) -> bytes:
        return bytes(self._server.node.id)

    @property
    def protocol(self) -> GpunetProtocol:
        proto: GpunetProtocol = self._server.protocol
        return proto

    @property
    def store(self) -> RecordStore:
        store: RecordStore = self._server.storage
        return store

    def routing_table_size(self) -> int:
        return sum(len(b.nodes) for b in self._server.protocol.router.buckets)

    async def bootstrap(self, addresses: list[tuple[str, int]]) -> int:
        """Join through *addresses*; returns how many nodes the join found (0: nobody answered)."""
        found = await run_aio(self._loop, self._server.bootstrap, addresses)
        return len(found)

    async def publish(self, signed: SignedRecord) -> int:
        """Store our record under every key it is bound to; returns accepted remote stores."""
        accepted = 0
        for key in signed.record.dht_keys():
            dkey = dht_digest(key)
            self.store.put_own(dkey, signed)
            accepted += await run_aio(self._loop, self._server.store_everywhere, dkey, signed.blob)
        return accepted

    async def find_records(self, key: str) -> list[CapabilityRecord]:
        """Verified, unexpired records under *key*, newest per signer (local copy included)."""
        dkey = dht_digest(key)
        now = time.time()
        blobs = [s.blob for s in self.store.get(dkey, now=now)]
        blobs += await run_aio(self._loop, self._server.collect, dkey)
        verified: list[SignedRecord] = []
        for blob in dict.fromkeys(blobs):
            try:
                signed = open_record(blob, now=now)
            except RecordError as exc:
                log.debug("ignoring record from a lookup: %s", exc)
                continue
            if key in signed.record.dht_keys():
                verified.append(signed)
        return newest_per_peer(verified)


@asynccontextmanager
async def open_dht(
    public_key: bytes,
    host: str,
    port: int,
    *,
    rpc_timeout: float = RPC_TIMEOUT_S,
    client_mode: bool = False,
) -> AsyncIterator[Dht]:
    """Run a DHT node on UDP host:port (port 0 picks a free one) for the duration of the block.

    In client mode the node looks things up and publishes nothing; peers keep it out of their
    routing tables.
    """
    async with open_asyncio_loop() as loop:
        server = DhtServer(
            dht_node_id(public_key), rpc_timeout=rpc_timeout, client_mode=client_mode
        )
        await run_aio(loop, server.listen, port, host)
        try:
            yield Dht(server, loop)
        finally:
            server.stop()


async def resolve(host: str, port: int) -> tuple[str, int]:
    """kademlia accepts only IP addresses; turn a host name into one (IPv4 first)."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    infos.sort(key=lambda i: i[0] != trio.socket.AF_INET)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    return str(infos[0][4][0]), port
