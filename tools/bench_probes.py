"""Prompt probes at the inference level (issue #16): does one spot check catch a node that drops
the first half of the prompt, and does it never call an honest node inconsistent?

No network: a "node" is a BatchingWorker in this process, computing the probe values of each
request's draws as p2p/node/serving.py signs them (int16 in the receipt: packed and unpacked
here too). Modes: honest `honest-t1` (1 thread), `honest-t2`, `honest-slots4` (4 requests
decoded together), `honest-spec` (speculation), `honest-cache` (the prompt cached: each asked
twice, the second answer checked); `cheat-prefix`: p2p/node/cheats.py's drop-prefix (the first
half of the prompt's text dropped; probes in the kept half computed on the truncated context,
those in the dropped half made up as the mean of the computed ones). A verifier worker (2
threads, 1 slot, no cache) scores each answer with the same draws and `judge` decides
(inference/verification.py, inference/probe_stat.py).

Prompts: tools/verification_prompts.py's, each also behind another one's text ("long": the
first half is an unrelated document, the case where the output alone shows little). Per mode
it prints the probe statuses, the verdicts, and |node - verifier| per probe (median, largest).

    .venv/bin/python tools/bench_probes.py --prompts 12 --rounds 2 --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verification_prompts import PROMPTS

from crypto.receipts import pack_logprobs, unpack_logprobs
from inference.batching import BatchingWorker
from inference.default_model import ensure_default_model
from inference.generation import GenerationDone, GenerationRequest
from inference.probe_stat import delta
from inference.prompt_probes import DEFAULT_PROBES, DRAW_SPAN, MAX_PROBES
from inference.scoring import ScoreRequest
from inference.verification import judge
from p2p.node.cheats import cheat_request, probe_commitments

MODES = ("honest-t1", "honest-t2", "honest-slots4", "honest-spec", "honest-cache", "cheat-prefix")


@attrs.define
class Answer:
    mode: str
    kind: str
    request: GenerationRequest
    tokens: tuple[int, ...] = ()
    probes: tuple[float | None, ...] = ()  # as the receipt carries them


def asked(
    n_prompts: int, rounds: int, max_tokens: int, rng: random.Random, probes: int
) -> list[Answer]:
    chosen = PROMPTS[:n_prompts] if n_prompts else PROMPTS
    out = []
    for _ in range(rounds):
        for i, (kind, prompt) in enumerate(chosen):
            before = chosen[(i + 1) % len(chosen)][1]
            for k, text in ((kind, prompt), (f"{kind}-long", f"{before}\n\n{prompt}")):
                draws = tuple(rng.randrange(DRAW_SPAN) for _ in range(probes))
                temperature, seed = (0.0, None) if rng.random() < 0.5 else (0.8, rng.randrange(99))
                request = GenerationRequest(
                    text,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                    probes=draws,  # type: ignore[arg-type]  # attrs converter
                )
                out.append(Answer("", k, request))
    return out


def worker_for(mode: str, path: Path) -> BatchingWorker:
    options: dict[str, Any] = {"n_threads": 2, "slots": 1, "speculate": False, "n_ctx": 1024}
    options["prefix_cache"] = mode == "honest-cache"
    if mode == "honest-t1":
        options["n_threads"] = 1
    elif mode == "honest-slots4":
        options["slots"] = 4
    elif mode == "honest-spec":
        options["speculate"] = True
    return BatchingWorker(path, **options)


async def answer(worker: BatchingWorker, mode: str, a: Answer, path: Path) -> None:
    cheat = "drop-prefix" if mode == "cheat-prefix" else ""
    run, plan = cheat_request(a.request, cheat, str(path))
    ids: list[int] = []
    done: GenerationDone | None = None
    async with worker.generate(run) as stream:
        async for item in stream:
            ids += item.token_ids
            if isinstance(item, GenerationDone):
                done = item
    assert done is not None
    values = probe_commitments(done.probe_logprobs, cheat, plan)
    a.tokens, a.probes = tuple(ids), unpack_logprobs(pack_logprobs(values))


async def run_mode(mode: str, path: Path, answers: list[Answer]) -> None:
    async with worker_for(mode, path) as worker:
        if mode == "honest-slots4":
            for start in range(0, len(answers), 4):
                async with trio.open_nursery() as nursery:
                    with worker.admit_together():
                        for a in answers[start : start + 4]:
                            nursery.start_soon(answer, worker, mode, a, path)
                        await trio.testing.wait_all_tasks_blocked()
            return
        for a in answers:
            if mode == "honest-cache":
                await answer(worker, mode, attrs.evolve(a), path)  # fills the cache
            await answer(worker, mode, a, path)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    path = ensure_default_model()
    rng = random.Random(args.seed)
    base = asked(args.prompts, args.rounds, args.max_tokens, rng, args.probes)
    modes = args.modes or list(MODES)
    results: dict[str, Any] = {}
    async with BatchingWorker(path, n_ctx=1024, n_threads=2, slots=1, prefix_cache=False) as v:
        for mode in modes:
            print(f"{mode}: {len(base)} requests", file=sys.stderr, flush=True)
            answers = [attrs.evolve(a, mode=mode) for a in base]
            await run_mode(mode, path, answers)
            statuses: dict[str, int] = {}
            verdicts: dict[str, int] = {}
            deltas: list[float] = []
            raw = results.setdefault("raw", {}).setdefault(mode, [])
            for a in answers:
                if not a.tokens:
                    continue
                scored = await v.score(ScoreRequest(a.request, a.tokens, top_logprobs=0))
                stat = judge(
                    scored.positions,
                    sampled=a.request.temperature > 0,
                    probes=a.probes,
                    verifier_probes=scored.probe_logprobs,
                )
                statuses[stat.probes.status] = statuses.get(stat.probes.status, 0) + 1
                verdicts[stat.verdict] = verdicts.get(stat.verdict, 0) + 1
                raw.append({"kind": a.kind, "node": a.probes, "verifier": scored.probe_logprobs})
                if len(a.probes) == len(scored.probe_logprobs):
                    deltas += [
                        delta(n, t) for n, t in zip(a.probes, scored.probe_logprobs, strict=True)
                    ]
            results[mode] = {
                "requests": sum(verdicts.values()),
                "probe_status": statuses,
                "verdicts": verdicts,
                "probes": len(deltas),
                "delta_median": round(statistics.median(deltas), 5) if deltas else None,
                "delta_p99": round(sorted(deltas)[int(0.99 * (len(deltas) - 1))], 4)
                if deltas
                else None,
                "delta_max": round(max(deltas), 4) if deltas else None,
            }
            print(json.dumps({mode: results[mode]}), file=sys.stderr, flush=True)
    raws = results.pop("raw", {})
    if args.raw:
        args.raw.write_text(json.dumps(raws))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_probes.py", description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=12, help="the first N prompts (0: all)")
    parser.add_argument("--rounds", type=int, default=1, help="times each prompt is asked")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--modes", nargs="*", choices=MODES, help="only these modes")
    parser.add_argument("--seed", type=int, default=0, help="for the draws and settings")
    parser.add_argument(
        "--probes",
        type=int,
        default=DEFAULT_PROBES,
        choices=range(1, MAX_PROBES + 1),
        metavar="N",
        help=f"draws per request (default {DEFAULT_PROBES}, at most {MAX_PROBES})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--raw", type=Path, help="write every probe's two values (JSON)")
    args = parser.parse_args(argv)
    try:
        report = trio.run(bench, args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line, not a traceback
        print(f"bench_probes.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for mode, row in report.items():
            print(
                f"{mode:14} probes {row['probe_status']} verdicts {row['verdicts']} "
                f"|d| median {row['delta_median']} p99 {row['delta_p99']} max {row['delta_max']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
