#!/usr/bin/env python3
"""Provider-lookup latency on real UDP sockets: N gpunet DHT nodes on 127.0.0.1 in this process.

    python tools/bench_dht.py                  # 50 nodes, 10 providers, 5 models, 500 lookups
    python tools/bench_dht.py --nodes 50 --lookups 1000 --json

Measures, for a light client (what `gpunet ask`/`peers` run):
- warm: `find_records(model-name key)` on a client that has joined once (the lookup alone);
- cold: join through a random node, then the lookup (a fresh `gpunet ask` process's DHT part).
All nodes and the client share one Python process (one thread, trio + one asyncio loop per node),
so every datagram's handling queues behind the others': figures are an upper bound for nodes on
separate machines, minus the network's round-trip times.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.identity import Identity
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import CapabilityRecord as Record
from p2p.dht.records import CpuEntry, ModelEntry, dht_digest, model_name_key, sign_record

LOCAL = "127.0.0.1"


def _record(ident: Identity, model: str, port: int) -> Record:
    now = time.time()
    return Record(
        peer_id=ident.peer_id,
        public_key=ident.public_key,
        addresses=(f"{LOCAL}:{port}",),
        software_version="gpunet/bench",
        seq=int(now * 1000),
        issued_at=now,
        expires_at=now + 600,
        gpus=(),
        cpu=CpuEntry(cores=2, ram_bytes=1 << 30),
        models=(
            ModelEntry(
                dht_digest(model).hex().ljust(64, "0"), model, "llama", 1, "Q4_K_M", 512, 0, 2
            ),
        ),
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    models = [f"model-{i}" for i in range(args.models)]
    async with AsyncExitStack() as stack:
        nodes: list[Dht] = []
        idents: list[Identity] = []
        t0 = time.perf_counter()
        for _ in range(args.nodes):
            ident = Identity.generate()
            dht = await stack.enter_async_context(open_dht(ident, LOCAL, 0, rpc_timeout=1.0))
            if nodes:
                await dht.bootstrap([(LOCAL, rng.choice(nodes).port)])
            nodes.append(dht)
            idents.append(ident)
        build_s = time.perf_counter() - t0
        for i, (ident, dht) in enumerate(list(zip(idents, nodes, strict=True))[: args.providers]):
            model = models[i % len(models)]
            await dht.publish(sign_record(_record(ident, model, dht.port), ident))
        want = {
            m: {idents[i].peer_id for i in range(args.providers) if i % len(models) == j}
            for j, m in enumerate(models)
        }

        warm: list[float] = []
        complete = 0
        async with open_dht(Identity.generate(), LOCAL, 0, client_mode=True, rpc_timeout=1.0) as c:
            await c.bootstrap([(LOCAL, rng.choice(nodes).port)])
            for i in range(args.lookups):
                model = models[i % len(models)]
                start = time.perf_counter()
                found = await c.find_records(model_name_key(model))
                warm.append(time.perf_counter() - start)
                if args.pace_ms:
                    await trio.sleep(args.pace_ms / 1000)
                complete += {r.peer_id for r in found} == want[model]

        cold: list[float] = []
        for i in range(args.cold):
            model = models[i % len(models)]
            start = time.perf_counter()
            async with open_dht(
                Identity.generate(), LOCAL, 0, client_mode=True, rpc_timeout=1.0
            ) as c:
                await c.bootstrap([(LOCAL, rng.choice(nodes).port)])
                found = await c.find_records(model_name_key(model))
            cold.append(time.perf_counter() - start)
            complete += {r.peer_id for r in found} == want[model]

    ms = 1000.0
    return {
        "nodes": args.nodes,
        "providers": args.providers,
        "models": args.models,
        "build_s": round(build_s, 2),
        "warm_lookups": len(warm),
        "warm_p50_ms": round(_pct(warm, 0.50) * ms, 2),
        "warm_p99_ms": round(_pct(warm, 0.99) * ms, 2),
        "warm_mean_ms": round(statistics.mean(warm) * ms, 2),
        "warm_max_ms": round(max(warm) * ms, 2),
        "warm_over_100ms": sum(t > 0.1 for t in warm),
        "cold_lookups": len(cold),
        "cold_p50_ms": round(_pct(cold, 0.50) * ms, 2) if cold else None,
        "cold_p99_ms": round(_pct(cold, 0.99) * ms, 2) if cold else None,
        "complete": complete / (len(warm) + len(cold)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--providers", type=int, default=10)
    p.add_argument("--models", type=int, default=5)
    p.add_argument("--lookups", type=int, default=500)
    p.add_argument("--cold", type=int, default=50, help="join-then-lookup runs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--pace-ms",
        type=float,
        default=0.0,
        help="pause between warm lookups (0: back to back; one client address then exceeds "
        "the nodes' per-source rate limit now and then)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.getLogger("kademlia").setLevel(logging.ERROR)
    row = trio.run(run, args)
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>14}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
