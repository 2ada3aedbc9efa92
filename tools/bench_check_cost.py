"""What a spot check costs against generating the request it checks, and where its time goes
(issue #16's target: checking one request, one prefill of prompt + output, at most 15 % of
generating it).

On the code, prose and chat prompts of tools/bench_real_prompts.py, greedy and at temperature
0.8 with a seed, each round:

1. a node generates --max-tokens tokens as `gpunet node` does: a BatchingWorker with its
   defaults (speculation on), solo, logprobs on (the receipt's commitments), ignore_eos so every
   answer is full length; the prompt-prefix cache is off, or a prompt's later rounds would skip
   its prefill; with the DEFAULT_PROBES prompt-probe draws the client library adds to every
   request (p2p/client/failover.py `with_probes`): the node computes and signs all of them;
2. a verifier (another BatchingWorker, defaults) checks it with the Score a spot check sends
   (p2p/client/spot_check.py: logits at CHECK_POSITIONS positions, the first FIRST_POSITIONS
   and a random rest within a random window, the feed cut after the last of them:
   p2p/client/check_window.py; and CHECK_PROBES of the request's probe draws, at random), with
   the same positions and probes over the whole feed (what a check cost before the window:
   `feed_all`), and with logits at every position. `--positions`, `--check-probes` and `--span`
   set the main check's knobs; `--also P:K[:S]` (repeatable) times more knobs on the same
   requests, in alternation with the others; `--no-probes` generates without draws (the
   figures before probes).

Both checks of the same positions are judged with the node's logprob commitments
(inference/verification.py), and the window's noise against the whole feed is reported: the
largest difference of a scored logprob and of a choice margin between the two feeds, the
commitment statistic's mean score per position in each, and every verdict that is not
"consistent" (the node is honest: each one would be a false verdict).

Generation and check alternate request by request, so drift in the machine's load hits both;
reported are the medians of the per-request ratios, of wall time and of this process's CPU time
(all threads; one worker works at a time).

Then the check's time is split on the same claims, in this thread, on a context with the
worker's defaults (`--profile` requests): cProfile over `score_tokens` gives llama_decode,
reading the logits, the log-softmax/rank/top-k of each position, the sampler-chain replay of the
choice margin, the sampler's set-up and the rest (Python); the same feed decoded without any
logits splits llama_decode into the model's body and the output layer at the scored positions.
With `--baseline FILE` (a scoring.py of another revision, e.g. `git show
HEAD~1:inference/scoring.py > /tmp/old_scoring.py`) both revisions score every claim in
alternation and their scores are compared.

    python tools/bench_check_cost.py                       # 9 prompts x 2, 2 rounds, 128 tokens
    python tools/bench_check_cost.py --rounds 3 --baseline /tmp/old_scoring.py --json
    python tools/bench_check_cost.py --also 32:16 --also 24:8 --also 32:0 --json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _check_cost_report import (  # type: ignore[import-not-found]
    Claim,
    Knobs,
    also_summary,
    judged,
    knobs_arg,
    load_baseline,
    noise_summary,
    print_report,
    ratios,
    same_scores,
    window_noise,
)
from bench_real_prompts import PROMPTS  # type: ignore[import-not-found]  # a script's sibling

from crypto.receipts import pack_logprobs, unpack_logprobs
from inference.batching import BatchingWorker
from inference.default_model import ensure_default_model
from inference.generation import GenerationDone, GenerationRequest, TokenChunk
from inference.llama_lowlevel import LoadedModel, default_threads
from inference.prompt_probes import DEFAULT_PROBES, DRAW_SPAN
from inference.scoring import ScoreRequest, ScoreResult, score_tokens
from p2p.client.check_window import WINDOW_SPAN, probe_subset
from p2p.client.check_window import check_positions as window_positions
from p2p.client.spot_check import CHECK_POSITIONS, CHECK_PROBES

# The parts of a check's time, by the function cProfile times them in (cumulative).
PARTS: dict[str, tuple[str, str]] = {
    "llama_decode": ("llama_lowlevel.py", "decode"),
    "logits (llama_get_logits_ith view)": ("llama_lowlevel.py", "logits"),
    "log-softmax, rank, top-k": ("scoring.py", "position_score"),
    "sampler replay (choice margin)": ("llama_lowlevel.py", "choice_margin"),
    "sampler accept (penalty window)": ("llama_lowlevel.py", "accept"),
    "sampler set-up and close": ("llama_lowlevel.py", "__init__"),
    "tokenize": ("llama_lowlevel.py", "tokenize"),
    "batch filling": ("llama_lowlevel.py", "add"),
}
SAMPLER_CLOSE = ("llama_lowlevel.py", "close")
MODES = ("greedy", "T0.8")  # the ends of Claim.kind


def check_positions(
    n: int, rng: random.Random, positions: int = CHECK_POSITIONS, span: int = WINDOW_SPAN
) -> tuple[tuple[int, ...], int]:
    """What spot_check.score_request asks for on an answer of n tokens with no replayed part:
    (the positions, () for every one; the feed's end)."""
    if n <= positions:
        return (), n
    return window_positions(0, n, positions, rng, span)


def requests(
    max_tokens: int, prompts: int, probes: int = DEFAULT_PROBES, seed: int = 0
) -> list[tuple[str, GenerationRequest]]:
    # Round-robin over the kinds, so that --prompts 3 is one code, one prose, one chat prompt.
    longest = max(len(texts) for texts in PROMPTS.values())
    chosen = [(k, t[i]) for i in range(longest) for k, t in PROMPTS.items() if i < len(t)]
    rng = random.Random(seed)  # the draws (a client's are the OS's: any fixed ones do here)
    out = []
    for i, (kind, prompt) in enumerate(chosen[:prompts] if prompts else chosen):
        draws = tuple(rng.randrange(DRAW_SPAN) for _ in range(probes))
        base = GenerationRequest(
            prompt, max_tokens=max_tokens, ignore_eos=True, logprobs=0, probes=draws
        )
        out.append((f"{kind} {MODES[0]}", base))
        out.append((f"{kind} {MODES[1]}", attrs.evolve(base, temperature=0.8, seed=7000 + i)))
    return out


async def generate(node: BatchingWorker, kind: str, request: GenerationRequest) -> Claim:
    wall, cpu = time.perf_counter(), time.process_time()
    ids: list[int] = []
    entries: list[float | None] = []
    done: GenerationDone | None = None
    async with node.generate(request) as stream:
        async for item in stream:
            ids += item.token_ids
            if isinstance(item, TokenChunk):
                entries += [e.logprob for e in item.logprobs]
            elif isinstance(item, GenerationDone):
                entries += [None] * len(item.token_ids)
                done = item
    assert done is not None
    return Claim(
        kind=kind,
        request=attrs.evolve(request, seed=done.seed),
        tokens=tuple(ids),
        prompt_tokens=done.prompt_tokens,
        committed=unpack_logprobs(pack_logprobs(entries)),
        probes=unpack_logprobs(pack_logprobs(list(done.probe_logprobs))),
        gen_wall=time.perf_counter() - wall,
        gen_cpu=time.process_time() - cpu,
        first_token_s=done.time_to_first_token_s,
    )


def probed(claim: Claim, pick: tuple[int, ...]) -> GenerationRequest:
    """The claim's request with the draws *pick* names only (as spot_check sends it)."""
    return attrs.evolve(claim.request, probes=tuple(claim.request.probes[i] for i in pick))


def score_request(
    claim: Claim, only: tuple[int, ...] | None = None, *, feed_all: bool = False
) -> ScoreRequest:
    """The check a spot check sends (only=None: its sample, fed up to its last position; with
    `feed_all` the whole answer), or with logits at `only` over the whole answer; with the
    main check's probe draws."""
    request = probed(claim, claim.pick)
    if only is not None:
        return ScoreRequest(request, claim.tokens, 0, only)
    tokens = claim.tokens if feed_all else claim.tokens[: claim.end]
    return ScoreRequest(request, tokens, 0, claim.only)


def knob_score(
    claim: Claim, knobs: Knobs, rng: random.Random
) -> tuple[ScoreRequest, tuple[int, ...]]:
    """The Score of a check with *knobs* on *claim* (fresh positions and probes), and its pick."""
    only, end = check_positions(len(claim.tokens), rng, knobs.positions, knobs.span)
    pick = probe_subset(len(claim.request.probes), knobs.probes, rng) if knobs.probes else ()
    return ScoreRequest(probed(claim, pick), claim.tokens[:end], 0, only), pick


async def timed_score(
    verifier: BatchingWorker, score: ScoreRequest
) -> tuple[float, float, ScoreResult]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = await verifier.score(score)
    return time.perf_counter() - wall, time.process_time() - cpu, result


async def measure(args: argparse.Namespace, model: Path, say: Callable[[str], None]) -> list[Claim]:
    """Generation and checks, request by request, --rounds times."""
    rng = random.Random(args.seed)
    claims: list[Claim] = []
    async with (
        BatchingWorker(model, prefix_cache=False) as node,
        BatchingWorker(model) as verifier,
    ):
        warm = GenerationRequest("warm up", max_tokens=4)
        await generate(node, "warm", warm)
        await verifier.score(ScoreRequest(warm, (1, 2, 3)))
        main = Knobs(args.positions, args.check_probes, args.span)
        probes = 0 if args.no_probes else DEFAULT_PROBES
        for r in range(args.rounds):
            for kind, request in requests(args.max_tokens, args.prompts, probes, args.seed):
                claim = await generate(node, kind, request)
                n = len(claim.tokens)
                claim.only, claim.end = check_positions(n, rng, main.positions, main.span)
                claim.pick = probe_subset(probes, main.probes, rng) if main.probes else ()
                jobs: dict[str, tuple[ScoreRequest, tuple[int, ...]]] = {
                    "window": (score_request(claim), claim.pick),
                    "whole": (score_request(claim, feed_all=True), claim.pick),
                    "full": (score_request(claim, ()), claim.pick),
                }
                for knobs in args.also:
                    jobs[knobs.name] = knob_score(claim, knobs, rng)
                # Every check in a rotating order: load drift hits each alike.
                order = list(jobs)
                turn = len(claims) % len(order)
                timed = {}
                for name in order[turn:] + order[:turn]:
                    timed[name] = await timed_score(verifier, jobs[name][0])
                claim.check_wall, claim.check_cpu, window = timed["window"]
                claim.whole_wall, claim.whole_cpu, whole = timed["whole"]
                claim.full_wall, claim.full_cpu, _ = timed["full"]
                claim.noise = window_noise(claim, window, whole)
                for knobs in args.also:
                    wall, cpu, result = timed[knobs.name]
                    pick = jobs[knobs.name][1]
                    rows = len(result.positions) + len(result.probe_logprobs)
                    verdict = judged(claim, result, pick).verdict
                    claim.also[knobs.name] = (wall, cpu, rows, verdict)
                claims.append(claim)
                say(
                    f"round {r + 1} {kind:13} prompt {claim.prompt_tokens:3} + "
                    f"{len(claim.tokens)} (fed to {claim.end}): generate {claim.gen_wall:.2f} s, "
                    f"check {claim.check_wall:.2f} s ({claim.check_wall / claim.gen_wall:.1%} "
                    f"wall, {claim.check_cpu / claim.gen_cpu:.1%} CPU; whole feed "
                    f"{claim.whole_wall / claim.gen_wall:.1%} wall); verdicts "
                    f"{claim.noise['window_verdict']} / {claim.noise['whole_verdict']}"
                )
    return claims


def decode_feed(model: LoadedModel, claim: Claim, with_logits: bool) -> tuple[float, float]:
    """Wall and CPU seconds of llama_decode over the check's feed (as score_tokens batches it:
    the tokens up to the window's end),
    with logits at the check's positions or at none; the cells are dropped afterwards."""
    prompt = model.tokenize(claim.request.prompt)
    feed = [*prompt, *claim.tokens[: claim.end - 1]]
    first = len(prompt) - 1
    wanted = {first + i for i in claim.only} if with_logits else set()
    wall = cpu = 0.0
    fed = 0
    try:
        while fed < len(feed):
            model.clear_batch()
            while fed < len(feed) and model.room > 0:
                model.add(feed[fed], fed, 0, fed in wanted)
                fed += 1
            w, c = time.perf_counter(), time.process_time()
            assert model.decode() == 0
            wall += time.perf_counter() - w
            cpu += time.process_time() - c
    finally:
        model.forget_all()
    return wall, cpu


def profile_check(model: LoadedModel, claim: Claim) -> dict[str, float]:
    """Seconds per part of one spot check (PARTS), cProfile's cumulative times; "total" is
    score_tokens' own, "python (loop, records)" what the parts leave of it."""
    profiler = cProfile.Profile()
    try:
        profiler.runcall(score_tokens, model, 0, score_request(claim))
    finally:
        model.forget_all()
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    by_name: dict[tuple[str, str], float] = {}
    total = 0.0
    for (filename, _line, name), (_cc, _nc, _tt, cumulative, _callers) in stats.items():
        key = (os.path.basename(filename), name)
        if key == ("scoring.py", "score_tokens"):
            total += cumulative
        by_name[key] = by_name.get(key, 0.0) + cumulative
    out = {part: by_name.get(where, 0.0) for part, where in PARTS.items()}
    out["sampler set-up and close"] += by_name.get(SAMPLER_CLOSE, 0.0)
    out["python (loop, records)"] = max(0.0, total - sum(out.values()))
    out["total"] = total
    return out


def compare(model: LoadedModel, claims: list[Claim], baseline: ModuleType) -> dict[str, Any]:
    """Both revisions' score_tokens on every claim, alternating which goes first."""
    times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    identical = 0
    for n, claim in enumerate(claims):
        score = score_request(claim)
        results: dict[str, ScoreResult] = {}
        order = [("before", baseline.score_tokens), ("after", score_tokens)]
        for name, fn in order if n % 2 == 0 else order[::-1]:
            w, c = time.perf_counter(), time.process_time()
            try:
                results[name] = fn(model, 0, score)
            finally:
                model.forget_all()
            times[name].append((time.perf_counter() - w, time.process_time() - c))
        identical += same_scores(results["before"], results["after"])
    out: dict[str, Any] = {"checks": len(claims), "identical_scores": identical}
    for name, pairs in times.items():
        out[f"{name}_wall_s"] = round(statistics.median(w for w, _ in pairs), 4)
        out[f"{name}_cpu_s"] = round(statistics.median(c for _, c in pairs), 4)
    return out


def split(model: LoadedModel, claims: list[Claim]) -> dict[str, Any]:
    """Medians over the claims of each part's seconds, of the feed decoded with and without the
    scored positions' logits (the output layer's share of llama_decode) and on one thread, and
    of the body's prefill (no logits) against generating the request: a floor under the check."""
    profiles = [profile_check(model, c) for c in claims]
    with_logits = [decode_feed(model, c, True) for c in claims]
    body = [decode_feed(model, c, False) for c in claims]
    decode_threads, batch_threads = default_threads()
    model.lib.llama_set_n_threads(model.ctx, 1, 1)
    try:
        one_thread = [decode_feed(model, c, True) for c in claims]
    finally:
        model.lib.llama_set_n_threads(model.ctx, decode_threads, batch_threads)
    parts = {k: round(statistics.median(p[k] for p in profiles), 4) for k in profiles[0]}

    def median(values: Any) -> float:
        return round(float(statistics.median(values)), 4)

    return {
        "parts_s": parts,
        "decode_with_logits_wall_s": median(w for w, _ in with_logits),
        "decode_with_logits_cpu_s": median(c for _, c in with_logits),
        "decode_no_logits_wall_s": median(w for w, _ in body),
        "decode_no_logits_cpu_s": median(c for _, c in body),
        "decode_one_thread_wall_s": median(w for w, _ in one_thread),
        "decode_one_thread_cpu_s": median(c for _, c in one_thread),
        "body_prefill_vs_generation_wall": median(
            w / c.gen_wall for (w, _), c in zip(body, claims, strict=True)
        ),
        "body_prefill_vs_generation_cpu": median(
            cpu / c.gen_cpu for (_, cpu), c in zip(body, claims, strict=True)
        ),
        # One thread spins at no barrier, so this CPU ratio holds best on a loaded machine.
        "check_one_thread_vs_generation_cpu": median(
            cpu / c.gen_cpu for (_, cpu), c in zip(one_thread, claims, strict=True)
        ),
    }


def bench(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    path = Path(args.model) if args.model else ensure_default_model()
    claims = trio.run(measure, args, path, say)
    report: dict[str, Any] = {
        "model": path.name,
        "max_tokens": args.max_tokens,
        "check_positions": args.positions,
        "check_probes": 0 if args.no_probes else min(args.check_probes, DEFAULT_PROBES),
        "span": args.span,
        "probes_per_request": 0 if args.no_probes else DEFAULT_PROBES,
        "requests": len(claims),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **ratios(claims),
        "by_mode": {mode: ratios([c for c in claims if c.kind.endswith(mode)]) for mode in MODES},
        "window_noise": noise_summary(claims),
        "also": also_summary(claims),
    }
    say("profiling the checks ...")
    model = LoadedModel.load(path, n_ctx=2048, n_seq=1, n_threads=None, n_gpu_layers=0)
    try:
        sample = claims[: args.profile] if args.profile else claims
        report["split"] = split(model, sample)
        if args.baseline:
            say("before / after ...")
            report["baseline"] = compare(model, claims, load_baseline(Path(args.baseline)))
    finally:
        model.close()
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="What a spot check costs against generating the request, and where its "
        "time goes (issue #16).",
    )
    parser.add_argument("--model", help="GGUF to use (default: the default model)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=2, help="times through the prompts")
    parser.add_argument(
        "--prompts", type=int, default=0, help="use the first N prompts only (0: all 9)"
    )
    parser.add_argument("--profile", type=int, default=6, help="checks to profile (0: every one)")
    parser.add_argument("--baseline", help="a scoring.py to compare with (before / after)")
    parser.add_argument(
        "--seed", type=int, default=0, help="for the checked positions and the probe draws"
    )
    parser.add_argument(
        "--positions",
        type=int,
        default=CHECK_POSITIONS,
        help=f"answer positions a check scores (default {CHECK_POSITIONS}, as spot_check)",
    )
    parser.add_argument(
        "--check-probes",
        type=int,
        default=CHECK_PROBES,
        metavar="K",
        help=f"prompt probes a check judges, of the request's {DEFAULT_PROBES} (default "
        f"{CHECK_PROBES}, as spot_check; 0: none)",
    )
    parser.add_argument(
        "--span",
        type=int,
        default=WINDOW_SPAN,
        help=f"the window the later positions are drawn in (default {WINDOW_SPAN})",
    )
    parser.add_argument(
        "--also",
        type=knobs_arg,
        action="append",
        default=[],
        metavar="P:K[:S]",
        help="also time a check of P positions and K probes (window span S) on every request, "
        "in alternation with the others (repeatable)",
    )
    parser.add_argument(
        "--no-probes",
        action="store_true",
        help="generate without prompt-probe draws and check none (the figures before probes)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.max_tokens < 2 or args.rounds < 1 or args.prompts < 0 or args.profile < 0:
        parser.error("--max-tokens >= 2, --rounds >= 1, --prompts and --profile >= 0")
    if args.positions < 1 or args.span < 1 or args.check_probes < 0:
        parser.error("--positions and --span >= 1, --check-probes >= 0")
    if args.no_probes:
        args.check_probes = 0
        args.also = [attrs.evolve(k, probes=0) for k in args.also]

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report = bench(args, say)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
