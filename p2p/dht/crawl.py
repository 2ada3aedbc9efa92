"""Enumerate the reachable DHT: every node, its address and its own signed record.

The walk: every node that answers is asked `find_node` for its own id (its nearest neighbours)
and for its id with each of the top `depth` bits flipped (the contents of its farther buckets).
Every node is among the k nearest of its own neighbours, so asking each node about itself
already covers the network; the flipped targets make the walk jump across it quickly. Answers
are shape-checked contacts, not trusted: a contact counts as a node only when it answers. Then
each node is asked for its own record (`record` RPC), accepted only if `sha1(public key)` is the
node's id — so a node can describe only itself.

It uses the protocol's RPCs directly, not the lookup machinery, so crawling does not fill the
crawler's routing table or challenge every node it meets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from kademlia.node import Node

from p2p.dht.answers import sanitize_nodes_answer, valid_id
from p2p.dht.node import record_of_node
from p2p.dht.protocol import GpunetProtocol
from p2p.dht.records import CapabilityRecord

DEFAULT_DEPTH = 12
CONCURRENCY = 16
MAX_NODES = 100_000

Address = tuple[str, int]


@attrs.frozen
class CrawledNode:
    node_id: bytes
    address: Address
    answered: bool
    record: CapabilityRecord | None


def _flip(node_id: bytes, bit: int) -> bytes:
    value = int.from_bytes(node_id, "big") ^ (1 << (159 - bit))
    return value.to_bytes(20, "big")


async def crawl(
    protocol: GpunetProtocol,
    seeds: Iterable[Address],
    *,
    clock: Callable[[], float],
    depth: int = DEFAULT_DEPTH,
    concurrency: int = CONCURRENCY,
    max_nodes: int = MAX_NODES,
) -> list[CrawledNode]:
    """Walk the network from *seeds* (addresses); runs on the DHT's asyncio loop."""
    seen: dict[bytes, Address] = {}
    answered: set[bytes] = set()
    queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
    for addr in seeds:
        node_id = await protocol.ping_address(addr)
        if node_id is not None and node_id not in seen:
            seen[node_id] = addr
            queue.put_nowait((node_id, addr))

    async def ask(node_id: bytes, addr: Address) -> None:
        targets = [node_id, *(_flip(node_id, b) for b in range(depth))]
        results = await asyncio.gather(
            *(protocol.request(addr, "find_node", protocol.wire_id, t) for t in targets)
        )
        for result in results:
            ok, contacts = sanitize_nodes_answer(result)
            if not ok:
                continue
            answered.add(node_id)
            for cid, ip, port in contacts:
                if valid_id(cid) and cid not in seen and len(seen) < max_nodes:
                    seen[cid] = (ip, port)
                    queue.put_nowait((cid, (ip, port)))

    async def worker() -> None:
        while True:
            node_id, addr = await queue.get()
            try:
                await ask(node_id, addr)
            finally:
                queue.task_done()

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await queue.join()
    finally:
        for w in workers:
            w.cancel()

    async def record(node_id: bytes, addr: Address) -> CrawledNode:
        rec = None
        if node_id in answered:
            ok, blob = await protocol.call_record(Node(node_id, addr[0], addr[1]))
            rec = record_of_node(blob, node_id, now=clock()) if ok else None
        return CrawledNode(node_id, addr, node_id in answered, rec)

    limit = asyncio.Semaphore(concurrency)

    async def bounded(node_id: bytes, addr: Address) -> CrawledNode:
        async with limit:
            return await record(node_id, addr)

    return list(await asyncio.gather(*(bounded(i, a) for i, a in seen.items())))


def summarize(nodes: Iterable[CrawledNode]) -> dict[str, Any]:
    """Nodes, GPUs, total VRAM, and the number of providers of each model (by name)."""
    nodes = list(nodes)
    records = [n.record for n in nodes if n.record is not None]
    models: dict[str, int] = {}
    for r in records:
        for m in {m.name.lower() for m in r.models}:
            models[m] = models.get(m, 0) + 1
    return {
        "nodes": len(nodes),
        "answered": sum(n.answered for n in nodes),
        "with_record": len(records),
        "gpus": sum(len(r.gpus) for r in records),
        "vram_total_bytes": sum(g.vram_total for r in records for g in r.gpus),
        "vram_free_bytes": sum(g.vram_free for r in records for g in r.gpus),
        "models": dict(sorted(models.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
