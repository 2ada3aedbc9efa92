"""The OpenAI-compatible servers the benchmarks compare against, and how they are measured.

Shared by tools/bench_gateway.py and tools/bench_inference.py:

  llama_cpp.server   `python -m llama_cpp.server --n_threads 2 --n_ctx 2048` (needs
                     llama-cpp-python's [server] extras in the interpreter that runs it);
                     optionally `--interrupt_requests False`
  llama-server       llama.cpp's own server, `-t 2 -c 8192 -np 8` (build it with
                     ../shared/bench/build-llama-server.sh; its libraries sit beside it)

Each runs as a child process on a free loopback port and is ready once /v1/models lists a model.
Every request is the shared yardstick's (../shared/bench/openai_stream_bench.py `stream()`):
streaming /v1/completions, greedy, the same prompt; a token is a chunk with non-empty text.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
# The shared yardstick sits beside the repository, in ../shared/bench/; every benchmark takes
# --bench-script to use another copy.
BENCH_DIR = ROOT.parent / "shared" / "bench"
DEFAULT_BENCH = BENCH_DIR / "openai_stream_bench.py"
THREADS = 2
N_CTX = 2048
START_TIMEOUT_S = 300.0

# One streamed request: (seconds to the first token or None, tokens, seconds to the end).
Stream = tuple[float | None, int, float]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process whose stdout lines are read on a thread; stderr goes to a log file."""

    def __init__(
        self,
        cmd: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        cwd: Path = ROOT,
        preexec_fn: Callable[[], None] | None = None,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.stop_timeout_s = stop_timeout_s
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=cwd,
            preexec_fn=preexec_fn,  # callers pass only setrlimit: safe beside the pump thread
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
                self.proc.wait(timeout=self.stop_timeout_s)
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


@contextlib.contextmanager
def llama_cpp_server(
    python: str,
    model: Path,
    work: Path,
    *,
    interrupt_requests: bool = True,
    threads: int = THREADS,
    gpu_layers: int = 0,
) -> Iterator[str]:
    """`interrupt_requests`: the server's own default (True) ends a streaming request when the
    next one arrives, so of K concurrent streams all but the last stop after a token or so;
    False makes it serve them one after another, each to the end."""
    port = free_port()
    cmd = [python, "-m", "llama_cpp.server", "--model", str(model), "--n_threads", str(threads)]
    cmd += ["--n_ctx", str(N_CTX), "--host", "127.0.0.1", "--port", str(port)]
    if not interrupt_requests:
        cmd += ["--interrupt_requests", "False"]
    if gpu_layers:
        cmd += ["--n_gpu_layers", str(gpu_layers)]
    with serving(cmd, work / "llama_cpp_server.log", port) as url:
        yield url


@contextlib.contextmanager
def llama_server(
    binary: Path,
    model: Path,
    work: Path,
    threads: int = THREADS,
    gpu_layers: int = 0,
    extra: Sequence[str] = (),
) -> Iterator[str]:
    port = free_port()
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", str(threads), "-c", str(N_CTX * 4), "-np", "8", *extra]
    if gpu_layers:
        cmd += ["-ngl", str(gpu_layers)]
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    with serving(cmd, work / "llama_server.log", port, env) as url:
        yield url


@contextlib.contextmanager
def serving(
    cmd: list[str], log_path: Path, port: int, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run an OpenAI-compatible server; its /v1 URL once it lists its models."""
    server = Process(cmd, log_path, env)
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


T = TypeVar("T")


def run_together(name: str, calls: Sequence[Callable[[], T]]) -> tuple[list[T], float]:
    """Each call on its own thread, all started together: their results (in the order they
    ended) and the seconds until the last one ended. RuntimeError naming *name* if any failed."""
    results: list[T] = []
    errors: list[BaseException] = []

    def one(call: Callable[[], T]) -> None:
        try:
            results.append(call())
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(call,)) for call in calls]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} of {len(calls)} streams failed: {errors[0]}")
    return results, wall


class Target:
    """One running server, measured with the yardstick's own `stream()`."""

    def __init__(self, name: str, url: str, bench: Any, max_tokens: int = 128) -> None:
        import openai

        self.name, self.url, self.bench = name, url, bench
        self.max_tokens = max_tokens
        self.client = openai.OpenAI(base_url=url, api_key="none", timeout=600)
        self.model = self.client.models.list().data[0].id
        bench.stream(self.client, self.model, 16)  # warm-up, as measure() does

    def stream(self) -> Stream:
        first, n, total = self.bench.stream(self.client, self.model, self.max_tokens)
        return first, n, total

    def single(self) -> dict[str, float]:
        first, n, total = self.stream()
        assert first is not None, f"{self.name}: a stream without text"
        return {"ttft_ms": first * 1000, "decode_tok_s": (n - 1) / (total - first)}

    def streams(self, k: int) -> tuple[list[Stream], float]:
        """k streams started together: each one's figures, and the seconds until all ended."""
        return run_together(self.name, [self.stream] * k)

    def concurrent(self, k: int) -> float:
        """Aggregate tok/s of k streams started together."""
        results, wall = self.streams(k)
        short = [r[1] for r in results if r[1] < self.max_tokens]
        if short:  # a server that cuts streams short would look fast for the wrong reason
            log(f"WARNING {self.name}: {len(short)} of {k} streams ended early: {short} chunks")
        return sum(r[1] for r in results) / wall
