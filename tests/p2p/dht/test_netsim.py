"""The simulated network (virtual time, no sockets) and the routing fix it found."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
from pathlib import Path
from types import ModuleType
from typing import Any

from kademlia.node import Node
from kademlia.routing import KBucket

from p2p.dht.netsim_transport import LinkModel, SimNetwork, VirtualTimeLoop
from p2p.dht.routing import GpunetRoutingTable

ROOT = Path(__file__).resolve().parents[3]


def _netsim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("netsim", ROOT / "tools/netsim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Pinger:
    async def call_ping(self, node: Node) -> None:
        return None


def test_find_neighbors_is_the_true_k_nearest_even_with_empty_buckets() -> None:
    """Upstream's traversal stopped at an empty bucket and returned nothing for some keys."""
    rng = random.Random(3)

    async def run() -> None:
        me = Node(rng.randbytes(20))
        table = GpunetRoutingTable(_Pinger(), 20, me)
        contacts = [Node(rng.randbytes(20), "127.0.0.1", 1000 + i) for i in range(300)]
        for c in contacts:
            table.add_contact(c)
        held = [n for b in table.buckets for n in b.nodes.values()]
        for _ in range(200):
            key = Node(rng.randbytes(20))
            want = sorted(held, key=lambda n: n.long_id ^ key.long_id)[:20]
            assert table.find_neighbors(key) == want
        # exclude by address, and never the key's own id
        first = held[0]
        assert first not in table.find_neighbors(Node(first.id), exclude=None)
        assert all(
            n.port != first.port for n in table.find_neighbors(Node(first.id), exclude=first)
        )

    asyncio.run(run())


def test_find_neighbors_crosses_empty_buckets() -> None:
    """The table a light client had when 2 % of simulated lookups failed: buckets of 0, 1, 20,
    0 and 0 contacts, and a key in the last one. Upstream answered no neighbours at all."""
    unit = 1 << 150
    table = GpunetRoutingTable(_Pinger(), 20, Node((5 * unit).to_bytes(20, "big")))
    bounds = [(0, 128), (128, 192), (192, 256), (256, 512), (512, 1024)]
    table.buckets = [KBucket(lo * unit, hi * unit, 20) for lo, hi in bounds]
    rng = random.Random(5)

    def contact(lo: int, hi: int, i: int) -> Node:
        value = rng.randrange(lo * unit, hi * unit)
        return Node(value.to_bytes(20, "big"), "127.0.0.1", 2000 + i)

    table.buckets[1].add_node(contact(128, 192, 0))
    for i in range(20):
        table.buckets[2].add_node(contact(192, 256, i + 1))
    key = Node((700 * unit).to_bytes(20, "big"))
    held = [n for b in table.buckets for n in b.nodes.values()]
    assert table.find_neighbors(key) == sorted(held, key=lambda n: n.long_id ^ key.long_id)[:20]


def test_virtual_time_runs_timeouts_instantly_and_in_order() -> None:
    loop = VirtualTimeLoop()
    order: list[tuple[str, float]] = []

    async def main() -> float:
        loop.call_later(3600, lambda: order.append(("hour", loop.time())))
        await asyncio.sleep(5)
        order.append(("five", loop.time()))
        await asyncio.sleep(4000)
        return loop.time()

    try:
        assert loop.run_until_complete(main()) == 4005
    finally:
        loop.close()
    assert order == [("five", 5), ("hour", 3600)]


def test_sim_network_delivers_with_latency_and_drops_for_the_dead() -> None:
    loop = VirtualTimeLoop()
    got: list[tuple[bytes, Any, float]] = []

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            got.append((data, addr, loop.time()))

    async def main() -> None:
        net = SimNetwork(loop, LinkModel(0.05, 0.05, 0.0), random.Random(1))
        a = net.attach(Sink(), ("127.0.0.1", 1))
        net.attach(Sink(), ("127.0.0.2", 1))
        a.sendto(b"hi", ("127.0.0.2", 1))
        a.sendto(b"nobody", ("127.0.0.3", 1))
        net.dead.add(("127.0.0.2", 1))
        a.sendto(b"dead", ("127.0.0.2", 1))
        await asyncio.sleep(1)
        assert net.dropped == 3  # "hi" was in flight when its receiver died

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert got == []


def test_small_simulated_network_finds_live_providers_with_a_quarter_dead() -> None:
    netsim = _netsim()
    args = argparse.Namespace(
        lookups=20,
        providers=8,
        models=4,
        latency_min=0.01,
        latency_max=0.1,
        loss=0.0,
        rpc_timeout=3.0,
    )
    loop = VirtualTimeLoop()
    try:
        row = loop.run_until_complete(netsim.scenario(args, 60, 0.25, seed=11))
    finally:
        loop.close()
    assert row["success"] == 1.0
    assert row["rounds_mean"] <= 4
