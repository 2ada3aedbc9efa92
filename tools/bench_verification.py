"""Spot-check verification at the inference level (issue #16): honest and cheating workers
generate, a verifier worker on the default model scores what they claim, and the statistic
(inference/verification.py `judge`) gives each request a verdict.

No network: a "node" here is a BatchingWorker in this process. Modes:

- honest, in the configurations a volunteer may run: `honest-t1` (1 thread), `honest-t2`
  (2 threads), `honest-slots4` (4 slots, 4 requests decoded together), `honest-spec` (greedy
  speculation on), `honest-cache` (prompt-prefix cache on, each prompt asked twice and the
  second, cached answer checked); the other options off in each;
- cheating, each claiming the default model and the request's own settings: `cheat-tiny` (the
  random-weight tiny test GGUF), `cheat-q3` / `cheat-q2` (the default model requantized to
  Q3_K_M / Q2_K), `cheat-random` (sampled at temperature 10 with every filter off),
  `cheat-prefix` (the first half of the prompt dropped), `cheat-lying` (honest tokens, made-up
  logprob commitments).

Every node commits to its chosen tokens' logprobs as p2p/node/serving.py signs them in receipts;
`judge` compares them with the verifier's (inference/verification.py).

Requests are user-like prompts (code, prose, chat), each greedy and at temperature 0.8 with a
seed. The verifier (2 threads, 1 slot, no cache, no speculation) scores every position; the
cost of a check is its scoring time against the time `honest-t2` took to generate the same
request, and is also measured for a check that gets logits at only --check-positions
positions (ScoreRequest.only). Per mode it prints the verdict counts, the detection rate per
checked request d, and the probability of catching a node within 50 of its requests when a
fraction f of requests is checked, 1 - (1 - f d)^50, for f = 2 % / cost (2 % extra compute)
and f = 10 %.

    python tools/bench_verification.py --quick            # a few minutes on 2 cores
    python tools/bench_verification.py --max-tokens 128 --rounds 2 --json --plot stat.png
    python tools/bench_verification.py --raw margins.json # per-position data, to recalibrate
    python tools/bench_verification.py --from-raw margins.json --plot stat.png  # judge again

Besides whole requests, every run (and --from-raw) re-judges each request as spot checks of
32 positions (tools/_verification_stats.py) and simulates the ledger's checks until a flag.

The cost figures are ratios of this process's CPU time (all its threads; one worker runs at a
time): generating a request on `honest-t2` against scoring it, so other work on a shared
machine moves them less than wall times (which moved 2-5× from run to run).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _verification_stats import (
    CHEATS,
    HONEST,
    Claim,
    from_raw,
    plot,
    print_report,
    raw_row,
    rejudge,
    summarize,
)
from _window_checks import print_window_checks, window_checks
from verification_prompts import PROMPTS

from crypto.receipts import pack_logprobs, unpack_logprobs
from inference.batching import BatchingWorker
from inference.default_model import ensure_default_model
from inference.generation import GenerationDone, GenerationRequest, TokenChunk
from inference.scoring import ScoreRequest
from inference.verification import judge


def requests(
    max_tokens: int, rounds: int, kinds: int, skip: int = 0
) -> list[tuple[str, GenerationRequest]]:
    """Every prompt (after the first *skip*) greedy and at temperature 0.8 with a seed, `rounds`
    times (new seeds)."""
    out = []
    chosen = PROMPTS[skip : skip + kinds] if kinds else PROMPTS[skip:]
    for r in range(rounds):
        for i, (kind, prompt) in enumerate(chosen, start=skip):
            out.append((kind, GenerationRequest(prompt, max_tokens=max_tokens, seed=None)))
            seed = 1000 + 100 * r + i
            out.append(
                (kind, GenerationRequest(prompt, max_tokens=max_tokens, temperature=0.8, seed=seed))
            )
    return out


Generated = tuple[list[int], float, tuple[float | None, ...]]


async def generate(
    worker: BatchingWorker, request: GenerationRequest, lie: bool = False
) -> Generated:
    """Token ids, seconds, and the logprob commitments a node signs (p2p/node/serving.py:
    the chosen tokens' logprobs; made up when *lie*)."""
    started = time.process_time()
    ids: list[int] = []
    entries: list[float | None] = []
    async with worker.generate(attrs.evolve(request, logprobs=0)) as stream:
        async for item in stream:
            if isinstance(item, TokenChunk):
                entries += [e.logprob for e in item.logprobs]
            elif isinstance(item, GenerationDone):
                entries += [None] * len(item.token_ids)
            ids += item.token_ids
    if lie:
        entries = [-random.uniform(0.0, 5.0) for _ in entries]
    committed = unpack_logprobs(pack_logprobs(entries))
    return ids, time.process_time() - started, committed


def worker_for(mode: str, models: dict[str, Path]) -> BatchingWorker:
    options: dict[str, Any] = {
        "n_threads": 2,
        "slots": 1,
        "speculate": False,
        "prefix_cache": False,
        "n_ctx": 1024,
        "max_queue": 8,
    }
    if mode == "honest-t1":
        options["n_threads"] = 1
    elif mode == "honest-slots4":
        options["slots"] = 4
    elif mode == "honest-spec":
        options["speculate"] = True
    elif mode == "honest-cache":
        options.update(slots=2, prefix_cache=True)
    path = {"cheat-tiny": "tiny", "cheat-q3": "Q3_K_M", "cheat-q2": "Q2_K"}.get(mode, "default")
    return BatchingWorker(models[path], **options)


def served(mode: str, request: GenerationRequest) -> GenerationRequest:
    """What the node really runs for `request` (the claim keeps `request`)."""
    if mode == "cheat-random":
        return attrs.evolve(
            request, temperature=10.0, top_k=0, top_p=1.0, min_p=0.0, seed=request.seed or 7
        )
    if mode == "cheat-prefix":
        return attrs.evolve(request, prompt=request.prompt[len(request.prompt) // 2 :])
    return request


async def run_mode(
    mode: str, models: dict[str, Path], asked: list[tuple[str, GenerationRequest]]
) -> list[Claim]:
    claims: list[Claim] = []
    async with worker_for(mode, models) as worker:
        await generate(worker, GenerationRequest("Hello", max_tokens=4))  # warm-up
        if mode == "honest-slots4":
            for start in range(0, len(asked), 4):
                group = asked[start : start + 4]
                results: list[Generated] = [([], 0.0, ())] * len(group)

                async def one(i: int, request: GenerationRequest, results: list[Generated]) -> None:
                    results[i] = await generate(worker, request)

                async with trio.open_nursery() as nursery:
                    with worker.admit_together():
                        for i, (_, request) in enumerate(group):
                            nursery.start_soon(one, i, request, results)
                        await trio.testing.wait_all_tasks_blocked()
                for (kind, request), (ids, seconds, lps) in zip(group, results, strict=True):
                    claims.append(Claim(mode, kind, request, tuple(ids), seconds, lps))
            return claims
        for kind, request in asked:
            if mode == "honest-cache":  # the first answer fills the cache; the second is checked
                await generate(worker, request)
            lie = mode == "cheat-lying"
            ids, seconds, lps = await generate(worker, served(mode, request), lie)
            claims.append(Claim(mode, kind, request, tuple(ids), seconds, lps))
    return claims


async def verify(verifier: BatchingWorker, claims: list[Claim]) -> None:
    for claim in claims:
        if not claim.tokens:
            claim.stat = judge((), sampled=claim.request.temperature > 0)
            continue
        started = time.process_time()
        result = await verifier.score(ScoreRequest(claim.request, claim.tokens, top_logprobs=0))
        claim.score_s = time.process_time() - started
        claim.margins = [p.choice_margin for p in result.positions]
        claim.logprobs = [p.logprob for p in result.positions]
        committed = [claim.committed[p.index] for p in result.positions]
        claim.stat = judge(
            result.positions, sampled=claim.request.temperature > 0, committed=committed
        )


async def subset_cost(verifier: BatchingWorker, claims: list[Claim], k: int) -> float:
    """Median scoring time with logits at only k random positions, over a few claims."""
    times = []
    rng = random.Random(0)
    for claim in claims[:6]:
        n = len(claim.tokens)
        if n == 0:
            continue
        only = tuple(sorted(rng.sample(range(n), min(k, n))))
        started = time.process_time()
        await verifier.score(ScoreRequest(claim.request, claim.tokens, top_logprobs=0, only=only))
        times.append(time.process_time() - started)
    return statistics.median(times) if times else math.nan


def make_models(tmp: Path, modes: list[str], say: Callable[[str], None]) -> dict[str, Path]:
    models = {"default": ensure_default_model()}
    if "cheat-tiny" in modes:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_tiny_gguf import make_tiny_gguf

        models["tiny"] = make_tiny_gguf(tmp / "tiny.gguf", seed=0)
    import inference.quantize as quantize

    for target in ("Q3_K_M", "Q2_K"):
        if f"cheat-{target[:2].lower()}" in modes:
            say(f"requantizing the default model to {target}")
            result = quantize.quantize_gguf(
                models["default"], tmp / f"default-{target}.gguf", target, allow_requantize=True
            )
            models[target] = result.dst
    return models


async def bench(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    modes = [m for m in HONEST + CHEATS if not args.modes or m in args.modes]
    asked = requests(args.max_tokens, args.rounds, args.prompts, args.skip_prompts)
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(Path(tmp), modes, say)
        claims: list[Claim] = []
        for mode in modes:
            say(f"{mode}: generating {len(asked)} requests")
            claims += await run_mode(mode, models, asked)
        verifier = BatchingWorker(
            models["default"], n_ctx=1024, n_threads=2, slots=1, speculate=False, prefix_cache=False
        )
        async with verifier:
            say(f"verifying {len(claims)} claims")
            await verify(verifier, claims)
            reference = [c for c in claims if c.mode == "honest-t2"] or claims
            subset = await subset_cost(verifier, reference, args.check_positions)
            if args.window:
                say(f"window checks: {args.window} per claim")
                windows = await window_checks(verifier, claims, args.window)
    gen_by_request = {
        (c.request.prompt, c.request.seed): c.gen_s for c in claims if c.mode == "honest-t2"
    }
    ratios = [
        c.score_s / gen_by_request[(c.request.prompt, c.request.seed)]
        for c in claims
        if c.mode == "honest-t2" and c.score_s > 0
    ]
    gen_median = statistics.median(c.gen_s for c in reference)
    cost = statistics.median(ratios) if ratios else math.nan
    report = {
        "max_tokens": args.max_tokens,
        "requests_per_mode": len(asked),
        "cost_full_check_vs_generation": round(cost, 4),
        "check_positions": args.check_positions,
        "cost_subset_check_vs_generation": round(subset / gen_median, 4),
        "modes": summarize(claims, cost),
    }
    if args.window:
        report["window_checks"] = windows
    rows = [raw_row(c) for c in claims]
    if args.raw:
        args.raw.write_text(json.dumps(rows, allow_nan=True))
    checks = rejudge(rows, draws=args.draws)
    report["spot_checks"] = {
        k: {f: x for f, x in v.items() if f != "commitment_means"} for k, v in checks.items()
    }
    if args.plot:
        plot(checks, args.plot)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_verification.py",
        description="Honest and cheating workers generate; a verifier on the default model "
        "scores their claims; prints verdicts, detection and the cost of a check.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="6 prompts, 48 tokens: a few minutes on 2 cores"
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per request")
    parser.add_argument(
        "--rounds", type=int, default=1, help="times each prompt is asked (new seeds each round)"
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=0,
        help=f"use the first N of the {len(PROMPTS)} prompts (0: all)",
    )
    parser.add_argument(
        "--skip-prompts", type=int, default=0, help="start after the first N prompts"
    )
    parser.add_argument(
        "--modes",
        nargs="*",
        metavar="MODE",
        choices=HONEST + CHEATS,
        help="only these modes (default: all)",
    )
    parser.add_argument(
        "--check-positions",
        type=int,
        default=32,
        help="positions with logits in the subset check whose cost is measured",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        metavar="N",
        help="also score N spot checks per request with the feed cut after the last checked "
        "position (p2p/client/check_window.py) and judge them beside the whole feed's",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, help="write a PNG of the statistic's distribution")
    parser.add_argument("--raw", type=Path, help="write every position's choice margin (JSON)")
    parser.add_argument(
        "--from-raw",
        type=Path,
        nargs="+",
        metavar="RAW",
        help="judge and plot the positions of earlier --raw files instead of running",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=20,
        help="spot checks drawn per request when re-judging as spot checks (default 20)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.max_tokens, args.prompts = min(args.max_tokens, 48), 6
    if args.max_tokens < 1:
        parser.error("--max-tokens must be at least 1")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        report = from_raw(args) if args.from_raw else trio.run(bench, args, say)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line, not a traceback
        print(f"bench_verification.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        if "window_checks" in report:
            print_window_checks(report["window_checks"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
