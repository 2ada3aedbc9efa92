"""Benchmark gpunet's scheduler beside direct llama-cpp-python and two servers, in one run.

Same model (default: the project's default model, Gemma 3 270M Q4_K_M), 2 threads each (--threads),
on the CPU unless --gpu-layers says otherwise (N, or auto: the node's offload planner), greedy,
128 tokens, the prompt of the shared yardstick (../shared/bench/openai_stream_bench.py):

  direct             llama_cpp.Llama in a child process of its own (see direct_process),
                     create_completion(stream=True), after
                     llm.reset() so every request really prefills its prompt (bench_network.py);
                     single stream only
  gpunet             our scheduler in this process: inference.batching.BatchingWorker, slots=8,
                     with greedy speculation unless --no-speculate
  llama_cpp.server   `python -m llama_cpp.server --n_threads 2 --interrupt_requests False` over
                     HTTP on loopback (its default, True, ends a stream when the next request
                     arrives: the others of K concurrent streams stop after one token; False
                     serves them one after another); needs an interpreter with
                     llama-cpp-python[server], given with --llama-cpp-python
  llama-server       llama.cpp's server `-t 2 -c 8192 -np 8` over HTTP on loopback, when
                     --llama-server names the binary (tools/_bench_servers.py)

The servers' requests are the yardstick's `stream()` (streaming /v1/completions); the in-process
ones are timed the same way. Each measurement unit is either

  a single stream    TTFT, decode tok/s = (tokens - 1) / (seconds after the first token), and the
                     aggregate at 1 = tokens / seconds from sending the request to its end, or
  K streams (2/4/8)  all sent together (ours: joining the batch in the same step), aggregate =
                     all tokens / seconds from sending them to the end of the last one.

Both servers keep the KV cache of the previous request and reuse its prefix (llama_cpp.server
logs "prefix-match hit"; llama-server caches prompts per slot), so with the yardstick's one
prompt their TTFT mostly skips the prefill; direct (reset) and gpunet prefill every prompt.

Paired rounds: all servers run at once (idle ones use no CPU) and the methods are measured in
alternation, unit by unit — a single stream from each, then 2 concurrent streams from each, then
4, then 8 — rotating which method goes first each round. Reported: the median over rounds of
each figure, and the median (min–max) of the per-round ratios, so slow drift in the load of a
shared machine hits both sides of a ratio alike. Every request must produce --max-tokens tokens
(the exit status is 1 where one did not). Progress goes to stderr; the table (or --json) to
stdout.

On a machine shared with other work a unit that overlaps someone else's burst collapses (two
2-thread llama.cpp jobs on 2 cores slow each other far more than 2x). --quiet-wait SECONDS waits,
before each unit, up to that long for the CPUs to be at most 10% busy (bench_batching.py's
wait_quiet); the busiest reading before a method's units in a round is kept as `busy_before`.

    python tools/bench_inference.py [--rounds 3] [--max-tokens 128] [--concurrency 2 4 8]
        [--llama-cpp-python PYTHON] [--llama-server BIN] [--quiet-wait SECONDS]
        [--threads N] [--gpu-layers N|auto] [--no-speculate] [--only METHOD ...] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing
from _bench_servers import (
    DEFAULT_BENCH,
    N_CTX,
    ROOT,
    THREADS,
    Stream,
    Target,
    has_llama_cpp_server,
    llama_cpp_server,
    llama_server,
    load_bench,
    log,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _bench_inference_report import machine, paired_ratios, print_report
from bench_batching import one, wait_quiet
from bench_network import PROMPT, run_direct

from inference.batching import BatchingWorker
from inference.gpu import probe_gpus, supports_gpu_offload
from inference.model_file import inspect_gguf
from inference.offload import parse_gpu_layers, plan_offload

SLOTS = 8
CONCURRENCY = (2, 4, 8)
WARMUP_TOKENS = 16  # as the yardstick's measure() warms up
METHODS = ("direct", "gpunet", "llama_cpp.server", "llama-server")
# One unit's outcome: each request's (seconds to first token, tokens, seconds to its end), all
# from the moment the unit sent its requests, and the seconds until the last one ended.
Unit = tuple[list[Stream], float]


class Method:
    """A way of serving requests; `run(k)` sends k requests together and times them."""

    def __init__(self, name: str, run: Callable[[int], Awaitable[Unit]], concurrent: bool) -> None:
        self.name = name
        self.run = run
        self.concurrent = concurrent


_child_llm: Any = None


def _load_in_child(model: str, threads: int, gpu_layers: int) -> None:
    global _child_llm
    import llama_cpp

    _child_llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=N_CTX,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=gpu_layers,
        verbose=False,
    )


def _direct_in_child(max_tokens: int) -> dict[str, Any]:
    return run_direct(_child_llm, max_tokens)


def direct_process(
    model: Path, threads: int, gpu_layers: int
) -> concurrent.futures.ProcessPoolExecutor:
    """Direct llama-cpp-python in a process of its own. In this process its llama.cpp threads
    would share the machine with BatchingWorker's thread's: measured here, a direct run left
    the worker's next requests up to 35 % slower for several seconds (and the reverse), which
    no server in its own process suffers."""
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_load_in_child,
        initargs=(str(model), threads, gpu_layers),
    )
    pool.submit(run_direct_warmup).result()
    return pool


def run_direct_warmup() -> None:
    run_direct(_child_llm, WARMUP_TOKENS)


def direct_method(pool: concurrent.futures.ProcessPoolExecutor, max_tokens: int) -> Method:
    async def run(k: int) -> Unit:
        assert k == 1, "direct llama-cpp-python serves one stream at a time"
        future = pool.submit(_direct_in_child, max_tokens)
        r = await trio.to_thread.run_sync(future.result)
        return [(r["ttft_s"], r["tokens"], r["wall_s"])], r["wall_s"]

    return Method("direct", run, concurrent=False)


def scheduler_method(worker: BatchingWorker, max_tokens: int) -> Method:
    async def run(k: int) -> Unit:
        results: list[tuple[int, float, float]] = []

        async def request() -> None:
            results.append(await one(worker, PROMPT, max_tokens))

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            with worker.admit_together():  # all k join the batch in the same decode step
                for _ in range(k):
                    nursery.start_soon(request)
                await trio.testing.wait_all_tasks_blocked()
        wall = time.perf_counter() - started
        return [(first or None, tokens, total) for tokens, first, total in results], wall

    return Method("gpunet", run, concurrent=True)


def server_method(target: Target) -> Method:
    async def run(k: int) -> Unit:
        return await trio.to_thread.run_sync(target.streams, k)

    return Method(target.name, run, concurrent=True)


# --- the rounds -------------------------------------------------------------------------------


def single_figures(unit: Unit) -> dict[str, float]:
    (first, tokens, total), wall = unit[0][0], unit[1]
    if first is None or tokens < 2 or total <= first:
        raise RuntimeError(f"a single stream produced {tokens} tokens")
    return {
        "ttft_ms": first * 1000,
        "decode_tok_s": (tokens - 1) / (total - first),
        "agg1_tok_s": tokens / wall,
    }


async def measure(
    methods: list[Method], rounds: int, ks: tuple[int, ...], max_tokens: int, quiet_wait: float
) -> tuple[dict[str, list[dict[str, float]]], list[str]]:
    """Per method, one dict of figures per round; and every request that fell short."""
    runs: dict[str, list[dict[str, float]]] = {m.name: [] for m in methods}
    short: list[str] = []

    async def unit(r: int, m: Method, k: int, figures: dict[str, float]) -> Unit:
        busy = await wait_quiet(quiet_wait) if quiet_wait > 0 else 0.0
        figures["busy_before"] = max(figures.get("busy_before", 0.0), busy)
        streams, wall = await m.run(k)
        counts = [s[1] for s in streams]
        if any(c != max_tokens for c in counts):
            what = "single" if k == 1 else f"agg{k}"
            short.append(f"round {r + 1} {what} {m.name}: tokens {counts}")
            log(f"  !! {m.name} {what}: tokens {counts}, expected {max_tokens} each")
        return streams, wall

    for r in range(rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        row: dict[str, dict[str, float]] = {m.name: {} for m in methods}
        for m in order:
            f = row[m.name]
            f.update(single_figures(await unit(r, m, 1, f)))
            log(
                f"round {r + 1}/{rounds} single {m.name:<16} TTFT {f['ttft_ms']:6.1f} ms  "
                f"decode {f['decode_tok_s']:6.1f} tok/s  agg1 {f['agg1_tok_s']:6.1f} tok/s"
            )
        for k in ks:
            for m in order:
                if not m.concurrent:
                    continue
                streams, wall = await unit(r, m, k, row[m.name])
                tokens = sum(s[1] for s in streams)
                row[m.name][f"agg{k}_tok_s"] = tokens / wall
                log(
                    f"round {r + 1}/{rounds} agg{k:<4} {m.name:<16} {tokens / wall:6.1f} tok/s  "
                    f"({tokens} tokens in {wall:.2f} s)"
                )
        load = os.getloadavg()[0]
        for name, figures in row.items():
            figures["load1"] = load
            runs[name].append(figures)
        log(f"round {r + 1}/{rounds} done, load average {load:.2f}")
    return runs, short


# --- setting up -------------------------------------------------------------------------------


def offload_plan(model: Path, gpu_layers: str) -> dict[str, Any]:
    """--gpu-layers as a node reads it, planned for this benchmark's context (N_CTX x SLOTS)."""
    gpus = probe_gpus()
    info = inspect_gguf(model)
    plan = plan_offload(
        info, gpus, N_CTX, gpu_layers, n_seq=SLOTS, offload_supported=supports_gpu_offload()
    )
    return {
        "n_gpu_layers": plan.n_gpu_layers,
        "reason": plan.reason,
        "gpus": [f"{g.name}, {g.vram_total / 2**30:.0f} GiB" for g in gpus],
    }


def server_starters(
    args: argparse.Namespace, skipped: dict[str, str]
) -> dict[str, Callable[[Path], contextlib.AbstractContextManager[str]]]:
    """The servers that can run here; a note in `skipped` for each that cannot."""
    starters: dict[str, Callable[[Path], contextlib.AbstractContextManager[str]]] = {}
    python = args.llama_cpp_python
    if python is None:
        skipped["llama_cpp.server"] = "no --llama-cpp-python PYTHON given"
    else:
        try:
            usable = has_llama_cpp_server(python)
        except (OSError, ValueError) as exc:
            usable = False
            log(f"cannot run {python}: {exc}")
        if usable:
            # Its default interrupts a stream when the next request arrives: serve each to the end.
            starters["llama_cpp.server"] = lambda work: llama_cpp_server(
                python,
                args.model,
                work,
                interrupt_requests=False,
                threads=args.threads,
                gpu_layers=args.gpu_layers,
            )
        else:
            skipped["llama_cpp.server"] = f"{python} cannot import llama_cpp.server ([server])"
    binary = args.llama_server
    if binary is None:
        skipped["llama-server"] = "no --llama-server BIN given"
    elif not (binary.is_file() and os.access(binary, os.X_OK)):
        skipped["llama-server"] = f"{binary} is not an executable file"
    else:
        starters["llama-server"] = lambda work: llama_server(
            binary, args.model, work, args.threads, args.gpu_layers
        )
    return starters


async def run_all(
    args: argparse.Namespace,
    llm: concurrent.futures.ProcessPoolExecutor | None,
    targets: list[Target],
) -> tuple[dict[str, list[dict[str, float]]], list[str]]:
    methods: list[Method] = []
    worker: BatchingWorker | None = None
    try:
        if llm is not None:
            methods.append(direct_method(llm, args.max_tokens))
        if "gpunet" in args.only:
            log(f"loading BatchingWorker (slots={SLOTS})...")
            worker = BatchingWorker(
                args.model,
                n_ctx=N_CTX,
                n_threads=args.threads,
                n_gpu_layers=args.gpu_layers,
                slots=SLOTS,
                max_queue=0,
                speculate=args.speculate,
            )
            await worker.start()
            await one(worker, PROMPT, WARMUP_TOKENS)
            methods.append(scheduler_method(worker, args.max_tokens))
        methods += [server_method(t) for t in targets]
        methods.sort(key=lambda m: METHODS.index(m.name))
        return await measure(
            methods, args.rounds, args.concurrency, args.max_tokens, args.quiet_wait
        )
    finally:
        if worker is not None:
            await worker.aclose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="per request (default 128)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCY), metavar="K"
    )
    parser.add_argument(
        "--llama-cpp-python",
        default=None,
        metavar="PYTHON",
        help="interpreter with llama-cpp-python[server] (llama_cpp.server is skipped without)",
    )
    parser.add_argument(
        "--llama-server", type=Path, default=None, metavar="BIN", help="llama.cpp's llama-server"
    )
    parser.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        metavar="N",
        help=f"llama.cpp threads of every method (default {THREADS}, as the issue's anchors)",
    )
    parser.add_argument(
        "--gpu-layers",
        default="0",
        metavar="N|auto",
        help="layers on the GPU for every method: a number, or auto for what a node would "
        "choose (the offload planner over NVML's free memory); default 0, CPU only",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each unit, wait up to this long for the CPUs to be <=10%% busy (default: off)",
    )
    parser.add_argument(
        "--no-speculate",
        dest="speculate",
        action="store_false",
        help="gpunet without greedy speculation (on by default, as in a node; the yardstick's "
        "answer repeats a digit, which it drafts)",
    )
    parser.add_argument("--bench-script", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    if args.rounds < 1 or args.max_tokens < 2 or any(k < 2 for k in args.concurrency):
        parser.error("--rounds must be >= 1, --max-tokens >= 2 and each K >= 2")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    try:
        parse_gpu_layers(args.gpu_layers)
    except ValueError as exc:
        parser.error(str(exc))
    args.concurrency = tuple(sorted(set(args.concurrency)))
    return args


def main() -> int:
    args = parse_args()

    # The yardstick (it imports openai) times the servers; without them it is not needed.
    bench = None
    if {"llama_cpp.server", "llama-server"} & set(args.only):
        bench = load_bench(args.bench_script)
        if bench.PROMPT != PROMPT:
            raise SystemExit(
                f"the yardstick's prompt changed ({bench.PROMPT!r}); update bench_network"
            )
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    import llama_cpp

    offload = offload_plan(args.model, args.gpu_layers)
    args.gpu_layers = offload["n_gpu_layers"]
    log(f"offload: {offload['reason']}")

    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    skipped: dict[str, str] = {}
    starters = {k: v for k, v in server_starters(args, skipped).items() if k in args.only}
    for name, why in skipped.items():
        if name in args.only:
            log(f"{name} skipped: {why}")
    with (
        tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp,
        contextlib.ExitStack() as st,
    ):
        targets = []
        for name, start in starters.items():
            work = Path(tmp) / name
            work.mkdir()
            log(f"starting {name}...")
            url = st.enter_context(start(work))
            assert bench is not None
            targets.append(Target(name, url, bench, args.max_tokens))
        llm = None
        if "direct" in args.only:
            log("loading llama_cpp.Llama in a child process...")
            llm = st.enter_context(direct_process(args.model, args.threads, args.gpu_layers))
        runs, short = trio.run(run_all, args, llm, targets)

    medians = {
        name: {k: statistics.median(f[k] for f in figs) for k in figs[0]}
        for name, figs in runs.items()
    }
    ratios = paired_ratios(runs)
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "model": args.model.name,
        "threads": args.threads,
        "speculate": args.speculate,
        "gpu_layers": args.gpu_layers,
        "offload": offload,
        "max_tokens": args.max_tokens,
        "prompt": PROMPT,
        "slots": SLOTS,
        "rounds": args.rounds,
        "quiet_wait_s": args.quiet_wait,
        "concurrency": [1, *args.concurrency],
        "skipped": {k: v for k, v in skipped.items() if k in args.only},
        "medians": medians,
        "ratios": ratios,
        "all_full_length": not short,
        "short_requests": short,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
