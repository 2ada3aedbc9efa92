#!/usr/bin/env python3
"""What one record publish costs the network: datagrams and bytes a node sends per publish.

    python tools/bench_publish.py                  # 40 nodes, 1 model (4 keys), 10 publishes
    python tools/bench_publish.py --nodes 60 --models 2 --json
    python tools/bench_publish.py --busy 60      # then a busy node's republisher for 60 s

N gpunet DHT nodes on 127.0.0.1 in this process; one of them publishes its record (a fresh seq
each time, as `publish_forever` does) and the requests it sends are counted by RPC name and
bytes (its own `_request_once`, so retries count). Every request is answered by one datagram,
so the datagrams on the wire are about twice the requests. The figures feed the traffic note in
p2p/dht/records.py (how often a node may republish, issue #18: TTL 60 s, republish every 20 s,
load changes at most every few seconds).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import msgpack
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.identity import Identity
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import CapabilityRecord, CpuEntry, ModelEntry, dht_digest, sign_record
from p2p.node.runtime import Node, NodeConfig

LOCAL = "127.0.0.1"


def _record(ident: Identity, models: int, port: int, seq: int) -> CapabilityRecord:
    now = time.time()
    entries = tuple(
        ModelEntry(
            dht_digest(f"m{i}").hex().ljust(64, "0"),
            f"model-{i}",
            "llama",
            270_000_000,
            "Q4_K_M",
            2048,
            18,
            18,
            decode_tok_s=60.0,
            prefill_tok_s=900.0,
        )
        for i in range(models)
    )
    return CapabilityRecord(
        peer_id=ident.peer_id,
        public_key=ident.public_key,
        addresses=(f"{LOCAL}:{port}",),
        software_version="gpunet/bench",
        seq=seq,
        issued_at=now,
        expires_at=now + 60,
        gpus=(),
        cpu=CpuEntry(cores=8, ram_bytes=1 << 34),
        models=entries,
    )


def _count_requests(dht: Dht) -> tuple[Counter[str], Counter[str]]:
    """Count the requests *dht* sends, by RPC name: how many and their payload bytes."""
    calls: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    proto: Any = dht.protocol
    original = getattr(proto, "_uncounted", proto._request_once)
    proto._uncounted = original

    def counted(address: Any, name: str, args: tuple[Any, ...]) -> Any:
        calls[name] += 1
        sent[name] += 20 + len(msgpack.packb([name, list(args)], use_bin_type=True))
        return original(address, name, args)

    proto._request_once = counted
    return calls, sent


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with AsyncExitStack() as stack:
        nodes: list[Dht] = []
        for _ in range(args.nodes):
            ident = Identity.generate()
            dht = await stack.enter_async_context(open_dht(ident, LOCAL, 0, rpc_timeout=1.0))
            if nodes:
                await dht.bootstrap([(LOCAL, rng.choice(nodes).port)])
            nodes.append(dht)
        publisher_ident = Identity.generate()
        publisher = await stack.enter_async_context(
            open_dht(publisher_ident, LOCAL, 0, rpc_timeout=1.0)
        )
        await publisher.bootstrap([(LOCAL, rng.choice(nodes).port)])
        out: dict[str, Any] = {"nodes": args.nodes, "models": args.models}
        out["keys"] = 2 + 2 * args.models
        seq = 0
        # full: the periodic republish (a crawl per key); load: a load change right after a
        # full one, stored where that one stored (`reuse_closest_s`, p2p/node/load_refresh.py)
        for kind, reuse in (("full", 0.0), ("load", 3600.0)):
            calls, sent = _count_requests(publisher)
            seconds: list[float] = []
            for _ in range(args.rounds):
                seq += 1
                signed = sign_record(
                    _record(publisher_ident, args.models, publisher.port, seq), publisher_ident
                )
                out["record_bytes"] = len(signed.blob)
                started = time.perf_counter()
                await publisher.publish(signed, reuse_closest_s=reuse)
                seconds.append(time.perf_counter() - started)
            rounds = args.rounds
            out[kind] = {
                "requests_per_publish": round(sum(calls.values()) / rounds, 1),
                "by_rpc": {k: round(v / rounds, 1) for k, v in sorted(calls.items())},
                "bytes_sent_per_publish": round(sum(sent.values()) / rounds),
                "publish_s_median": round(statistics.median(seconds), 3),
            }
        if args.busy:
            out["busy"] = await _busy(publisher, publisher_ident, args.busy, args.models)
    return out


async def _busy(dht: Dht, identity: Identity, seconds: float, models_served: int) -> dict[str, Any]:
    """A node's real republisher (p2p/node/load_refresh.py) while its load changes every 0.2 s:
    what it sends per second, all republishes (periodic and load) included."""
    calls, sent = _count_requests(dht)
    publishes = 0
    publish = dht.publish

    async def counted(*a: Any, **kw: Any) -> int:
        nonlocal publishes
        publishes += 1
        return await publish(*a, **kw)

    dht.publish = counted  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as data_dir:
        node = Node(NodeConfig(data_dir=Path(data_dir), models=()), identity)
        built = node.build_record
        models = _record(identity, models_served, 9, 1).models  # as if it served them

        def build_record(address: str) -> CapabilityRecord:
            return attrs.evolve(built(address), models=models)

        node.build_record = build_record  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.publish_forever, dht, f"{LOCAL}:9")
            with trio.move_on_after(seconds):
                while True:  # requests come and go: the load a record carries keeps moving
                    await trio.sleep(0.2)
                    node.active_requests = (node.active_requests + 1) % 4
                    node.load_changes.bump()
            nursery.cancel_scope.cancel()
    requests = sum(calls.values())
    return {
        "seconds": seconds,
        "publishes": publishes,
        "requests_per_s": round(requests / seconds, 1),
        "datagrams_per_s": round(2 * requests / seconds, 1),
        "bytes_sent_per_s": round(sum(sent.values()) / seconds),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=40, help="DHT nodes besides the publisher")
    p.add_argument("--models", type=int, default=1, help="models in the record (2 keys each)")
    p.add_argument("--rounds", type=int, default=10, help="publishes to average over")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--busy", type=float, default=0.0, metavar="SECONDS",
        help="then run the node's republisher this long with its load changing every 0.2 s",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    result = trio.run(run, args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
