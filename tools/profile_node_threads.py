"""Per-thread CPU of a running server while it streams a load: where a node's cores go.

On a 2-core machine llama.cpp's decode threads need both cores; any other busy thread of the
process (the trio thread writing SSE, the worker thread's Python between two decodes) either
waits for a core or takes one from a decode thread. This tool measures how the process's CPU
time splits between its threads during a load, so a node can be compared with llama-server:

    python tools/profile_node_threads.py --url http://127.0.0.1:PORT/v1 [--pid PID]
        [--concurrency 1 8] [--max-tokens 128] [--prompt-class code] [--json]

It finds the server's process by the port it listens on (Linux /proc; --pid overrides), sends
`k` streaming greedy /v1/completions at once per concurrency (prompts of tools/
bench_real_prompts.py), and reads each thread's utime+stime and involuntary context switches
(/proc/PID/task/TID) before and after. Reported per concurrency: wall seconds, tokens, the
process's cores in use (CPU seconds / wall), and per thread its CPU seconds, share of the
process's CPU and involuntary switches (a thread that is preempted often competes for a core).
The main thread (tid == pid) is the trio thread in a gpunet node; in llama-server the HTTP one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def listening_pid(port: int) -> int | None:
    """The pid of the process with a TCP socket listening on `port` (IPv4 or IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def thread_times(pid: int) -> dict[int, tuple[str, float, int]]:
    """tid -> (name, CPU seconds so far, involuntary context switches) of each live thread."""
    out: dict[int, tuple[str, float, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(rest[11]) + int(rest[12])) / TICK  # utime, stime: fields 14 and 15
        switches = 0
        for line in status.splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                switches = int(line.split()[1])
        out[int(task.name)] = (name, cpu, switches)
    return out


def stream_once(url: str, model: str, prompt: str, max_tokens: int) -> int:
    """One streaming greedy completion; the number of chunks with text."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", timeout=900)
    n = 0
    for chunk in client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    ):
        if chunk.choices and chunk.choices[0].text:
            n += 1
    return n


def profile(
    url: str, pid: int, k: int, prompts: tuple[str, ...], max_tokens: int, model: str
) -> dict[str, Any]:
    """Run k streams at once against `url`, sampling `pid`'s threads around them."""
    results: list[int] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results.append(stream_once(url, model, prompts[i % len(prompts)], max_tokens))
        except Exception as exc:  # reported below, with the others
            errors.append(exc)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    before, t0 = thread_times(pid), time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, after = time.monotonic() - t0, thread_times(pid)
    if errors:
        raise RuntimeError(f"{len(errors)} of {k} streams failed: {errors[0]}")
    threads: list[dict[str, Any]] = []
    for tid, (name, cpu, switches) in after.items():
        _, cpu0, switches0 = before.get(tid, (name, 0.0, 0))
        threads.append(
            {
                "tid": tid,
                "name": name,
                "main": tid == pid,
                "cpu_s": round(cpu - cpu0, 3),
                "preempted": switches - switches0,
            }
        )
    total = sum(t["cpu_s"] for t in threads) or 1e-9
    threads = [t for t in threads if t["cpu_s"] > 0 or t["main"]]
    threads.sort(key=lambda t: -t["cpu_s"])
    for t in threads:
        t["share"] = round(t["cpu_s"] / total, 4)
    return {
        "concurrency": k,
        "wall_s": round(wall, 3),
        "tokens": sum(results),
        "tok_s": round(sum(results) / wall, 2),
        "cores": round(total / wall, 3),
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Per-thread CPU of a running OpenAI-compatible server during a load."
    )
    parser.add_argument("--url", required=True, help="the server's /v1 URL")
    parser.add_argument("--pid", type=int, default=None, help="default: who listens on the port")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt-class", choices=("code", "prose", "chat"), default="code")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    port = urllib.parse.urlsplit(args.url).port
    pid = args.pid or (listening_pid(port) if port else None)
    if pid is None or not Path(f"/proc/{pid}").exists():
        print(f"error: no process found listening on {args.url} (give --pid)", file=sys.stderr)
        return 2
    import openai
    from bench_real_prompts import PROMPTS  # type: ignore[import-not-found,unused-ignore]

    try:
        model = openai.OpenAI(base_url=args.url, api_key="none").models.list().data[0].id
        stream_once(args.url, model, PROMPTS["prose"][0], 8)  # warm-up
        runs = [
            profile(args.url, pid, k, PROMPTS[args.prompt_class], args.max_tokens, model)
            for k in args.concurrency
        ]
    except Exception as exc:  # a refused connection, a failed stream: say so, no traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"pid": pid, "url": args.url, "runs": runs}))
        return 0
    for run in runs:
        print(
            f"x{run['concurrency']}: {run['tok_s']} tok/s, {run['cores']} cores busy "
            f"over {run['wall_s']} s"
        )
        for t in run["threads"][:8]:
            label = "main" if t["main"] else t["name"]
            print(
                f"  {t['tid']:>8} {label:<16} {t['cpu_s']:>8.2f} s  {100 * t['share']:5.1f} %"
                f"  preempted {t['preempted']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
