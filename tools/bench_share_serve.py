"""The serving side of model sharing, measured (docs/benchmarks.md, "Model sharing: the serving
side"): what a manifest costs beside the sha256 a node computes anyway, and how fast one
`ShareService` hands a whole model to one client over one real Noise session on 127.0.0.1
(client and node in this one process and trio thread, so this is a floor for two processes).

    .venv/bin/python tools/bench_share_serve.py [GGUF] [--depth 4] [--rate-mb 0]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.identity import Identity
from inference.default_model import ensure_default_model
from inference.model_file import inspect_gguf
from inference.sha256_cache import sha256_file
from p2p.node.runtime import Node, NodeConfig
from p2p.protocol import wire
from p2p.session.pool import SessionPool
from p2p.session.secure import serve_sessions
from p2p.share.manifest import ManifestCache, compute_manifest
from p2p.share.share_service import ShareService


def timed(fn: object, *args: object) -> float:
    started = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - started


async def serve_once(path: Path, depth: int, rate: float | None) -> tuple[int, float]:
    info = inspect_gguf(path)
    node = Node(NodeConfig(data_dir=Path(tempfile.mkdtemp()), models=()), Identity.generate())
    service = ShareService(
        [info],
        admission=node.admission,
        counters=node.share_counters,
        rate=rate,
        peer_rate=rate,
        manifests=ManifestCache(Path(tempfile.mkdtemp())),
    )
    node.serve_share = service.serve
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        listeners = await nursery.start(
            serve_sessions, node.identity, "127.0.0.1", 0, node.handle_connection
        )
        address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        session = await SessionPool(Identity.generate(), nursery).get(
            node.identity.peer_id, address
        )
        async with session.request(wire.FetchManifest(0, info.sha256)) as (_rid, inbox):
            page = await inbox.receive()
        assert isinstance(page, wire.ManifestPage), page
        chunks: dict[int, bytes] = {}

        async def lane(first: int) -> None:
            for i in range(first, page.total_chunks, depth):
                async with session.request(wire.FetchChunk(0, info.sha256, i)) as (_rid, inbox):
                    chunk = await inbox.receive()
                assert isinstance(chunk, wire.Chunk), chunk
                chunks[i] = chunk.data

        started = time.perf_counter()
        async with trio.open_nursery() as lanes:
            for k in range(depth):
                lanes.start_soon(lane, k)
        seconds = time.perf_counter() - started
        data = b"".join(chunks[i] for i in range(page.total_chunks))
        assert hashlib.sha256(data).hexdigest() == info.sha256
        nursery.cancel_scope.cancel()
    return len(data), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="?", type=Path, help="default: the default model")
    parser.add_argument("--depth", type=int, default=4, help="chunk requests in flight")
    parser.add_argument("--rate-mb", type=float, default=0, help="share rate cap, 0: none")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = args.gguf or ensure_default_model()
    size = path.stat().st_size
    path.read_bytes()  # from the page cache from here on: hashing, not the disk, is measured
    for _ in range(args.repeat):
        whole, manifest = timed(sha256_file, path), timed(compute_manifest, path)
        print(f"{size / 1e6:.0f} MB: sha256 {whole:.3f} s, manifest + sha256 {manifest:.3f} s")
    rate = args.rate_mb * 1e6 if args.rate_mb > 0 else None
    for _ in range(args.repeat):
        sent, seconds = trio.run(serve_once, path, args.depth, rate)
        print(f"served {sent / 1e6:.0f} MB in {seconds:.2f} s: {sent / 1e6 / seconds:.0f} MB/s")


if __name__ == "__main__":
    main()
