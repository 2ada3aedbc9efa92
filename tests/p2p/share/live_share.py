"""Live nodes serving (and sharing) GGUF files on 127.0.0.1, each in a cancel scope of its own
so a test can kill one mid-transfer: for the pull tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from inference.model_file import inspect_gguf
from p2p.node.config import NodeConfig, NodeReady
from p2p.node.runtime import run_node

Tamper = Callable[[int, bytes], bytes]


@attrs.frozen
class Seeder:
    model: Path
    tamper: Tamper | None = None
    share_rate: float = 0.0  # MB/s, 0: no cap
    share: bool = True


@attrs.define
class LiveNode:
    ready: NodeReady
    scope: trio.CancelScope

    def kill(self) -> None:
        """Stop it at once, as a crash would: its sessions break mid-transfer."""
        self.scope.cancel()


def bootstrap_of(node: LiveNode) -> tuple[tuple[str, int], ...]:
    host, _, port = node.ready.dht_address.rpartition(":")
    return ((host, int(port)),)


async def _killable(
    config: NodeConfig, *, task_status: trio.TaskStatus[LiveNode] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(run_node, config)
            task_status.started(LiveNode(ready, scope))


@asynccontextmanager
async def seeders(base: Path, specs: Sequence[Seeder]) -> AsyncIterator[list[LiveNode]]:
    """Nodes serving *specs*' models (each shares it); all bootstrap from the first."""
    async with trio.open_nursery() as nursery:
        nodes: list[LiveNode] = []
        for i, spec in enumerate(specs):
            config = NodeConfig(
                data_dir=base / f"node{i}",
                models=(inspect_gguf(spec.model),),
                host="127.0.0.1",
                dht_port=0,
                port=0,
                n_threads=1,
                slots=1,
                benchmark=False,
                bootstrap=bootstrap_of(nodes[0]) if nodes else (),
                share=spec.share,
                share_rate=spec.share_rate,
                share_tamper=spec.tamper,
            )
            nodes.append(await nursery.start(_killable, config))
        yield nodes
        nursery.cancel_scope.cancel()
