"""The crawler on a real loopback network: every node found, only self-signed records kept."""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import attrs
import trio

from crypto.identity import Identity
from p2p.dht.crawl import crawl, summarize
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import GpuEntry, ModelEntry, sign_record
from tests.p2p.dht.test_records import SHA, make_record

LOCAL = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[3]
GIB = 1 << 30


async def _network(stack: AsyncExitStack, n: int) -> list[tuple[Identity, Dht]]:
    nodes: list[tuple[Identity, Dht]] = []
    for i in range(n):
        ident = Identity.generate()
        dht = await stack.enter_async_context(open_dht(ident, LOCAL, 0, rpc_timeout=0.5))
        if i:
            await dht.bootstrap([(LOCAL, nodes[i // 2][1].port)])
        nodes.append((ident, dht))
    return nodes


async def test_crawl_finds_every_node_and_its_own_record() -> None:
    async with AsyncExitStack() as stack:
        nodes = await _network(stack, 12)
        gpu = GpuEntry("RTX 4090", 24 * GIB, 20 * GIB, "8.9", "550", "12.4", 0)
        other = ModelEntry("cd" * 32, "other-model", "llama", 1, "Q8_0", 512, 0, 2)
        for i, (ident, dht) in enumerate(nodes[:5]):
            record = make_record(ident, models=None if i < 3 else (other,))
            record = attrs.evolve(record, gpus=(gpu,) * (i % 2))
            await dht.publish(sign_record(record, ident))
        # a node that serves someone else's record under its own id is not believed
        _, liar = nodes[5]
        someone = Identity.generate()
        liar.protocol.own_record = sign_record(make_record(someone), someone)

        async with open_dht(Identity.generate(), LOCAL, 0, client_mode=True) as client:
            found = await client.run(
                lambda: crawl(
                    client.protocol, [(LOCAL, nodes[7][1].port)], clock=client.server.clock
                )
            )
        assert {n.node_id for n in found} == {d.node_id for _, d in nodes}
        assert all(n.answered for n in found)
        by_id = {n.node_id: n for n in found}
        assert by_id[liar.node_id].record is None
        assert {n.record.peer_id for n in found if n.record} == {i.peer_id for i, _ in nodes[:5]}
        summary = summarize(found)
        assert summary["nodes"] == 12 and summary["with_record"] == 5
        assert summary["gpus"] == 2 and summary["vram_total_bytes"] == 48 * GIB
        assert summary["models"] == {"tiny-llama": 3, "other-model": 2}
        assert SHA  # the tiny-llama entry's sha256


async def test_crawl_tool_prints_json() -> None:
    async with AsyncExitStack() as stack:
        nodes = await _network(stack, 4)
        ident, dht = nodes[1]
        await dht.publish(sign_record(make_record(ident), ident))
        result = await trio.run_process(
            [sys.executable, str(ROOT / "tools/crawl.py"), "--json", f"{LOCAL}:{nodes[0][1].port}"],
            capture_stdout=True,
            capture_stderr=True,
        )
        out = json.loads(result.stdout)
        assert out["summary"]["nodes"] == 4
        assert out["summary"]["models"] == {"tiny-llama": 1}
        records = [n["record"] for n in out["nodes"] if n["record"]]
        assert [r["peer_id"] for r in records] == [ident.peer_id]
