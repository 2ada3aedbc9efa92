"""Constrained (JSON schema) against free decoding: single-stream decode tok/s side by side.

One BatchingWorker loads the model (default: Gemma 3 270M Q4_K_M, the `default_model`) and, for
each round, runs the same chat-turn prompt free and then constrained by SCHEMA (converted to GBNF
by inference/json_schema_grammar.py, enforced by inference/grammar.py), greedy and sampled, in
alternating order. Every request is `reproducible` (decoded alone, no drafting), so the figures
are the per-token cost of the grammar and nothing else. Printed per mode: the median decode
tok/s free and constrained, and the median (min-max) of the per-round ratio constrained / free;
also whether each constrained answer parsed as JSON, and the one-off cost of the first
constrained request (the scan of the vocabulary for byte tokens, inference/grammar.py).

    python tools/bench_constrained.py [--rounds 5] [--max-tokens 96] [--threads 2]
                                      [--model GGUF] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_batching import collect

from inference.batching import BatchingWorker
from inference.generation import GenerationRequest
from inference.json_schema_grammar import schema_to_gbnf

PROMPT = (
    "<start_of_turn>user\nDescribe the city of Lyon as a JSON object with its name, country, "
    "population and three famous sights.<end_of_turn>\n<start_of_turn>model\n"
)
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population": {"type": "integer"},
        "sights": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 3},
    },
    "required": ["name", "country", "population", "sights"],
    "additionalProperties": False,
}
MODES: dict[str, dict[str, Any]] = {"greedy": {}, "sampled": {"temperature": 0.7, "seed": 1}}


async def once(worker: BatchingWorker, request: GenerationRequest) -> dict[str, Any]:
    started = time.perf_counter()
    text, done = await collect(worker, request)
    return {
        "tok_s": done.decode_tokens_per_s,
        "tokens": done.completion_tokens,
        "seconds": time.perf_counter() - started,
        "text": text,
    }


def parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    grammar = schema_to_gbnf(SCHEMA)
    out: dict[str, Any] = {"model": str(args.model), "rounds": args.rounds, "modes": {}}
    async with BatchingWorker(
        args.model, n_ctx=1024, n_threads=args.threads, slots=1, speculate=False
    ) as worker:
        base = GenerationRequest(PROMPT, max_tokens=args.max_tokens, reproducible=True)
        await once(worker, base)  # warm-up
        first = await once(worker, attrs.evolve(base, grammar=grammar, max_tokens=2))
        out["first_constrained_request_s"] = round(first["seconds"], 3)
        for mode, params in MODES.items():
            free_req = attrs.evolve(base, **params)
            tight_req = attrs.evolve(free_req, grammar=grammar)
            free, tight, ratios, valid = [], [], [], 0
            for r in range(args.rounds):
                pair = [free_req, tight_req] if r % 2 == 0 else [tight_req, free_req]
                results = {id(q): await once(worker, q) for q in pair}
                f, t = results[id(free_req)], results[id(tight_req)]
                free.append(f["tok_s"])
                tight.append(t["tok_s"])
                ratios.append(t["tok_s"] / f["tok_s"] if f["tok_s"] else 0.0)
                valid += parses(t["text"])
            out["modes"][mode] = {
                "free_tok_s": round(statistics.median(free), 1),
                "constrained_tok_s": round(statistics.median(tight), 1),
                "ratio_median": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
                "constrained_parsed": f"{valid}/{args.rounds}",
                "sample": t["text"][:160],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: default model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    if args.rounds < 1 or args.max_tokens < 2:
        parser.error("--rounds must be at least 1 and --max-tokens at least 2")
    result = trio.run(bench, args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"model {result['model']}, {result['rounds']} rounds")
    print(f"first constrained request (vocabulary scan): {result['first_constrained_request_s']} s")
    for mode, m in result["modes"].items():
        print(
            f"{mode:8} free {m['free_tok_s']:6.1f} tok/s  constrained {m['constrained_tok_s']:6.1f}"
            f" tok/s  ratio {m['ratio_median']:.3f} ({m['ratio_min']:.3f}-{m['ratio_max']:.3f})"
            f"  JSON parsed {m['constrained_parsed']}"
        )
        print(f"         e.g. {m['sample']!r}")


if __name__ == "__main__":
    main()
