"""CPU per streamed token of each server's threads: where a single stream's time goes.

On a machine whose cores llama.cpp's threads fill (2 threads on 2 cores here), every other
thread's CPU per token is time a decode step waits for: a llama.cpp thread is pre-empted and the
other waits at the next barrier. This tool shows that cost thread by thread, which decode tok/s
cannot (it swings ±10 % between rounds on a shared machine; CPU per token is steadier).

For each server (started one at a time, as in tools/bench_gateway.py), after a warm-up request:
`--streams` single streams of the yardstick's request (streaming /v1/completions, greedy, 128
tokens), one after another; CPU of every thread of the server's processes from /proc, before
and after, divided by the tokens received. Threads using under 0.01 ms per token are summed
into "other".

    python tools/bench_token_cpu.py [--streams 6] [--threads 2] [--only gateway ...]
                                    [--llama-server BIN] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _bench_servers import DEFAULT_BENCH, THREADS, llama_server, load_bench, log
from bench_gateway import gateway_server, node_api_server

TICKS = os.sysconf("SC_CLK_TCK")
SHOWN_MS = 0.01  # threads below this CPU per token are summed into "other"


def child_pids() -> list[int]:
    """This process's children: the servers a context manager below started."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    found.append(int(entry))
    return sorted(found)


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) -> (thread name, CPU seconds so far)."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    task = Path(f"/proc/{pid}/task/{tid}")
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    cpu = (int(fields[11]) + int(fields[12])) / TICKS
                    out[(pid, int(tid))] = ((task / "comm").read_text().strip(), cpu)
    return out


def measure(url: str, streams: int, threads: int, bench: object) -> dict[str, object]:
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", timeout=600)
    model = client.models.list().data[0].id
    bench.stream(client, model, 16)  # type: ignore[attr-defined]
    pids = child_pids()
    before, own_before = thread_cpu(pids), time.process_time()
    tokens, rates = 0, []
    for _ in range(streams):
        first, n, end = bench.stream(client, model)  # type: ignore[attr-defined]
        tokens += n
        rates.append((n - 1) / (end - first))
    after, own = thread_cpu(pids), time.process_time() - own_before
    shown, other = [], 0.0
    for key, (name, cpu) in sorted(after.items()):
        ms = (cpu - before.get(key, (name, 0.0))[1]) * 1000 / tokens
        if ms >= SHOWN_MS:
            shown.append({"pid": key[0], "tid": key[1], "name": name, "ms_per_token": ms})
        else:
            other += max(ms, 0.0)
    # the busiest `threads` are llama.cpp's compute threads; the rest is serving work
    by_cpu = sorted(shown, key=lambda t: -float(t["ms_per_token"]))  # type: ignore[arg-type]
    serving = sum(float(t["ms_per_token"]) for t in by_cpu[threads:]) + other  # type: ignore[arg-type]
    return {
        "decode_tok_s": statistics.median(rates),
        "tokens": tokens,
        "threads": shown,
        "other_ms_per_token": other,
        "serving_ms_per_token": serving,
        "client_ms_per_token": own * 1000 / tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--streams", type=int, default=6, help="single streams per server")
    parser.add_argument("--threads", type=int, default=THREADS, help="llama.cpp threads")
    parser.add_argument("--llama-server", type=Path, default=None, metavar="BIN")
    parser.add_argument("--only", action="append", default=None, help="run only these servers")
    parser.add_argument("--bench-script", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.streams < 1:
        parser.error("--streams must be at least 1")

    bench = load_bench(args.bench_script)
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    servers: dict[str, Callable[[Path], contextlib.AbstractContextManager[str]]] = {
        "gateway": lambda work: gateway_server(args.model, work, 8, args.threads),
        "node --api": lambda work: node_api_server(args.model, work, 8, args.threads),
    }
    if args.llama_server is not None:
        servers["llama-server"] = lambda work: llama_server(
            args.llama_server, args.model, work, args.threads
        )
    if args.only:
        servers = {k: v for k, v in servers.items() if k in args.only}

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-token-cpu-") as tmp:
        for name, start in servers.items():
            work = Path(tmp) / name.replace(" ", "_")
            work.mkdir()
            log(f"{name}: starting")
            with start(work) as url:
                results[name] = measure(url, args.streams, args.threads, bench)
    if args.json:
        print(json.dumps({"threads": args.threads, "streams": args.streams, **results}, indent=2))
        return
    for name, r in results.items():
        print(
            f"{name}: decode {r['decode_tok_s']:.1f} tok/s (median of {args.streams}), "
            f"serving threads {r['serving_ms_per_token']:.3f} ms CPU per token, "
            f"this client {r['client_ms_per_token']:.3f}"
        )
        for t in r["threads"]:  # type: ignore[attr-defined]
            print(f"  pid {t['pid']:>7} {t['name']:<20} {t['ms_per_token']:7.3f} ms/token")
        print(f"  {'other threads':<32} {r['other_ms_per_token']:7.3f} ms/token")


if __name__ == "__main__":
    main()
