"""What prompt probes cost the node (issue 16): the rows they add, timed on llama.cpp directly.

A probe is one more row with logits (inference/probe_rows.py). Where the request's own prefill
computes the position, the row is the prefill's, with the output head turned on: timed here as
a prompt prefill with logits on its last row against last + K rows. Where the prompt came from
the prefix cache, each probe is a row of its own on a spare sequence id, riding in a decode
step: timed as a step of N rows (N sequences decoding) against N + K rows. A and B alternate
(ABAB...); the figures are medians, and the extra milliseconds the median of the pairs'
differences. Relate them to a request: a 128-token request at N sequences takes about 128 steps
of the N-row step.

    python tools/bench_probe_cost.py [--model PATH] [--threads 2] [--reps 12] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.llama_lowlevel import LoadedModel
from inference.probe_rows import SPARE_SEQS
from inference.prompt_probes import DEFAULT_PROBES

TEXT = "Volunteers run the network on their own machines; each request is served by one node. "
PROMPT_TOKENS = 200
STREAMS = 8


def measure(m: LoadedModel, reps: int) -> dict[str, dict[str, float]]:
    prompt = m.tokenize(TEXT * 12)[:PROMPT_TOKENS]
    n = len(prompt)
    probes = [i * (n - 2) // DEFAULT_PROBES for i in range(DEFAULT_PROBES)]

    def prefill(extra: bool) -> float:
        m.forget(0)
        m.clear_batch()
        for pos, token in enumerate(prompt):
            m.add(token, pos, 0, pos == n - 1 or (extra and pos in probes))
        started = time.perf_counter()
        if m.decode() != 0:
            raise SystemExit("llama_decode failed")
        return time.perf_counter() - started

    def step(rows: int, extra: bool) -> float:
        for seq in range(rows):
            m.forget_from(seq, n)
        m.clear_batch()
        for seq in range(rows):
            m.add(prompt[5], n, seq, True)
        spares = range(STREAMS, STREAMS + len(probes))
        if extra:
            for spare, pos in zip(spares, probes, strict=True):
                if pos:
                    m.share(0, spare, pos)
                m.add(prompt[pos], pos, spare, True)
        started = time.perf_counter()
        if m.decode() != 0:
            raise SystemExit("llama_decode failed")
        elapsed = time.perf_counter() - started
        for spare in spares:
            m.forget(spare)
        return elapsed

    prefill(False)
    for seq in range(1, STREAMS):
        m.share(0, seq, n)  # every stream decodes after the same prompt
    cases: list[tuple[str, Callable[[bool], float]]] = [
        (f"prefill_{n}", prefill),
        ("step_x1", lambda extra: step(1, extra)),
        (f"step_x{STREAMS}", lambda extra: step(STREAMS, extra)),
    ]
    out = {}
    for name, run in cases:
        off: list[float] = []
        on: list[float] = []
        for r in range(reps):
            for extra in (True, False) if r % 2 else (False, True):
                (on if extra else off).append(run(extra))
        out[name] = {
            "off_ms": 1000 * statistics.median(off),
            "on_ms": 1000 * statistics.median(on),
            "extra_ms": 1000 * statistics.median(b - a for a, b in zip(off, on, strict=True)),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=12, help="A/B pairs per case")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    m = LoadedModel.load(
        args.model,
        n_ctx=512,
        n_seq=STREAMS,
        n_threads=args.threads,
        n_gpu_layers=0,
        n_spare=SPARE_SEQS,
    )
    try:
        out = measure(m, args.reps)
    finally:
        m.close()
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.model.name}, {args.threads} threads, {DEFAULT_PROBES} probes, {args.reps} pairs")
    for name, v in out.items():
        print(
            f"{name:>12}: {v['off_ms']:8.1f} ms without, {v['on_ms']:8.1f} ms with probes "
            f"(+{v['extra_ms']:.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
