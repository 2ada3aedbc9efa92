"""What OpenAI's `n` = 4 costs against n = 1 on one node: prefill (time to first token) and
aggregate decode, with the prompt's cells shared (inference/sibling_prefill.py) and without.

An n-request reaches a node as n same-prompt requests that arrive together
(p2p/api/choices.py); here they are submitted straight to a BatchingWorker on the default model
(Gemma 3 270M Q4_K_M), inside `admit_together()`, so they join in one step as they do on a node.
Three cases, interleaved round by round so drift in a shared machine's load hits all alike:

- `n1`: one request;
- `n4`: four requests, prefix cache on (the default): one prefills, three share its cells;
- `n4_unshared`: four requests on a worker with the prefix cache off, each prefilling.

Each run's prompt (~300 tokens) is new (its first words carry the run's number), so nothing is
reused from an earlier run. Sampled (temperature 0.8, seeds s..s+3 as choices get them), with
ignore_eos so each generates --max-tokens; sampled requests do not speculate, so the decode
figures are the batch's own. Figures per run:

    ttft_s          submission → the last of the n first tokens (all choices started)
    aggregate_tok_s tokens after each first token, all n / (last done − earliest first token)

and the ratios to `n1` within each round (target of issue #17: n = 4 costs ≤ 1.3× the prefill,
and its aggregate decode is ≥ 2× a single stream). Medians (min–max) over --rounds.

    python tools/bench_n_choices.py [--rounds 5] [--max-tokens 64] [--threads 2]
                                    [--quiet-wait 60] [--json]

Before each run it waits (up to --quiet-wait s) for the CPUs to be nearly idle and records the
cores other processes used during the run (`others_cpu`), as tools/bench_batching.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.batching import BatchingWorker
from inference.default_model import ensure_default_model
from inference.generation import GenerationDone, GenerationRequest
from tools.bench_batching import busy_seconds, summary, wait_quiet

N_CTX = 2048
TOPIC = (
    "The river valley was settled by farmers who grew barley and flax along its banks. Over "
    "the centuries they built terraces, canals and small stone bridges, traded wool for salt "
    "with the hill towns, and kept records of every flood on clay tablets in the temple. "
)


def prompt_of(run: int) -> str:
    return f"Report {run}. " + TOPIC * 5 + "Write a short history of the valley:"


async def one(
    worker: BatchingWorker, request: GenerationRequest, out: list[tuple[float, float, int]]
) -> None:
    """Appends (first text, done, completion tokens), times from perf_counter."""
    first = 0.0
    async with worker.generate(request) as stream:
        async for item in stream:
            if isinstance(item, GenerationDone):
                out.append((first, time.perf_counter(), item.completion_tokens))
            elif not first:
                first = time.perf_counter()


async def burst(worker: BatchingWorker, n: int, run: int, max_tokens: int) -> dict[str, float]:
    prompt = prompt_of(run)
    requests = [
        GenerationRequest(
            prompt, max_tokens=max_tokens, temperature=0.8, seed=run * 10 + i, ignore_eos=True
        )
        for i in range(n)
    ]
    results: list[tuple[float, float, int]] = []
    machine0, own0 = busy_seconds()
    started = time.perf_counter()
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            with worker.admit_together():
                for request in requests:
                    nursery.start_soon(one, worker, request, results)
                await trio.testing.wait_all_tasks_blocked()
    wall = time.perf_counter() - started
    machine1, own1 = busy_seconds()
    firsts = [r[0] for r in results]
    decoded = sum(r[2] - 1 for r in results)
    return {
        "ttft_s": max(firsts) - started,
        "aggregate_tok_s": decoded / (max(r[1] for r in results) - min(firsts)),
        # cores other processes used meanwhile: compare runs where this is near 0
        "others_cpu": max(0.0, (machine1 - machine0) - (own1 - own0)) / wall,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    model = ensure_default_model()
    shared, unshared = (
        BatchingWorker(
            model, n_ctx=N_CTX, n_threads=args.threads, slots=4, max_queue=0, prefix_cache=cache
        )
        for cache in (True, False)
    )
    cases = {"n1": (shared, 1), "n4": (shared, 4), "n4_unshared": (unshared, 4)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    async with shared, unshared:
        for worker in (shared, unshared):
            await burst(worker, 1, 0, 8)  # warm-up
        run = 1
        for round_no in range(args.rounds):
            order = list(cases) if round_no % 2 == 0 else list(reversed(cases))
            for name in order:
                worker, n = cases[name]
                await wait_quiet(args.quiet_wait)
                result = await burst(worker, n, run, args.max_tokens)
                run += 1
                runs[name].append(result)
                print(
                    f"round {round_no + 1} {name:12s} TTFT {result['ttft_s'] * 1000:6.0f} ms, "
                    f"aggregate {result['aggregate_tok_s']:6.1f} tok/s, others used "
                    f"{result['others_cpu']:.2f} cores",
                    file=sys.stderr,
                    flush=True,
                )
    ratios = {
        name: {
            "ttft": summary(
                [r["ttft_s"] / b["ttft_s"] for r, b in zip(runs[name], runs["n1"], strict=True)]
            ),
            "aggregate": summary(
                [
                    r["aggregate_tok_s"] / b["aggregate_tok_s"]
                    for r, b in zip(runs[name], runs["n1"], strict=True)
                ]
            ),
        }
        for name in ("n4", "n4_unshared")
    }
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "model": model.name,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "results": {
            name: {
                "ttft_ms": summary([r["ttft_s"] * 1000 for r in rs]),
                "aggregate_tok_s": summary([r["aggregate_tok_s"] for r in rs]),
                "others_cpu": [round(r["others_cpu"], 2) for r in rs],
            }
            for name, rs in runs.items()
        },
        "ratio_to_n1": ratios,
    }


def print_table(report: dict[str, Any]) -> None:
    print(
        f"{report['model']}, {report['threads']} threads, {report['max_tokens']} tokens per "
        f"choice, median of {report['rounds']} rounds (min-max); load average "
        f"{report['load_average'][0]:.1f}"
    )
    print(
        "| case | TTFT ms | aggregate decode tok/s | TTFT / n1 | aggregate / n1 "
        "| others' cores, at most |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in report["results"].items():
        t, a = r["ttft_ms"], r["aggregate_tok_s"]
        ratio = report["ratio_to_n1"].get(name)
        rt = f"{ratio['ttft']['median']:.2f}×" if ratio else "1"
        ra = f"{ratio['aggregate']['median']:.2f}×" if ratio else "1"
        print(
            f"| {name} | {t['median']:.0f} ({t['min']:.0f}–{t['max']:.0f}) "
            f"| {a['median']:.1f} ({a['min']:.1f}–{a['max']:.1f}) | {rt} | {ra} "
            f"| {max(r['others_cpu']):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each case (default 5)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per choice")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="seconds to wait, before each run, for the CPUs to be at most 10%% busy",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.rounds < 1 or args.max_tokens < 2:
        parser.error("--rounds must be at least 1 and --max-tokens at least 2")
    report = trio.run(main_async, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
