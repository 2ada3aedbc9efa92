"""A node serving the tiny model in a process of its own, for tests that count its descriptors.

Run as ``python -m tests.p2p.node.node_process MODEL.gguf DATA_DIR``: it lowers its soft
descriptor limit to 1,024 (the usual default, so a test sees what a volunteer's node would),
serves sessions on 127.0.0.1 with the node's real request handling (no DHT: the test dials it
directly), prints ``READY <port> <peer_id>`` and serves until its stdin closes; then it prints
its session table's counters (``SESSIONS admitted=... evicted=...``).
"""

from __future__ import annotations

import resource
import sys
from functools import partial
from pathlib import Path

import trio

from crypto.identity import Identity
from inference.model_file import inspect_gguf
from p2p.node.models import load_models
from p2p.node.runtime import Node, NodeConfig
from p2p.session.secure import serve_sessions

USUAL_SOFT_LIMIT = 1024


async def main(model: Path, data_dir: Path) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (USUAL_SOFT_LIMIT, hard))
    config = NodeConfig(data_dir=data_dir, models=(inspect_gguf(model),), n_threads=1)
    node = Node(config, Identity.generate())
    node.served = await load_models(config, benchmark=False)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(
                    serve_sessions,
                    node.identity,
                    "127.0.0.1",
                    0,
                    node.handle_connection,
                    sessions=node.sessions,
                )
            )
            port = listeners[0].socket.getsockname()[1]
            print(f"READY {port} {node.identity.peer_id}", flush=True)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            table = node.sessions
            print(
                f"SESSIONS admitted={table.admitted} evicted={table.evicted} "
                f"refused={table.refused} open={len(table)}",
                flush=True,
            )
            nursery.cancel_scope.cancel()
    finally:
        for m in node.served:
            await m.worker.aclose()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), Path(sys.argv[2]))
