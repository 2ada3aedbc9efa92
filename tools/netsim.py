#!/usr/bin/env python3
"""Simulate a gpunet DHT of N nodes in one process: the real kademlia package and gpunet's
protocol, storage, id proofs and lookups, over `p2p.dht.netsim_transport` (virtual time, simulated
latency and loss, no sockets).

For each N and each fraction of dead nodes it builds a fresh network (nodes join one wave at a
time through random members, proving their ids as on the real network), has providers publish
signed records for a set of models, kills the chosen fraction of the other nodes without warning
(their entries stay in everyone's routing tables, as after a power cut), then runs provider
lookups, each from a fresh light client that joined through a random live node — what `gpunet
ask` does. It reports per lookup: query rounds, RPCs sent, virtual time, success (a live provider
of the model found) and completeness (share of the model's providers found).

    python tools/netsim.py                          # N in {100, 500, 2000} x dead in {0, .2, .4}
    python tools/netsim.py --nodes 300 --dead 0.3 --lookups 50 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.identity import Identity, dht_node_id
from p2p.dht.netsim_transport import LinkModel, SimNetwork, VirtualTimeLoop
from p2p.dht.node import DhtServer, record_acceptor
from p2p.dht.records import (
    MAX_TTL_S,
    CapabilityRecord,
    CpuEntry,
    ModelEntry,
    dht_digest,
    model_name_key,
    sign_record,
)

EPOCH = 1_700_000_000.0  # virtual wall clock = EPOCH + loop time
JOIN_WAVE = 20
LOOKUP_BATCH = 20


@attrs.define
class Sim:
    loop: VirtualTimeLoop
    net: SimNetwork
    rng: random.Random
    rpc_timeout: float
    nodes: list[DhtServer] = attrs.field(factory=list)
    next_ip: int = 1

    def clock(self) -> float:
        return EPOCH + self.loop.time()

    def spawn(self, identity: Identity, *, client: bool = False) -> DhtServer:
        server = DhtServer(
            dht_node_id(identity.public_key),
            identity=None if client else identity,
            client_mode=client,
            clock=self.clock,
            rpc_timeout=self.rpc_timeout,
        )
        ip = f"127.{self.next_ip >> 16 & 255}.{self.next_ip >> 8 & 255}.{self.next_ip & 255}"
        self.next_ip += 1
        server.protocol = server._create_protocol()
        server.transport = self.net.attach(server.protocol, (ip, 4000))
        return server

    def address(self, server: DhtServer) -> tuple[str, int]:
        addr: tuple[str, int] = server.transport.address
        return addr


def _record(identity: Identity, model: str, now: float) -> CapabilityRecord:
    sha = dht_digest(model).hex().ljust(64, "0")
    return CapabilityRecord(
        peer_id=identity.peer_id,
        public_key=identity.public_key,
        addresses=("127.255.0.1:8469",),
        software_version="gpunet/netsim",
        seq=int(now * 1000),
        issued_at=now,
        expires_at=now + MAX_TTL_S,  # lookups, not lifetimes, are measured here
        gpus=(),
        cpu=CpuEntry(cores=8, ram_bytes=16 << 30),
        models=(ModelEntry(sha, model, "llama", 1, "Q4_K_M", 2048, 0, 2),),
    )


async def build(sim: Sim, n: int) -> None:
    sim.nodes.append(sim.spawn(Identity.generate()))
    while len(sim.nodes) < n:
        wave = [sim.spawn(Identity.generate()) for _ in range(min(JOIN_WAVE, n - len(sim.nodes)))]
        joined = list(sim.nodes)
        await asyncio.gather(*(s.bootstrap([sim.address(sim.rng.choice(joined))]) for s in wave))
        sim.nodes.extend(wave)
    # let the last challenges and hand-offs finish
    await asyncio.gather(*(s.protocol.settle() for s in sim.nodes))


async def publish(sim: Sim, providers: list[DhtServer], models: list[str]) -> dict[str, set[str]]:
    serving: dict[str, set[str]] = {m: set() for m in models}

    async def one(server: DhtServer, model: str) -> None:
        identity = server.identity
        assert identity is not None
        signed = sign_record(_record(identity, model, sim.clock()), identity)
        dkeys = [dht_digest(k) for k in signed.record.dht_keys()]
        for dkey in dkeys:
            server.storage.put_own(dkey, signed)
        server.protocol.own_record = signed
        await server.store_all(dkeys, signed.blob)
        serving[model].add(identity.peer_id)

    await asyncio.gather(*(one(s, models[i % len(models)]) for i, s in enumerate(providers)))
    return serving


@attrs.frozen
class LookupResult:
    rounds: int
    messages: int
    seconds: float
    success: bool
    completeness: float


async def lookup(sim: Sim, live: list[DhtServer], model: str, serving: set[str]) -> LookupResult:
    client = sim.spawn(Identity.generate(), client=True)
    try:
        await client.bootstrap([sim.address(sim.rng.choice(live))])
        key = model_name_key(model)
        sent0, t0 = client.protocol.stats.rpcs_sent, sim.loop.time()
        now = sim.clock()
        crawl = client.record_crawl(dht_digest(key), record_acceptor(key, now=now))
        blobs = [] if crawl is None else await crawl.find()
        found = {r.peer_id for r in _open_all(blobs, now)}
        return LookupResult(
            rounds=0 if crawl is None else crawl.rounds,
            messages=client.protocol.stats.rpcs_sent - sent0,
            seconds=sim.loop.time() - t0,
            success=bool(found & serving),
            completeness=len(found & serving) / len(serving),
        )
    finally:
        client.stop()


def _all_records(providers: list[DhtServer]) -> list[CapabilityRecord]:
    return [p.protocol.own_record.record for p in providers if p.protocol.own_record]


def _open_all(blobs: list[bytes], now: float) -> list[CapabilityRecord]:
    from p2p.dht.records import open_record

    return [open_record(b, now=now).record for b in blobs]


async def scenario(args: argparse.Namespace, n: int, dead: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    net = SimNetwork(loop, LinkModel(args.latency_min, args.latency_max, args.loss), rng)
    sim = Sim(loop, net, rng, args.rpc_timeout)
    cpu0 = time.process_time()
    await build(sim, n)
    build_cpu = time.process_time() - cpu0
    models = [f"model-{i}" for i in range(args.models)]
    providers = rng.sample(sim.nodes, min(args.providers, n))
    serving = await publish(sim, providers, models)
    others = [s for s in sim.nodes if s not in providers]
    killed = rng.sample(others, round(dead * n))
    for s in killed:
        net.dead.add(sim.address(s))
    live = [s for s in sim.nodes if sim.address(s) not in net.dead]
    # lookups run LOOKUP_BATCH at a time: a client per lookup, as `gpunet ask` does, and the
    # virtual time of the whole run stays well inside the records' lifetime
    results: list[LookupResult] = []
    for start in range(0, args.lookups, LOOKUP_BATCH):
        batch = range(start, min(args.lookups, start + LOOKUP_BATCH))
        results += await asyncio.gather(
            *(
                lookup(sim, live, models[i % len(models)], serving[models[i % len(models)]])
                for i in batch
            )
        )
    expires = min(r.expires_at for r in _all_records(providers))
    assert sim.clock() < expires, "records expired during the run: use fewer lookups"
    for s in sim.nodes:
        s.stop()
    rounds = [r.rounds for r in results]
    seconds = sorted(r.seconds for r in results)
    return {
        "nodes": n,
        "dead": dead,
        "lookups": len(results),
        "rounds_mean": statistics.mean(rounds),
        "rounds_max": max(rounds),
        "messages_mean": statistics.mean(r.messages for r in results),
        "success": sum(r.success for r in results) / len(results),
        "completeness": statistics.mean(r.completeness for r in results),
        "time_p50_s": seconds[len(seconds) // 2],
        "time_p99_s": seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))],
        "table_mean": statistics.mean(
            sum(len(b.nodes) for b in s.protocol.router.buckets) for s in live
        ),
        "build_cpu_s": round(build_cpu, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
    }


def _fractions(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", default="100,500,2000", help="comma-separated N values")
    p.add_argument("--dead", type=_fractions, default=[0.0, 0.2, 0.4], help="e.g. 0,0.2,0.4")
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--providers", type=int, default=40)
    p.add_argument("--models", type=int, default=10)
    p.add_argument("--latency-min", type=float, default=0.010, help="one-way, seconds")
    p.add_argument("--latency-max", type=float, default=0.100)
    p.add_argument("--loss", type=float, default=0.0, help="datagram loss probability")
    p.add_argument("--rpc-timeout", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object per scenario")
    args = p.parse_args(argv)
    logging.getLogger("kademlia").setLevel(logging.ERROR)  # "no response from ..." per dead node
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)

    header = (
        f"{'N':>5} {'dead':>5} {'rounds':>7} {'max':>4} {'msgs':>6} {'success':>8} "
        f"{'complete':>8} {'p50 s':>6} {'p99 s':>6} {'table':>6} {'cpu s':>6}"
    )
    if not args.json:
        print(header)
    for n in (int(x) for x in args.nodes.split(",")):
        for dead in args.dead:
            loop = VirtualTimeLoop()
            try:
                row = loop.run_until_complete(scenario(args, n, dead, args.seed * 1000 + n))
            finally:
                loop.close()
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{row['nodes']:>5} {row['dead']:>5.0%} {row['rounds_mean']:>7.2f} "
                    f"{row['rounds_max']:>4} {row['messages_mean']:>6.1f} "
                    f"{row['success']:>8.1%} {row['completeness']:>8.1%} "
                    f"{row['time_p50_s']:>6.2f} {row['time_p99_s']:>6.2f} "
                    f"{row['table_mean']:>6.1f} {row['cpu_s']:>6.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
