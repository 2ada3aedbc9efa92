"""Benchmark model transfer (`gpunet pull`) between node processes on 127.0.0.1.

Starts `gpunet node` processes serving the default model (Gemma 3 270M Q4_K_M, 253 MB, from the
model cache) and pulls it by sha256 into a temporary cache with the fetcher in this process
(p2p/share/fetcher.py: DHT lookup, manifest vote, chunks from every seeder, whole-file sha256,
link into the cache), deleting the result between runs. Three scenarios:

  one       one seeder, no share cap (--share-rate 0): the raw transfer rate
  capped-1  one seeder capped at --cap MB/s (a single peer gets half of a node's cap)
  capped-3  three seeders, each capped the same: the target is >= 1.5x capped-1

Each scenario gets one unmeasured warm-up pull (the seeders hash the file for their manifest at
start) and then --runs measured ones; the median MB/s is printed (the whole pull, lookup and the
final sha256 included), with the CPU time per MB of each end (the fetcher: this process's
`time.process_time()`; the seeders: their utime + stime from /proc, summed), `--json` for scripts.
CPU ms per MB is the figure to compare between versions: wall time is noisy on a busy machine.

    python tools/bench_pull.py [--runs 3] [--cap 40] [--json] [--only one|capped]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.default_model import ensure_default_model
from inference.sha256_cache import default_sha256_cache
from p2p.client.network import open_client
from p2p.host_port import parse_host_port
from p2p.share.fetcher import pull

NODE_READY_TIMEOUT_S = 300.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_node(
    data_dir: Path, model: Path, share_rate: float, bootstrap: str | None, stderr: Any
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    cmd = [sys.executable, "-m", "p2p", "node", "--model", str(model), "--json"]
    cmd += ["--dht-port", "0", "--port", "0", "--threads", "1", "--slots", "1"]
    cmd += ["--no-benchmark", "--share-rate", f"{share_rate:g}"]
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    env = dict(os.environ, GPUNET_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    if not bootstrap:
        env["GPUNET_BOOTSTRAP"] = ""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env)
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    try:
        ready = json.loads(lines.get(timeout=NODE_READY_TIMEOUT_S))
    except (queue.Empty, ValueError):
        stop_node(proc)
        raise RuntimeError("a node did not report ready (see its log)") from None
    return proc, ready


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (all its threads), from /proc/PID/stat; 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scenario(
    base: Path, model: Path, sha: str, seeders: int, share_rate: float, runs: int
) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        bootstrap = None
        for i in range(seeders):
            with open(logs / f"node{i}-{seeders}-{share_rate:g}.log", "wb") as err:
                proc, ready = start_node(base / f"n{i}", model, share_rate, bootstrap, err)
            procs.append(proc)
            bootstrap = bootstrap or ready["dht"]
        assert bootstrap is not None
        pids = [p.pid for p in procs]
        results = trio.run(_pulls, parse_host_port(bootstrap), sha, base / "cache", runs + 1, pids)
    finally:
        for proc in procs:
            stop_node(proc)
    measured = results[1:]
    rates = [r["mb_s"] for r in measured]
    return {
        "seeders": seeders,
        "share_rate_mb_s": share_rate,
        "runs": measured,
        "median_mb_s": round(statistics.median(rates), 1),
        "fetcher_cpu_ms_per_mb": round(
            statistics.median(r["fetcher_cpu_ms_per_mb"] for r in measured), 2
        ),
        "seeders_cpu_ms_per_mb": round(
            statistics.median(r["seeders_cpu_ms_per_mb"] for r in measured), 2
        ),
    }


async def _pulls(
    bootstrap: tuple[str, int], sha: str, cache: Path, count: int, seeders: list[int]
) -> list[dict[str, Any]]:
    out = []
    async with open_client([bootstrap]) as client:
        for i in range(count):
            shutil.rmtree(cache, ignore_errors=True)
            cpu_here = time.process_time()
            cpu_there = sum(cpu_seconds(pid) for pid in seeders)
            result = await pull(client, sha, cache, use_cache=False)
            cpu_here = time.process_time() - cpu_here
            cpu_there = sum(cpu_seconds(pid) for pid in seeders) - cpu_there
            mb = result.size / 1e6
            peers = {p.peer_id[:8]: p.chunks for p in result.peers}
            out.append(
                {
                    "seconds": round(result.seconds, 3),
                    "mb_s": round(result.size / 1e6 / result.seconds, 1),
                    "fetcher_cpu_ms_per_mb": round(cpu_here * 1000 / mb, 2),
                    "seeders_cpu_ms_per_mb": round(cpu_there * 1000 / mb, 2),
                    "chunks_by_peer": peers,
                }
            )
            log(f"  pull {i} ({'warm-up' if i == 0 else 'measured'}): {out[-1]}")
    shutil.rmtree(cache, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="measured pulls per scenario")
    parser.add_argument("--cap", type=float, default=40.0, help="each seeder's --share-rate")
    parser.add_argument("--only", choices=("one", "capped"), help="run one scenario only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    model = ensure_default_model()
    sha = default_sha256_cache().sha256(model)
    size = model.stat().st_size
    report: dict[str, Any] = {"model": model.name, "size": size, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="gpunet-bench-pull-") as tmp:
        base = Path(tmp)
        if args.only in (None, "one"):
            log("one seeder, no cap")
            report["one"] = scenario(base / "one", model, sha, 1, 0, args.runs)
        if args.only in (None, "capped"):
            log(f"one seeder capped at {args.cap:g} MB/s")
            report["capped_1"] = scenario(base / "c1", model, sha, 1, args.cap, args.runs)
            log(f"three seeders capped at {args.cap:g} MB/s each")
            report["capped_3"] = scenario(base / "c3", model, sha, 3, args.cap, args.runs)
            report["speedup_3_vs_1"] = round(
                report["capped_3"]["median_mb_s"] / report["capped_1"]["median_mb_s"], 2
            )
    if args.json:
        print(json.dumps(report))
    else:
        for key in ("one", "capped_1", "capped_3"):
            if key in report:
                r = report[key]
                print(
                    f"{key:9s} {r['seeders']} seeder(s), cap {r['share_rate_mb_s']:g} MB/s: "
                    f"median {r['median_mb_s']} MB/s over {len(r['runs'])} pulls, CPU ms/MB "
                    f"fetcher {r['fetcher_cpu_ms_per_mb']} seeders {r['seeders_cpu_ms_per_mb']}"
                )
        if "speedup_3_vs_1" in report:
            print(f"three capped seeders vs one: {report['speedup_3_vs_1']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
