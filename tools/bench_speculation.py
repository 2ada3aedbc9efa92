"""Greedy speculation on and off, side by side: single-stream decode speed per prompt, one run.

Two BatchingWorkers load the same model (default: Gemma 3 270M Q4_K_M) in this process, one with
greedy speculation (inference/speculation.py) and one without, same threads and context. For
each prompt below, each round runs one greedy request of --max-tokens on each worker, in
alternating order, and records the worker's decode tok/s (tokens after the first / seconds after
the first), the draft tokens fed and kept, and whether both texts are the same. Printed per
prompt: the medians, the median (min-max) of the per-round ratio on / off, and the wasted draft
tokens (fed and not kept) per request. Neither worker caches prompts, so every request prefills.

The prompts range from the benchmark yardstick's list (whose answer repeats a digit) through
prose and code to a chat turn; the default model is a small base model that falls into loops on
most of them, which is where drafting pays.

    python tools/bench_speculation.py [--rounds 3] [--max-tokens 128] [--threads 2]
                                      [--model GGUF] [--json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_batching import collect, log

from inference.batching import BatchingWorker
from inference.generation import GenerationRequest

PROMPTS = {
    "yardstick list": "List the numbers from 1 to 300, separated by commas:",
    "story": "Once upon a time, in a small village by the sea,",
    "history": "The history of the Roman Empire",
    "code": "def quicksort(arr):",
    "q&a": "Q: What is the capital of France and why is it famous?\nA:",
    "letter": "Write a letter to your landlord asking to fix the heating.",
    "chat turn": "<start_of_turn>user\nExplain how a bicycle works.<end_of_turn>\n"
    "<start_of_turn>model\n",
}


async def once(worker: BatchingWorker, prompt: str, max_tokens: int) -> dict[str, Any]:
    text, done = await collect(worker, GenerationRequest(prompt, max_tokens=max_tokens))
    return {
        "decode_tok_s": done.decode_tokens_per_s,
        "tokens": done.completion_tokens,
        "drafted": done.draft_tokens,
        "kept": done.accepted_draft_tokens,
        "text": text,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    def worker(speculate: bool) -> BatchingWorker:
        return BatchingWorker(
            args.model,
            n_ctx=2048,
            n_threads=args.threads,
            slots=1,
            max_queue=0,
            prefix_cache=False,
            speculate=speculate,
        )

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PROMPTS}
    async with worker(True) as on, worker(False) as off:
        await once(on, "Hello", 8)  # warm-up
        await once(off, "Hello", 8)
        for r in range(args.rounds):
            for i, (name, prompt) in enumerate(PROMPTS.items()):
                pair = [("on", on), ("off", off)]
                if (r + i) % 2:
                    pair.reverse()
                got = {label: await once(w, prompt, args.max_tokens) for label, w in pair}
                row = {
                    "ratio": got["on"]["decode_tok_s"] / got["off"]["decode_tok_s"],
                    "on_tok_s": got["on"]["decode_tok_s"],
                    "off_tok_s": got["off"]["decode_tok_s"],
                    "drafted": got["on"]["drafted"],
                    "kept": got["on"]["kept"],
                    "tokens": got["on"]["tokens"],
                    "same_text": got["on"]["text"] == got["off"]["text"],
                }
                runs[name].append(row)
                log(f"round {r + 1}/{args.rounds} {name}: " + json.dumps(row, default=str))
    summary = {}
    for name, rows in runs.items():
        ratios = [row["ratio"] for row in rows]
        summary[name] = {
            "on_tok_s": statistics.median(row["on_tok_s"] for row in rows),
            "off_tok_s": statistics.median(row["off_tok_s"] for row in rows),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "kept": rows[0]["kept"],
            "wasted": rows[0]["drafted"] - rows[0]["kept"],
            "tokens": rows[0]["tokens"],
            "same_text": all(row["same_text"] for row in rows),
        }
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": args.model.name,
        "threads": args.threads,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "summary": summary,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="per request (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    if args.rounds < 1 or args.max_tokens < 2:
        parser.error("--rounds must be at least 1 and --max-tokens at least 2")
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    report = trio.run(measure, args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'prompt':16}{'on tok/s':>10}{'off tok/s':>10}  {'on/off':18}{'kept':>6}{'wasted':>8}")
    for name, s in report["summary"].items():
        spread = f"{s['ratio']:.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})"
        print(
            f"{name:16}{s['on_tok_s']:10.1f}{s['off_tok_s']:10.1f}  {spread:18}"
            f"{s['kept']:6}{s['wasted']:8}" + ("" if s["same_text"] else "  (texts differ)")
        )


if __name__ == "__main__":
    main()
