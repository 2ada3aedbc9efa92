"""Take the dashboard screenshot of the docs (docs/img/dashboard.png) from a live network.

Starts a small network on 127.0.0.1 in this process: three named nodes (two serve the default
model, Gemma 3 270M, one a tiny random-weight Llama), a fourth that joins and then stops (so the
page shows a node offline), and a gateway; sends a few requests through the gateway so the
charts have points; then has headless Chromium render the page to a PNG.

    .venv/bin/python tools/dashboard_screenshot.py [--out docs/img/dashboard.png]
        [--requests 16] [--tiny] [--size 1280,1500]

--tiny serves only tiny models (no 253 MB download when the default model is not cached yet).
Chromium is Debian's `chromium` package.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import attrs
import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_tiny_gguf import make_tiny_gguf

from inference.default_model import ensure_default_model
from inference.model_file import ModelInfo, inspect_gguf
from p2p.api.app import serve_gateway
from p2p.client.network import open_client
from p2p.host_port import parse_host_port
from p2p.node.config import NodeConfig, NodeReady
from p2p.node.runtime import run_node

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = (
    "The three primary colours are",
    "A haiku about the sea:",
    "Explain in one sentence why the sky is blue.",
    "List four planets of the solar system:",
)
LEAVING_TTL_S = 6.0  # the leaving node's last record lapses this soon (or it is withdrawn)
CHROMIUM_TIMEOUT_S = 120


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    raise SystemExit("chromium is not installed (Debian: apt-get install -y chromium)")


def screenshot(url: str, out: Path, size: str, profile: Path) -> None:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=6000",
        f"--window-size={size}",
        f"--screenshot={out}",
        url,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    if result.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed: {result.stderr[-1500:]}")


def node(base: Path, name: str, model: ModelInfo, **more: object) -> NodeConfig:
    return NodeConfig(
        data_dir=base / name,
        models=(model,),
        dht_port=0,
        port=0,
        n_threads=1,
        name=name,
        **more,  # type: ignore[arg-type]
    )


async def send_requests(url: str, models: list[str], count: int) -> int:
    """*count* completions, two at a time, spread over *models*; returns how many succeeded."""
    ok = 0
    async with httpx.AsyncClient(timeout=120) as http:

        async def one(i: int) -> None:
            nonlocal ok
            body = {
                "model": models[i % len(models)],
                "prompt": PROMPTS[i % len(PROMPTS)],
                "max_tokens": 24 + 8 * (i % 4),
                "temperature": 0.7,
            }
            response = await http.post(url + "/v1/completions", json=body)
            ok += response.status_code == 200

        for start in range(0, count, 2):
            async with trio.open_nursery() as nursery:
                for i in range(start, min(start + 2, count)):
                    nursery.start_soon(one, i)
    return ok


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="gpunet-shot-") as tmp:
        base = Path(tmp)
        tiny = inspect_gguf(make_tiny_gguf(base / "models" / "tiny-llama.gguf"))
        real = tiny if args.tiny else inspect_gguf(ensure_default_model())
        async with trio.open_nursery() as nursery:
            first: NodeReady = await nursery.start(run_node, node(base, "alice-rtx4090", real))
            bootstrap = (parse_host_port(first.dht_address),)
            for config in (node(base, "bob-laptop", real), node(base, "carol-pi5", tiny)):
                await nursery.start(run_node, attrs.evolve(config, bootstrap=bootstrap))
            leaving = trio.Event()
            leave = node(base, "dave-desktop", tiny, bootstrap=bootstrap, ttl_s=LEAVING_TTL_S)
            await nursery.start(partial(run_node, leave, shutdown=leaving))
            async with open_client(bootstrap) as client, trio.open_nursery() as inner:
                url = await inner.start(partial(serve_gateway, client, "127.0.0.1", 0))
                async with httpx.AsyncClient(timeout=10) as http:
                    await http.get(url + "/api/network")  # the gateway sees dave online
                leaving.set()
                models = sorted({real.name, tiny.name})
                ok = await send_requests(url, models, args.requests)
                print(f"{ok} of {args.requests} requests answered", file=sys.stderr)
                with trio.fail_after(60):  # dave's record withdrawn or lapsed: offline
                    while not await _offline(url, "dave-desktop"):
                        await trio.sleep(0.5)
                out = args.out.resolve()
                out.parent.mkdir(parents=True, exist_ok=True)
                await trio.to_thread.run_sync(screenshot, url + "/", out, args.size, base / "p")
                print(f"wrote {out}", file=sys.stderr)
                inner.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def _offline(url: str, name: str) -> bool:
    async with httpx.AsyncClient(timeout=10) as http:
        nodes = (await http.get(url + "/api/network")).json()["nodes"]
    return any(n["name"] == name and n["state"] == "offline" for n in nodes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    parser.add_argument("--requests", type=int, default=16, help="requests sent (default 16)")
    parser.add_argument("--tiny", action="store_true", help="tiny models only (no download)")
    parser.add_argument("--size", default="1280,1500", help="window size (default 1280,1500)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
