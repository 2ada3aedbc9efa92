"""Benchmark gpunet's OpenAI gateway beside llama-cpp-python's and llama.cpp's own servers.

Every request is the shared yardstick's (/work/shared/bench/openai_stream_bench.py): streaming
/v1/completions, greedy, 128 tokens, the same prompt; same model (default: Gemma 3 270M Q4_K_M),
2 threads each.

  gateway            a `gpunet node --threads 2` process and a gateway process joined to it
                     through the DHT; requests travel HTTP -> gateway -> Noise session -> node
  llama_cpp.server   `python -m llama_cpp.server --n_threads 2` (needs the [server] extras; give
                     an interpreter that has them with --llama-cpp-python)
  llama-server       llama.cpp's server, `-t 2 -c 8192 -np 8`, when --llama-server names the
                     binary (build it with /work/shared/bench/build-llama-server.sh)

Two modes:

  --mode paired      (default) all servers are started together (idle ones cost no CPU), then
                     measured in alternation, one unit at a time: a single stream (TTFT, decode
                     tok/s), or K concurrent streams (aggregate tok/s), rotating which server
                     goes first. Medians per server, and the median of the per-round ratios
                     gateway / other: on a shared machine whose load drifts over minutes this
                     compares like with like, which a whole measure() per server does not.
  --mode yardstick   the shared script's measure() as it is, one server after the other
                     (TTFT and decode: median of 3 after a warm-up; aggregates at 2, 4, 8).

    python tools/bench_gateway.py [--mode paired] [--rounds 5] [--llama-cpp-python PY]
                                  [--llama-server BIN] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_BENCH = Path("/work/shared/bench/openai_stream_bench.py")
THREADS = 2
N_CTX = 2048
START_TIMEOUT_S = 300.0
CONCURRENCY = (2, 4, 8)
# Until `gpunet gateway` is registered in the CLI, the command is run straight from its module.
GATEWAY_CODE = "from p2p.gateway import gateway_command as g; g(prog_name='gpunet gateway')"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process whose stdout lines are read on a thread; stderr goes to a log file."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=ROOT
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # keep draining so the child never blocks on a full pipe
            self.lines.put(line)
        self.lines.put(b"")

    def ready_json(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not line:
                break
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict) and data.get("event") == "ready":
                    return data
        raise RuntimeError(f"{self.cmd[:4]} did not report ready; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_for_models(base_url: str, timeout: float = START_TIMEOUT_S) -> list[str]:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            r = httpx.get(base_url + "/models", timeout=5)
            if r.status_code == 200 and r.json()["data"]:
                return [m["id"] for m in r.json()["data"]]
        time.sleep(0.5)
    raise RuntimeError(f"{base_url} did not list a model in {timeout:.0f} s")


# --- servers ----------------------------------------------------------------------------------


def gateway_cmd() -> list[str]:
    from p2p.cli import main

    if "gateway" in getattr(main, "commands", {}):
        return [sys.executable, "-m", "p2p", "gateway"]
    return [sys.executable, "-c", GATEWAY_CODE]


@contextlib.contextmanager
def gateway_server(model: Path, work: Path) -> Iterator[str]:
    env = dict(os.environ, GPUNET_DATA_DIR=str(work / "node"), GPUNET_BOOTSTRAP="")
    env["PYTHONUNBUFFERED"] = "1"
    node_cmd = [sys.executable, "-m", "p2p", "node", "--model", str(model), "--dht-port", "0"]
    node_cmd += ["--port", "0", "--threads", str(THREADS), "--json"]
    node = Process(node_cmd, work / "node.log", env)
    gateway: Process | None = None
    try:
        dht = node.ready_json()["dht"]
        gw_env = dict(env, GPUNET_DATA_DIR=str(work / "gateway"))
        gw_cmd = [*gateway_cmd(), "--bootstrap", dht]
        # Throughput is measured here, not the admission policy: let requests queue as long as
        # they need (a burst of 8 x 128 tokens on a loaded CPU can take minutes).
        gw_cmd += ["--api", "127.0.0.1:0", "--queue-timeout", "900", "--json"]
        gateway = Process(gw_cmd, work / "gateway.log", gw_env)
        url = str(gateway.ready_json()["api"])
        wait_for_models(url)
        yield url
    finally:
        if gateway is not None:
            gateway.stop()
        node.stop()


@contextlib.contextmanager
def llama_cpp_server(python: str, model: Path, work: Path) -> Iterator[str]:
    port = free_port()
    cmd = [python, "-m", "llama_cpp.server", "--model", str(model), "--n_threads", str(THREADS)]
    cmd += ["--n_ctx", str(N_CTX), "--host", "127.0.0.1", "--port", str(port)]
    server = Process(cmd, work / "llama_cpp_server.log")
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_for_models(url)
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, work: Path) -> Iterator[str]:
    port = free_port()
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", str(THREADS), "-c", str(N_CTX * 4), "-np", "8"]
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    server = Process(cmd, work / "llama_server.log", env)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_for_models(url)
        yield url
    finally:
        server.stop()


def has_llama_cpp_server(python: str) -> bool:
    probe = subprocess.run(
        [python, "-c", "import llama_cpp.server.app"], capture_output=True, timeout=120
    )
    return probe.returncode == 0


# --- measuring ------------------------------------------------------------------------------


def load_bench(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("openai_stream_bench", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Target:
    """One running server, measured with the yardstick's own `stream()`."""

    def __init__(self, name: str, url: str, bench: Any) -> None:
        import openai

        self.name, self.url, self.bench = name, url, bench
        self.client = openai.OpenAI(base_url=url, api_key="none", timeout=600)
        self.model = self.client.models.list().data[0].id
        bench.stream(self.client, self.model, 16)  # warm-up, as measure() does

    def single(self) -> dict[str, float]:
        first, n, total = self.bench.stream(self.client, self.model)
        return {"ttft_ms": first * 1000, "decode_tok_s": (n - 1) / (total - first)}

    def concurrent(self, k: int) -> float:
        results: list[tuple[float, int, float]] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                results.append(self.bench.stream(self.client, self.model))
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(k)]
        t = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise RuntimeError(f"{self.name}: {len(errors)} of {k} streams failed: {errors[0]}")
        return sum(r[1] for r in results) / (time.monotonic() - t)


def paired(
    targets: list[Target], rounds: int, ks: tuple[int, ...]
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, float]]]]:
    """Alternate the targets unit by unit; returns (medians, per-round figures)."""
    runs: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for r in range(rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        row: dict[str, dict[str, float]] = {}
        for t in order:
            row[t.name] = t.single()
        for k in ks:
            for t in order:
                row[t.name][f"agg{k}_tok_s"] = t.concurrent(k)
        load = os.getloadavg()[0]
        for name, figures in row.items():
            figures["load1"] = load
            runs[name].append(figures)
        log(
            f"round {r + 1}/{rounds} (load {load:.2f}): "
            + json.dumps({n: {k: round(v, 1) for k, v in f.items()} for n, f in row.items()})
        )
    medians = {
        name: {k: statistics.median(f[k] for f in figs) for k in figs[0]}
        for name, figs in runs.items()
    }
    return medians, runs


def paired_ratios(runs: dict[str, list[dict[str, float]]], other: str) -> dict[str, float]:
    """Median over rounds of gateway/other, per figure (measured minutes apart at most)."""
    gw, ot = runs["gateway"], runs[other]
    return {
        k: statistics.median(g[k] / o[k] for g, o in zip(gw, ot, strict=True) if o[k])
        for k in gw[0]
        if k != "load1"
    }


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--mode", choices=("paired", "yardstick"), default="paired")
    parser.add_argument("--rounds", type=int, default=None, help="paired: 5; yardstick: 1")
    parser.add_argument(
        "--concurrency", type=int, action="append", default=None, help="paired: K (4 and 8)"
    )
    parser.add_argument("--bench-script", type=Path, default=DEFAULT_BENCH)
    parser.add_argument(
        "--llama-cpp-python",
        default=sys.executable,
        metavar="PYTHON",
        help="interpreter with llama-cpp-python[server] installed (default: this one)",
    )
    parser.add_argument("--llama-server", type=Path, default=None, metavar="BIN")
    parser.add_argument("--only", action="append", default=None, help="run only these servers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    bench = load_bench(args.bench_script)
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    servers: dict[str, Callable[[Path], contextlib.AbstractContextManager[str]]] = {
        "gateway": lambda work: gateway_server(args.model, work),
    }
    if has_llama_cpp_server(args.llama_cpp_python):
        servers["llama_cpp.server"] = lambda work: llama_cpp_server(
            args.llama_cpp_python, args.model, work
        )
    else:
        log(f"llama_cpp.server skipped: {args.llama_cpp_python} lacks llama-cpp-python[server]")
    if args.llama_server is not None:
        servers["llama-server"] = lambda work: llama_server(args.llama_server, args.model, work)
    if args.only:
        servers = {k: v for k, v in servers.items() if k in args.only}

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        if args.mode == "paired":
            rounds = args.rounds or 5
            ks = tuple(args.concurrency or (4, 8))
            with contextlib.ExitStack() as stack:
                targets = []
                for name, start in servers.items():
                    work = Path(tmp) / name
                    work.mkdir()
                    url = stack.enter_context(start(work))
                    targets.append(Target(name, url, bench))
                medians, runs = paired(targets, rounds, ks)
            keys = ["ttft_ms", "decode_tok_s", *[f"agg{k}_tok_s" for k in ks]]
        else:
            rounds = args.rounds or 1
            runs = {name: [] for name in servers}
            names = list(servers)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    work = Path(tmp) / f"{name}-{r}"
                    work.mkdir()
                    log(f"round {r + 1}: {name} (load {os.getloadavg()[0]:.2f})")
                    with servers[name](work) as url:
                        figures = bench.measure(url, CONCURRENCY)
                    figures["load1"] = os.getloadavg()[0]
                    runs[name].append(figures)
                    log(f"  {json.dumps({k: round(v, 1) for k, v in figures.items()})}")
            medians = {
                name: {k: statistics.median(f[k] for f in figs) for k in figs[0]}
                for name, figs in runs.items()
                if figs
            }
            keys = ["ttft_ms", "decode_tok_s", *[f"agg{k}_tok_s" for k in CONCURRENCY]]

    ratios = {
        other: paired_ratios(runs, other)
        if args.mode == "paired"
        else {k: medians["gateway"][k] / medians[other][k] for k in keys if medians[other][k]}
        for other in medians
        if other != "gateway" and "gateway" in medians
    }
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": args.model.name,
        "threads": THREADS,
        "mode": args.mode,
        "rounds": rounds,
        "medians": medians,
        "gateway_ratios": ratios,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'server':18}" + "".join(f"{k:>14}" for k in [*keys, "load1"]))
    for name, m in medians.items():
        print(f"{name:18}" + "".join(f"{m[k]:14.1f}" for k in [*keys, "load1"]))
    for other, rs in ratios.items():
        print(f"gateway / {other}: " + "  ".join(f"{k} {v:.2f}x" for k, v in rs.items()))


if __name__ == "__main__":
    main()
