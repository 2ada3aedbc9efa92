"""The commitments' log-sum-exps on the idle core (issue 19): helper thread on against off.

Every token a node generates carries a signed log-probability, whose normaliser is a log-sum-
exp over Gemma 3's 262,144-token vocabulary (~1 ms of numpy on this CPU), and every request's
16 prompt probes need one each. inference/normalizer_pool.py shares those of a step between
the batching worker's thread and a helper thread. This tool measures what that changes,
in-process on one BatchingWorker (the default model, Gemma 3 270M Q4_K_M, --threads, --slots
pinned), switching the pool's helper off and on between runs (`helper` / `alone`), ABAB...:
the order alternates round by round so drift in a shared machine's load hits both alike.

Each run is a burst of `c` concurrent greedy requests (ignore_eos, --max-tokens 128) on the real
prompts of tools/bench_real_prompts.py (code, prose, chat; a burst of 8 mixes them, each round
rotates them), with logprobs=0 and --probes draws, as a node serving through the client library
is asked. Per run: wall seconds per generated token (burst wall / tokens), CPU per token of
the worker thread, of the helper thread and of the whole process (from /proc). Reported per
concurrency: each mode's medians, and the median (min-max) of the rounds' ratios helper ÷ alone
(below 1: the helper saves that share). With --speculate the worker measures its step costs
first and drafts under its policy, as a node does; without, no drafts (the default here, to see
the normalizers alone). The draft policy's counters are printed with --speculate. Also per
run: `read`, the wall time of each step's reading of its logits (decode's end to the last
sequence's tokens taken), the serial section the helper shortens.

`helper` is the pool as it serves: it times both ways and takes the cheaper one step by step,
so on a loaded machine it mostly computes alone (--forced: the helper on every step).
`alone` makes the worker compute every row itself, as before. `--micro N` measures instead
the read section alone on real logits of one decode: N alternations of steps of 1 and of
--slots rows (argmax + log-sum-exp a row), the helper forced on against off.

    python tools/bench_normalizers.py [--rounds 4] [--concurrency 1 8] [--max-tokens 128]
        [--threads 2] [--slots 8] [--probes 16] [--kind mixed|code|prose|chat]
        [--speculate] [--forced] [--micro N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_real_prompts import PROMPTS

from inference.batching import BatchingWorker
from inference.default_model import ensure_default_model
from inference.generation import GenerationDone, GenerationRequest

TICKS = os.sysconf("SC_CLK_TCK")
MODES = ("alone", "helper")
RATIOS = ("wall_ms_per_token", "worker_cpu_ms_per_token", "read_ms_per_token")


def thread_cpu(tid: int | None) -> float:
    """CPU seconds (user + system) of one thread of this process so far; 0 when unknown."""
    if tid is None:
        return 0.0
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def prompts_for(round_no: int, concurrency: int, kind: str = "mixed") -> list[str]:
    """`concurrency` prompts of the class (or mixing them), rotated by the round."""
    if kind != "mixed":
        pool = list(PROMPTS[kind])
    else:
        pool = [p for trio_ in zip(*PROMPTS.values(), strict=True) for p in trio_]
    return [pool[(round_no + i) % len(pool)] for i in range(concurrency)]


async def burst(worker: BatchingWorker, prompts: list[str], args: argparse.Namespace) -> int:
    """Run the prompts together; the tokens generated."""
    rng = random.Random(len(prompts))
    tokens = 0

    async def one(prompt: str) -> None:
        nonlocal tokens
        draws = tuple(rng.randrange(2**32) for _ in range(args.probes))
        request = GenerationRequest(
            prompt, max_tokens=args.max_tokens, ignore_eos=True, logprobs=0, probes=draws
        )
        async with worker.generate(request) as stream:
            async for item in stream:
                if isinstance(item, GenerationDone):
                    tokens += item.completion_tokens

    async with trio.open_nursery() as nursery:
        with worker.admit_together():
            for prompt in prompts:
                nursery.start_soon(one, prompt)
            await trio.testing.wait_all_tasks_blocked()
    return tokens


class StepTimer:
    """Wraps the worker's pool.step: the wall time of each step's reading of its logits (from
    the end of llama_decode to the last sequence's tokens taken: sampling, log-probabilities,
    probes, bookkeeping), the serial section the helper is meant to shorten."""

    def __init__(self, pool: Any) -> None:
        self.inner = pool.step
        self.times: list[float] = []
        pool.step = self.step

    @contextlib.contextmanager
    def step(self, model: Any, rows: Any) -> Iterator[Any]:
        t0 = time.perf_counter()
        try:
            with self.inner(model, rows) as norm:
                yield norm
        finally:
            self.times.append(time.perf_counter() - t0)


async def measure(
    worker: BatchingWorker, timer: StepTimer, mode: str, prompts: list[str], args: Any
) -> dict[str, float]:
    pool = worker._norms  # the worker's normalizer pool: its helper on or off for this run
    pool.helper = mode == "helper"
    pool.adaptive = not args.forced
    assert worker._thread is not None
    worker_tid = worker._thread.native_id
    helper_tid = pool.thread.native_id if pool.thread is not None else None
    cpu0, w0, h0 = time.process_time(), thread_cpu(worker_tid), thread_cpu(helper_tid)
    helped0, alone0, t0 = pool.helped, pool.alone_steps, time.perf_counter()
    timer.times = []
    tokens = await burst(worker, prompts, args)
    wall = time.perf_counter() - t0
    helper_tid = pool.thread.native_id if pool.thread is not None else None
    per = 1000.0 / max(tokens, 1)
    return {
        "tokens": tokens,
        "wall_ms_per_token": wall * per,
        "worker_cpu_ms_per_token": (thread_cpu(worker_tid) - w0) * per,
        "helper_cpu_ms_per_token": (thread_cpu(helper_tid) - h0) * per if helper_tid else 0.0,
        "process_cpu_ms_per_token": (time.process_time() - cpu0) * per,
        "helped_units": pool.helped - helped0,
        "alone_steps": pool.alone_steps - alone0,  # the measured choice sent alone
        "steps": len(timer.times),
        "read_ms_per_step_median": statistics.median(timer.times) * 1000 if timer.times else 0.0,
        "read_ms_per_token": sum(timer.times) * per,
    }


def summarize(runs: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {"concurrency": concurrency}
    keys = (
        "read_ms_per_token",
        "read_ms_per_step_median",
        "wall_ms_per_token",
        "worker_cpu_ms_per_token",
        "helper_cpu_ms_per_token",
        "process_cpu_ms_per_token",
    )
    mine = [r for r in runs if r["concurrency"] == concurrency]
    for mode in MODES:
        out[mode] = {k: statistics.median(r[mode][k] for r in mine) for k in keys}
    for k in RATIOS:
        ratios = [r["helper"][k] / r["alone"][k] for r in mine if r["alone"][k] > 0]
        out[f"ratio_{k}"] = (
            {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            if ratios
            else None
        )
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.model) if args.model else ensure_default_model()
    runs: list[dict[str, Any]] = []
    async with BatchingWorker(
        path, n_ctx=args.ctx, n_threads=args.threads, slots=args.slots, speculate=args.speculate
    ) as worker:
        if args.speculate:  # as a node does at start: drafts weighed against measured costs
            worker.use_step_costs(await worker.measure_step_costs())
        timer = StepTimer(worker._norms)
        await burst(worker, prompts_for(0, 2), args)  # warm-up, helper thread started
        for round_no in range(args.rounds):
            for concurrency in args.concurrency:
                prompts = prompts_for(round_no, concurrency, args.kind)
                order = MODES if round_no % 2 == 0 else MODES[::-1]
                row: dict[str, Any] = {"round": round_no, "concurrency": concurrency}
                for mode in order:
                    row[mode] = await measure(worker, timer, mode, prompts, args)
                runs.append(row)
                print(
                    f"round {round_no} x{concurrency}: "
                    + ", ".join(
                        f"{m} {row[m]['wall_ms_per_token']:.2f} ms/tok wall, "
                        f"{row[m]['worker_cpu_ms_per_token']:.2f} worker CPU"
                        for m in order
                    ),
                    file=sys.stderr,
                    flush=True,
                )
        policy = worker.draft_policy
        counters = {
            k: getattr(policy, k)
            for k in ("offered", "fed", "declined")
            if policy is not None and hasattr(policy, k)
        }
    return {
        "model": path.name,
        "threads": args.threads,
        "slots": args.slots,
        "speculate": args.speculate,
        "probes": args.probes,
        "kind": args.kind,
        "forced": args.forced,
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "threads_alive_after": sorted(t.name for t in threading.enumerate()),
        "draft_counters": counters,
        "summary": [summarize(runs, c) for c in args.concurrency],
        "runs": runs,
    }


def show(result: dict[str, Any]) -> None:
    print(
        f"{result['model']}, threads {result['threads']}, slots {result['slots']}, "
        f"speculate {result['speculate']}, probes {result['probes']}"
    )
    for s in result["summary"]:
        print(f"x{s['concurrency']}:")
        for mode in MODES:
            m = s[mode]
            print(
                f"  {mode:6}  read {m['read_ms_per_token']:.2f} ms/token "
                f"({m['read_ms_per_step_median']:.2f} a step)  wall "
                f"{m['wall_ms_per_token']:.2f} ms/token  worker CPU "
                f"{m['worker_cpu_ms_per_token']:.2f}  helper CPU "
                f"{m['helper_cpu_ms_per_token']:.2f}  process CPU "
                f"{m['process_cpu_ms_per_token']:.2f}"
            )
        for k in RATIOS:
            r = s[f"ratio_{k}"]
            if r:
                print(f"  helper/alone {k}: {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})")
    if result["draft_counters"]:
        print(f"draft policy: {result['draft_counters']}")


def micro(args: argparse.Namespace) -> dict[str, Any]:
    """The read section alone, on real logits: one model decode of --slots prompts' rows, then
    --micro alternations of steps of 1 and of --slots rows (argmax + log-sum-exp each, as a
    greedy sequence's `_take`), with the helper off and on; medians of each step's wall."""
    from inference.llama_lowlevel import LoadedModel
    from inference.normalizer_pool import NormalizerPool

    path = Path(args.model) if args.model else ensure_default_model()
    model = LoadedModel.load(
        path, n_ctx=args.ctx, n_seq=args.slots, n_threads=args.threads, n_gpu_layers=0
    )
    pool = NormalizerPool(helper=True)
    pool.adaptive = False  # forced on: what the helper itself costs or saves here
    try:
        prompts = prompts_for(0, args.slots)
        model.clear_batch()
        rows = []
        for seq, prompt in enumerate(prompts):
            tokens = model.tokenize(prompt)
            for pos, token in enumerate(tokens):
                index = model.add(token, pos, seq, pos == len(tokens) - 1)
            rows.append(index)
        if model.decode() != 0:
            raise RuntimeError("llama_decode failed")
        times: dict[str, list[float]] = {}
        for i in range(args.micro):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                pool.helper = mode == "helper"
                for n in (1, len(rows)):
                    t0 = time.perf_counter()
                    with pool.step(model, rows[:n]) as norm:
                        for index in rows[:n]:
                            model.argmax(index)
                            norm(index)
                    times.setdefault(f"{mode} x{n}", []).append(time.perf_counter() - t0)
    finally:
        pool.close()
        model.close()
    ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
    ratios = {f"x{n}": ms[f"helper x{n}"] / ms[f"alone x{n}"] for n in (1, len(rows))}
    return {
        "model": path.name,
        "steps_ms_median": ms,
        "helper_over_alone": ratios,
        "alternations": args.micro,
        "helped_units": pool.helped,
        "alone_steps": pool.alone_steps,
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a GGUF (default: the default model from the cache)")
    p.add_argument("--rounds", type=int, default=4, help="ABAB alternations (default 4)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    p.add_argument("--slots", type=int, default=8, help="batch slots, pinned (default 8)")
    p.add_argument("--ctx", type=int, default=1024, help="context per slot (default 1024)")
    p.add_argument("--probes", type=int, default=16, help="prompt probes a request (16)")
    p.add_argument(
        "--speculate",
        action="store_true",
        help="draft under the measured-cost policy, as a node does",
    )
    p.add_argument(
        "--micro",
        type=int,
        default=0,
        metavar="N",
        help="instead: N alternations of the read section alone on real logits (no serving)",
    )
    p.add_argument(
        "--forced", action="store_true", help="helper on every step (not the measured choice)"
    )
    p.add_argument(
        "--kind", choices=["mixed", *PROMPTS], default="mixed", help="prompt class (mixed)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    if args.rounds < 1 or min(args.concurrency) < 1 or max(args.concurrency) > args.slots:
        p.error("--rounds ≥ 1 and every --concurrency between 1 and --slots")
    return args


def main() -> int:
    args = parse_args()
    try:
        if args.micro:
            print(json.dumps(micro(args), indent=2))
            return 0
        result = trio.run(bench, args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear line, not a traceback
        print(f"bench_normalizers: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        show(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
