"""The DHT as trio code sees it: publish signed records, find the records under a key.

`DhtServer` is kademlia's `Server` with our protocol and storage (asyncio side); `Dht` is the thin
trio facade around it, reached through `p2p.dht.aio_bridge`.

Upstream `Server` methods that are unsafe for us are overridden to refuse: `get`/`set`/
`set_digest` (majority-value crawl that raises on unhashable values and writes unvalidated values
back; keys `1` and `"1"` collide), `save_state`/`load_state` (pickle). `refresh_table` keeps its
interval on every cycle (upstream applies the argument to the first one only), and node ids
always come from keys (upstream draws them from `random`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import trio
from kademlia.network import Server
from kademlia.node import Node

from crypto.identity import Identity, dht_node_id
from p2p import metrics
from p2p.dht.aio_bridge import open_asyncio_loop, run_aio
from p2p.dht.contact_proofs import CLIENT_ID
from p2p.dht.datagrams import ATTEMPTS
from p2p.dht.lookup import CountingNodeCrawl, RecordCrawl
from p2p.dht.protocol import GpunetProtocol
from p2p.dht.rate_limit import SourceRateLimiter
from p2p.dht.record_store import RecordStore
from p2p.dht.records import (
    CapabilityRecord,
    RecordError,
    SignedRecord,
    dht_digest,
    live,
    newest_per_peer,
    open_record,
)

log = logging.getLogger(__name__)

# Upstream waits 5 s for every RPC. On the paths a user waits on (bootstrap, lookups) 3 s is
# plenty for an answer from anywhere on Earth and keeps "nobody reachable" errors prompt.
RPC_TIMEOUT_S = 3.0
# Buckets without a lookup for this long are refreshed (upstream: 1 h, first cycle only). Records
# live minutes, so the table must follow churn on the same scale.
REFRESH_INTERVAL_S = 600.0
# The closest nodes a publish found, per key, kept for a republish that may reuse them (a load
# change, p2p/node/load_refresh.py: stores without a crawl, half the datagrams). Our own keys
# only (a record is bound to at most 66), so a small bound suffices.
MAX_REMEMBERED_CLOSEST = 128


class DhtServer(Server):  # type: ignore[misc]
    def __init__(
        self,
        node_id: bytes,
        *,
        identity: Identity | None = None,
        network_id: bytes | None = None,
        rpc_timeout: float = RPC_TIMEOUT_S,
        client_mode: bool = False,
        clock: Callable[[], float] = time.time,
        rate_limiter: SourceRateLimiter | None = None,
        storage: RecordStore | None = None,
        require_proofs: bool = True,
    ) -> None:
        if not (isinstance(node_id, bytes) and len(node_id) == 20):
            raise ValueError("node id must be 20 bytes (sha1 of the public key)")
        if identity is not None and dht_node_id(identity.public_key) != node_id:
            raise ValueError("node id is not sha1 of the identity's public key")
        super().__init__(ksize=20, alpha=3, node_id=node_id, storage=storage or RecordStore())
        self.identity = identity
        self.network_id = network_id
        self.rpc_timeout = rpc_timeout
        self.client_mode = client_mode
        self.clock = clock
        self.rate_limiter = rate_limiter
        self.require_proofs = require_proofs
        self.refresh_interval = REFRESH_INTERVAL_S
        self._refreshing: set[asyncio.Future[Any]] = set()
        self._closest: dict[bytes, tuple[float, list[Node]]] = {}

    protocol_class: type[GpunetProtocol] = GpunetProtocol

    def _create_protocol(self) -> GpunetProtocol:
        return self.protocol_class(
            self.node,
            self.storage,
            self.ksize,
            wait_timeout=self.rpc_timeout,
            client_mode=self.client_mode,
            identity=self.identity,
            network_id=self.network_id,
            clock=self.clock,
            rate_limiter=self.rate_limiter,
            require_proofs=self.require_proofs,
        )

    # --- upstream behaviour replaced ------------------------------------------------------

    def refresh_table(self, interval: float | None = None) -> None:
        if interval is not None:
            self.refresh_interval = interval
        task = asyncio.ensure_future(self._refresh_table())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)
        loop = asyncio.get_running_loop()
        self.refresh_loop = loop.call_later(self.refresh_interval, self.refresh_table)

    async def _refresh_table(self) -> None:
        # Upstream also republishes every stored value hourly; our records are republished by
        # their owners (they expire in minutes), so only the bucket refresh remains.
        stale = time.monotonic() - self.refresh_interval
        for bucket in self.protocol.router.buckets:
            if bucket.last_updated >= stale:
                continue
            node = Node(_random_id_in(bucket.range))
            nearest = self.protocol.router.find_neighbors(node, self.alpha)
            await CountingNodeCrawl(self.protocol, node, nearest, self.ksize, self.alpha).find()

    def stop(self) -> None:
        super().stop()
        for task in self._refreshing:
            task.cancel()
        if self.protocol is not None:
            self.protocol.stop()

    async def get(self, key: object) -> NoReturn:
        raise NotImplementedError("use collect(): records are merged, not majority-voted")

    async def set(self, key: object, value: object) -> NoReturn:
        raise NotImplementedError("use store_everywhere() with a signed record")

    async def set_digest(self, dkey: object, value: object) -> NoReturn:
        raise NotImplementedError("use store_everywhere() with a signed record")

    def save_state(self, fname: object) -> NoReturn:
        raise NotImplementedError("upstream state files are pickle; gpunet keeps no DHT state")

    def save_state_regularly(self, fname: object, frequency: object = None) -> NoReturn:
        raise NotImplementedError("upstream state files are pickle; gpunet keeps no DHT state")

    @classmethod
    async def load_state(cls, *args: object, **kwargs: object) -> NoReturn:
        raise NotImplementedError("upstream state files are pickle; gpunet keeps no DHT state")

    # --- joining and lookups ------------------------------------------------------------

    async def bootstrap_node(self, addr: tuple[str, int]) -> Node | None:
        node_id = await self.protocol.ping_address(addr)
        if node_id is None:
            return None
        node = Node(node_id, addr[0], addr[1])
        return node if await self.protocol.verify(node) else None

    async def bootstrap(self, addrs: list[tuple[str, int]]) -> list[Node]:
        """Join through *addrs*: only peers that prove their id start the crawl. Returns the
        nodes found; the challenges the crawl started are awaited, so the table is filled."""
        gathered = await asyncio.gather(*(self.bootstrap_node(a) for a in addrs))
        nodes = [n for n in gathered if n is not None]
        if not nodes:
            return []
        found: list[Node] = []
        for _ in range(ATTEMPTS):  # a lost answer can leave the first crawl with nobody
            found = await CountingNodeCrawl(
                self.protocol, self.node, nodes, self.ksize, self.alpha
            ).find()
            if len(found) > len(nodes):
                break
        await self.protocol.pending_verifications()
        return found

    async def closest_nodes(self, dkey: bytes) -> list[Node]:
        node = Node(dkey)
        nearest = self.protocol.router.find_neighbors(node)
        if not nearest:
            return []
        found: list[Node] = await CountingNodeCrawl(
            self.protocol, node, nearest, self.ksize, self.alpha
        ).find()
        return found

    async def store_everywhere(self, dkey: bytes, blob: bytes, reuse_closest_s: float = 0.0) -> int:
        """Store at the k closest nodes that prove their id; returns how many accepted.

        With *reuse_closest_s*, the closest nodes an earlier store found at most that long ago
        are stored at again without a new crawl (a republish soon after a full one)."""
        now = time.monotonic()
        hit = self._closest.get(dkey)
        if reuse_closest_s > 0 and hit is not None and hit[1] and now - hit[0] <= reuse_closest_s:
            nodes = hit[1]
        else:
            nodes = await self.closest_nodes(dkey)
            if len(self._closest) >= MAX_REMEMBERED_CLOSEST and dkey not in self._closest:
                del self._closest[min(self._closest, key=lambda k: self._closest[k][0])]
            self._closest[dkey] = (now, nodes)
        results = await asyncio.gather(*(self.protocol.call_store(n, dkey, blob) for n in nodes))
        return sum(1 for ok, accepted in results if ok and accepted)

    async def store_all(self, dkeys: list[bytes], blob: bytes, reuse_closest_s: float = 0.0) -> int:
        """`store_everywhere` for every key at once: one publish costs one crawl's latency."""
        counts = await asyncio.gather(
            *(self.store_everywhere(k, blob, reuse_closest_s) for k in dkeys)
        )
        return sum(counts)

    def record_crawl(self, dkey: bytes, accept: Callable[[bytes], bool]) -> RecordCrawl | None:
        node = Node(dkey)
        nearest = self.protocol.router.find_neighbors(node)
        if not nearest:
            return None
        return RecordCrawl(self.protocol, node, nearest, self.ksize, self.alpha, accept=accept)

    async def collect(self, dkey: bytes, accept: Callable[[bytes], bool]) -> list[bytes]:
        """Union of the acceptable records the k closest nodes to *dkey* hold (not the
        majority's value)."""
        crawl = self.record_crawl(dkey, accept)
        return [] if crawl is None else await crawl.find()


def _random_id_in(bounds: tuple[int, int]) -> bytes:
    low, high = bounds
    value = low + secrets.randbelow(max(1, min(high, 2**160 - 1) - low + 1))
    return value.to_bytes(20, "big")


def record_acceptor(key: str, *, now: float) -> Callable[[bytes], bool]:
    """A memoised check that a blob is a valid, unexpired record bound to *key*."""
    seen: dict[bytes, bool] = {}

    def accept(blob: bytes) -> bool:
        verdict = seen.get(blob)
        if verdict is None:
            try:
                verdict = key in open_record(blob, now=now).record.dht_keys()
            except RecordError:
                verdict = False
            if len(seen) < 4096:
                seen[blob] = verdict
        return verdict

    return accept


def record_of_node(blob: object, node_id: bytes, *, now: float) -> CapabilityRecord | None:
    """A node's own record (`rpc_record`), accepted only if its key is the one behind the id;
    None for a withdrawn one too (the node is shutting down)."""
    try:
        signed = open_record(blob, now=now)
    except RecordError:
        return None
    if hashlib.sha1(signed.record.public_key).digest() != node_id or signed.record.withdrawn:
        return None
    return signed.record


class Dht:
    """Trio-facing handle on a running DHT node."""

    def __init__(self, server: DhtServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._withdrawn = False  # our withdrawal went out: no live record may follow it

    @property
    def server(self) -> DhtServer:
        return self._server

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

    def contacts(self) -> list[Node]:
        return [n for b in self._server.protocol.router.buckets for n in b.nodes.values()]

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Await an asyncio coroutine function on this node's loop (tools, tests)."""
        return await run_aio(self._loop, fn, *args)

    async def bootstrap(self, addresses: list[tuple[str, int]]) -> int:
        """Join through *addresses*; returns how many nodes the join found (0: nobody answered,
        or nobody proved the id it claims)."""
        found = await run_aio(self._loop, self._server.bootstrap, addresses)
        return len(found)

    def set_client_only(self, on: bool) -> None:
        """Join as a client-only member (a node nobody can dial, p2p/reach/): announce the
        light client's id, so no peer adds this node to its routing table (where its lookups
        would wait on a contact that never answers), and store nothing for others. Its own
        record is still published: stores from a light client are accepted like any."""
        protocol = self.protocol
        protocol.client_mode = on
        protocol.wire_id = CLIENT_ID if on else bytes(protocol.source_node.id)

    def observe_requests(self, observer: Callable[[str], None] | None) -> None:
        """Tell *observer* the host of every request this node sends (p2p/reach/strangers.py);
        it is called on the DHT's asyncio thread."""
        self.protocol.on_request_sent = observer

    async def ping(self, host: str, port: int) -> bool:
        """Whether a DHT node answers a ping at *host*:*port* (a dial-back's UDP half,
        p2p/reach/dial_back.py); the caller bounds the wait."""
        node_id = await run_aio(self._loop, self._server.protocol.ping_address, (host, port))
        return node_id is not None

    async def publish(self, signed: SignedRecord, *, reuse_closest_s: float = 0.0) -> int:
        """Store our record under every key it is bound to; returns accepted remote stores.
        *reuse_closest_s*: see `DhtServer.store_everywhere` (a republish of a load change).

        Once a withdrawal (`record.withdrawn`) is published, live records are not: a publish
        still under way when the node began to stop (a pause, a load change) must not bring the
        stopping node back with its higher seq."""
        if self._withdrawn and not signed.record.withdrawn:
            log.debug("not publishing seq %d: this node withdrew its record", signed.record.seq)
            return 0
        self._withdrawn = self._withdrawn or signed.record.withdrawn
        self.protocol.own_record = signed
        dkeys = [dht_digest(key) for key in signed.record.dht_keys()]
        for dkey in dkeys:
            self.store.put_own(dkey, signed)
        accepted: int = await run_aio(
            self._loop, self._server.store_all, dkeys, signed.blob, reuse_closest_s
        )
        return accepted

    async def find_records(self, key: str, *, withdrawn: bool = False) -> list[CapabilityRecord]:
        """Verified, unexpired records under *key*, newest per signer (local copy included);
        a signer whose newest record is a withdrawal (it stopped) is left out unless *withdrawn*
        (the dashboard shows such a node as offline).

        The union of the answers of every one of the k nodes closest to the key (`RecordCrawl`),
        not the first holder's: each holder's answer is a bounded, fair share of what it holds,
        and a crowd must fill all k of them to hide a record (issue #14)."""
        dkey = dht_digest(key)
        now = self._server.clock()
        accept = record_acceptor(key, now=now)
        blobs = [s.blob for s in self.store.get(dkey, now=now)]
        started = time.monotonic()
        blobs += await run_aio(self._loop, self._server.collect, dkey, accept)
        metrics.observe_dht_lookup(time.monotonic() - started)
        verified: list[SignedRecord] = []
        for blob in dict.fromkeys(blobs):
            if accept(blob):
                verified.append(open_record(blob, now=now))
        newest = newest_per_peer(verified)
        return newest if withdrawn else live(newest)


@asynccontextmanager
async def open_dht(
    key: bytes | Identity,
    host: str,
    port: int,
    *,
    identity: Identity | None = None,
    network_id: bytes | None = None,
    rpc_timeout: float = RPC_TIMEOUT_S,
    client_mode: bool = False,
    clock: Callable[[], float] = time.time,
    rate_limiter: SourceRateLimiter | None = None,
    require_proofs: bool = True,
) -> AsyncIterator[Dht]:
    """Run a DHT node on UDP host:port (port 0 picks a free one) for the duration of the block.

    *key* is the node's `Identity` (or its public key, with the identity passed as `identity=`).
    A full node needs the identity: it answers the challenge that proves its id, and admits to
    its routing table only contacts that proved theirs (*require_proofs*, off only in tests of
    the checks themselves). A light client (`client_mode=True`) needs only a public key; peers
    keep it out of their routing tables anyway.

    *clock* is the wall clock records are judged by (tests pass a fake one to expire records
    without sleeping).
    """
    if isinstance(key, Identity):
        identity = identity or key
        public_key = key.public_key
    else:
        public_key = key
    if identity is not None and identity.public_key != public_key:
        raise ValueError("identity does not match the public key")
    if identity is None and not client_mode:
        raise ValueError("a full DHT node needs its Identity to prove its id")
    server = DhtServer(
        dht_node_id(public_key),
        identity=identity,
        network_id=network_id,
        rpc_timeout=rpc_timeout,
        client_mode=client_mode,
        clock=clock,
        rate_limiter=rate_limiter,
        require_proofs=require_proofs,
    )
    async with serve_dht(server, host, port) as dht:
        yield dht


@asynccontextmanager
async def serve_dht(server: DhtServer, host: str, port: int) -> AsyncIterator[Dht]:
    """Run an already built *server* on UDP host:port (tests and tools build their own)."""
    async with open_asyncio_loop() as loop:
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
