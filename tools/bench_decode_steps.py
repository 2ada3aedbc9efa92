"""The floor under BatchingWorker: llama.cpp decode steps of N sequences driven directly.

Loads the model through `inference.llama_lowlevel.LoadedModel` (as BatchingWorker does), prefills
the same prompt into N sequences, then times 64 greedy decode steps of all N at once, split into
llama_decode and the Python around it (batch filling, argmax). Aggregate tok/s here is what the
scheduler could reach with no request handling at all; compare it with tools/bench_inference.py
to see what the scheduler and the delivery of tokens to trio cost.

    python tools/bench_decode_steps.py [--model PATH] [--threads 2] [--steps 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.llama_lowlevel import LoadedModel

PROMPT = "List the numbers from 1 to 300, separated by commas:"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    m = LoadedModel.load(args.model, n_ctx=2048, n_seq=8, n_threads=args.threads, n_gpu_layers=0)
    prompt = m.tokenize(PROMPT)
    print(f"{args.model.name}, {args.threads} threads, {args.steps} greedy steps per row")
    for n_seq in (1, 2, 4, 8):
        m.forget_all()
        m.clear_batch()
        outs = []
        for s in range(n_seq):
            for p, t in enumerate(prompt):
                index = m.add(t, p, s, p == len(prompt) - 1)
            outs.append(index)
        m.decode()
        tokens = [m.argmax(i) for i in outs]
        in_decode = around = 0.0
        start = time.perf_counter()
        for step in range(args.steps):
            a = time.perf_counter()
            m.clear_batch()
            outs = [m.add(tokens[s], len(prompt) + step, s, True) for s in range(n_seq)]
            b = time.perf_counter()
            m.decode()
            c = time.perf_counter()
            tokens = [m.argmax(i) for i in outs]
            d = time.perf_counter()
            in_decode += c - b
            around += (b - a) + (d - c)
        total = time.perf_counter() - start
        print(
            f"{n_seq} sequences: step {1000 * total / args.steps:5.1f} ms "
            f"(llama_decode {1000 * in_decode / args.steps:5.1f}, "
            f"python {1000 * around / args.steps:4.2f})  "
            f"aggregate {n_seq * args.steps / total:6.1f} tok/s"
        )
    m.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
