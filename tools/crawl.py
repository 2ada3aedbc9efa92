#!/usr/bin/env python3
"""Enumerate a gpunet network from a bootstrap address: every reachable node and its record.

    python tools/crawl.py 127.0.0.1:8468
    python tools/crawl.py --json 198.51.100.7:8468 203.0.113.9:8468

The crawler joins as a light client (it never enters anyone's routing table), walks every node's
buckets with `find_node` (see p2p/dht/crawl.py), and asks each node for its own signed record,
which must be signed by the key behind the node's id. Output: one line per node, then a summary
(nodes, GPUs, total VRAM, models and how many providers each); `--json` prints one object with
`nodes` and `summary`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.identity import Identity
from p2p.dht.crawl import DEFAULT_DEPTH, CrawledNode, crawl, summarize
from p2p.dht.node import open_dht, resolve
from p2p.dht.records import record_to_json
from p2p.host_port import AddressError, format_host_port, parse_host_port

GIB = 1 << 30


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _row(n: CrawledNode) -> str:
    addr = format_host_port(*n.address)
    if n.record is None:
        state = "answered, no record" if n.answered else "no answer"
        return f"{n.node_id.hex()[:12]}  {addr:<21}  -                 {state}"
    r = n.record
    gpus = ", ".join(
        f"{g.name} {g.vram_free / GIB:.0f}/{g.vram_total / GIB:.0f} GiB" for g in r.gpus
    )
    models = ", ".join(f"{m.name} ({m.quantization})" for m in r.models) or "-"
    return (
        f"{n.node_id.hex()[:12]}  {addr:<21}  {r.peer_id[:16]}  "
        f"{gpus or 'CPU ' + str(r.cpu.cores) + ' cores'}  |  {models}"
    )


def _json(nodes: list[CrawledNode], summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "node_id": n.node_id.hex(),
                "dht_address": format_host_port(*n.address),
                "answered": n.answered,
                "record": None if n.record is None else record_to_json(n.record),
            }
            for n in nodes
        ],
        "summary": summary,
    }


async def run(args: argparse.Namespace) -> int:
    seeds = [await resolve(h, p) for h, p in args.bootstrap]
    host = "127.0.0.1" if all(h.startswith("127.") for h, _ in seeds) else "0.0.0.0"
    async with open_dht(
        Identity.generate(), host, 0, client_mode=True, rpc_timeout=args.timeout
    ) as dht:
        started = time.monotonic()
        nodes: list[CrawledNode] = await dht.run(
            lambda: crawl(dht.protocol, seeds, clock=dht.server.clock, depth=args.depth)
        )
        elapsed = time.monotonic() - started
    nodes.sort(key=lambda n: (n.record is None, n.record.peer_id if n.record else "", n.address))
    summary = summarize(nodes)
    summary["seconds"] = round(elapsed, 2)
    if args.json:
        print(json.dumps(_json(nodes, summary), indent=2))
        return 0 if nodes else 1
    for n in nodes:
        print(_row(n))
    print()
    print(
        f"{summary['nodes']} nodes ({summary['answered']} answered, {summary['with_record']} "
        f"with a record) in {elapsed:.1f} s; {summary['gpus']} GPUs, "
        f"{summary['vram_total_bytes'] / GIB:.1f} GiB VRAM "
        f"({summary['vram_free_bytes'] / GIB:.1f} GiB free)"
    )
    for name, count in summary["models"].items():
        print(f"  {name}: {count} provider{'s' if count != 1 else ''}")
    if not nodes:
        print("nobody answered at the bootstrap address", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bootstrap", nargs="+", type=_address, help="HOST:PORT of any node's DHT")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per RPC")
    p.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help="bucket levels per node")
    args = p.parse_args(argv)
    logging.getLogger("kademlia").setLevel(logging.ERROR)
    logging.getLogger("p2p.dht.node").setLevel(logging.ERROR)
    return trio.run(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
