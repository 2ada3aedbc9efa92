"""How long `gpunet status` takes on the node's side: one `Control` over a new Noise session.

Runs a node on the tiny GGUF in this process (its own DHT, nobody else), then asks it for its
status ROUNDS times as its owner, each time over a fresh session as the CLI does, and prints the
median and worst round trip and the size of the state. The CLI's own wall time adds Python's
start and imports (`time gpunet status`).

    .venv/bin/python tools/bench_control.py [--rounds 30]

Rounds stay under the node's handshake burst per source (p2p/session/handshake_admission.py:
40, then 20 a second), which a loop faster than that would meet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crypto.identity import Identity
from inference.model_file import inspect_gguf
from p2p.cli.node_control import RunningNode, send_control
from p2p.node.runtime import NodeConfig, NodeReady, run_node
from tools.make_tiny_gguf import make_tiny_gguf


async def bench(rounds: int, base: Path) -> None:
    model = make_tiny_gguf(base / "tiny-llama.gguf", seed=0)
    config = NodeConfig(
        data_dir=base / "node", models=(inspect_gguf(model),), dht_port=0, port=0,
        n_threads=1, benchmark=False,
    )  # fmt: skip
    config.data_dir.mkdir()
    owner = Identity.generate()
    async with trio.open_nursery() as nursery:
        ready: NodeReady = await nursery.start(partial(run_node, config, identity=owner))
        node = RunningNode(config.data_dir, ready.peer_id, ready.session_address)
        took, state = [], {}
        for _ in range(rounds):
            start = time.perf_counter()
            state = await send_control(node, owner, "status")
            took.append(time.perf_counter() - start)
        print(
            f"status over a new session, {rounds} rounds: median "
            f"{statistics.median(took) * 1000:.1f} ms, worst {max(took) * 1000:.1f} ms; "
            f"state {len(json.dumps(state))} bytes of JSON"
        )
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="status requests (at most 40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(bench, max(1, min(args.rounds, 40)), Path(tmp))


if __name__ == "__main__":
    main()
