"""The verification campaign (issue #16): many requests checked exactly as the client checks
them, one JSON line each, for "0 false verdicts over 1,000 verified requests" on honest nodes,
and for the cheats' per-check detection as shipped.

No network: a "node" is a BatchingWorker in this process, serving each request as
p2p/node/serving.py does (the chosen tokens' logprob commitments and the prompt probes' values,
packed and unpacked as the signed receipt carries them; a cheat's request and values from
p2p/node/cheats.py). Every request carries `DEFAULT_PROBES` fresh draws from `secrets`, as
p2p/client/failover.py `with_probes` gives them. The check is p2p/client/spot_check.py's: the
positions from p2p/client/check_window.py `check_positions` (CHECK_POSITIONS of them, drawn with
the OS's randomness), the verifier fed up to the last of them, the request's draws scored, and
inference/verification.py `judge` over positions, commitments and probes.

Modes (`--mode`):

- `honest`: configurations rotated request by request: `t1` (1 thread), `t2` (2 threads),
  `slots4` (4 slots, 4 requests admitted together), `spec` (greedy speculation), `cache` (the
  prefix cache: each prompt asked twice, the second, cached answer checked with fresh draws),
  `mixed` (4 slots, speculation and the cache together, 4 requests at once: the node's usual
  set-up; its cache hits come from prompts seen earlier in the run);
- cheats, each on 2 threads and 1 slot, claiming the default model: `cheat-q3` (the default
  model requantized to Q3_K_M), `cheat-prefix` (p2p/node/cheats.py drop-prefix), `cheat-tiny`
  (the random-weight tiny test GGUF), `cheat-random` (cheats.py random-tokens).

Requests: tools/verification_prompts.py's CAMPAIGN_PROMPTS (code, prose, chat), a third of
them behind another prompt's text (a long prompt), half greedy, half at temperature 0.8 with a
seed (a quarter of those without one: the node's effective seed is then the one checked, as a
client does). The request list is a function of `--seed` and the request's number, so a run
resumes where its file ends (`--out`, appended, flushed per line); a stop loses at most the
request (or the group of 4) in flight.

Each line holds what a later re-judge needs (tools/_campaign_lines.py): the request, the
tokens, every commitment, all draws with the node's and the verifier's probe values, the
checked positions with the verifier's margins and logprobs, and the verdict then.

    .venv/bin/python tools/bench_campaign.py --mode cheat-q3 --requests 24 --max-tokens 128 \\
        --out /tmp/cheat-q3.jsonl
    nohup nice -n 5 .venv/bin/python tools/bench_campaign.py --mode honest --until 1000 \\
        --out honest.jsonl > honest.log 2>&1 &
    .venv/bin/python tools/bench_campaign.py --summary honest.jsonl cheat-q3.jsonl --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
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

from _campaign_lines import done_units, plot, print_summary, rejudge_line, summary
from verification_prompts import CAMPAIGN_PROMPTS

from crypto.receipts import pack_logprobs, unpack_logprobs
from inference.batching import BatchingWorker
from inference.default_model import ensure_default_model
from inference.generation import GenerationDone, GenerationRequest, TokenChunk
from inference.prompt_probes import DEFAULT_PROBES, DRAW_SPAN
from inference.scoring import ScoreRequest
from inference.verification import judge
from p2p.client import check_window, spot_check
from p2p.client.check_window import check_positions
from p2p.client.spot_check import CHECK_POSITIONS
from p2p.node.cheats import cheat_request, commitments, probe_commitments

# Worker options per honest configuration (the others off), and requests admitted together.
CONFIGS: dict[str, dict[str, Any]] = {
    "t1": {"n_threads": 1},
    "t2": {},
    "slots4": {"slots": 4},
    "spec": {"speculate": True},
    "cache": {"slots": 2, "prefix_cache": True},
    "mixed": {"slots": 4, "speculate": True, "prefix_cache": True},
}
TOGETHER = {"slots4": 4, "mixed": 4}
CHEATS = ("cheat-q3", "cheat-prefix", "cheat-tiny", "cheat-random")
MODES = ("honest", *CHEATS)
BASE: dict[str, Any] = {
    "n_threads": 2,
    "slots": 1,
    "speculate": False,
    "prefix_cache": False,
    "n_ctx": 1024,
}
# One unit (a request, or a group of 4, and its checks) on a loaded 2-core machine takes
# seconds to a minute; past this something is stuck.
UNIT_DEADLINE_S = 900.0


@attrs.frozen
class Asked:
    unit: int
    j: int  # the request's place in its unit
    config: str
    kind: str
    long: bool
    prompt: str
    temperature: float
    seed: int | None


def unit_config(mode: str, unit: int) -> str:
    return list(CONFIGS)[unit % len(CONFIGS)] if mode == "honest" else "t2"


def asked(mode: str, unit: int, campaign_seed: int) -> list[Asked]:
    """The requests of one unit: a function of the campaign's seed and the unit's number."""
    config = unit_config(mode, unit)
    rng = random.Random(f"{campaign_seed}:{mode}:{unit}")
    out = []
    for j in range(TOGETHER.get(config, 1)):
        i = rng.randrange(len(CAMPAIGN_PROMPTS))
        kind, prompt = CAMPAIGN_PROMPTS[i]
        long = rng.random() < 1 / 3
        if long:  # another prompt's text first: the dropped half is then unrelated to the answer
            before = CAMPAIGN_PROMPTS[
                (i + 1 + rng.randrange(len(CAMPAIGN_PROMPTS) - 1)) % len(CAMPAIGN_PROMPTS)
            ][1]
            prompt = f"{before}\n\n{prompt}"
        sampled = rng.random() < 0.5
        seed = None if not sampled or rng.random() < 0.25 else rng.randrange(1 << 31)
        out.append(Asked(unit, j, config, kind, long, prompt, 0.8 if sampled else 0.0, seed))
    return out


@attrs.define
class Served:
    """One answer as the node's receipt has it."""

    tokens: tuple[int, ...] = ()
    committed: tuple[float | None, ...] = ()
    probes: tuple[float | None, ...] = ()
    done: GenerationDone | None = None
    gen_s: float = 0.0


async def serve(worker: BatchingWorker, request: GenerationRequest, cheat: str) -> Served:
    """*request* on *worker* as p2p/node/serving.py serves it (and signs: packed, unpacked)."""
    started = time.perf_counter()
    run, plan = cheat_request(request, cheat, str(worker.model_path))
    out = Served()
    ids: list[int] = []
    entries: list[float | None] = []
    async with worker.generate(attrs.evolve(run, logprobs=0)) as stream:
        async for item in stream:
            ids += item.token_ids
            if isinstance(item, TokenChunk):
                if len(item.logprobs) == len(item.token_ids):
                    entries += [e.logprob for e in item.logprobs]
                else:
                    entries += [None] * len(item.token_ids)
            elif isinstance(item, GenerationDone):
                entries += [None] * len(item.token_ids)
                out.done = item
                values = probe_commitments(item.probe_logprobs, cheat, plan)
                out.probes = unpack_logprobs(pack_logprobs(values))
    out.tokens = tuple(ids)
    out.committed = unpack_logprobs(pack_logprobs(commitments(entries, cheat)))
    out.gen_s = time.perf_counter() - started
    return out


def request_of(a: Asked, max_tokens: int) -> GenerationRequest:
    draws = tuple(secrets.randbelow(DRAW_SPAN) for _ in range(DEFAULT_PROBES))
    return GenerationRequest(
        a.prompt,
        max_tokens=max_tokens,
        temperature=a.temperature,
        seed=a.seed,
        probes=draws,
    )


def checked_probes(draws: int, given: int) -> tuple[int, ...]:
    """Which draws' probes a client's check judges: spot_check.py's CHECK_PROBES of them when
    the code has that subset and the receipt has a value per draw, every one otherwise."""
    k = getattr(spot_check, "CHECK_PROBES", None)
    subset = getattr(check_window, "probe_subset", None)
    if k is None or subset is None or given != draws:
        return tuple(range(draws))
    return tuple(subset(draws, k, random.SystemRandom()))


async def check(
    verifier: BatchingWorker, a: Asked, request: GenerationRequest, s: Served, mode: str
) -> dict[str, Any]:
    """The client's check of one answer, and its line."""
    assert s.done is not None
    seed = s.done.seed if request.temperature > 0 else request.seed
    checked = attrs.evolve(request, seed=seed)  # the effective seed, as spot_check sends it
    n = len(s.tokens)
    line: dict[str, Any] = {
        "v": 1, "mode": mode, "unit": a.unit, "j": a.j, "config": a.config, "kind": a.kind,
        "long": a.long, "prompt": a.prompt, "temperature": a.temperature, "seed": seed,
        "seed_given": a.seed is not None, "max_tokens": request.max_tokens,
        "tokens": list(s.tokens), "committed": list(s.committed), "draws": list(request.probes),
        "node_probes": list(s.probes), "node_prompt_tokens": s.done.prompt_tokens,
        "cached_prompt_tokens": s.done.cached_prompt_tokens,
        "draft_tokens": s.done.draft_tokens, "accepted_draft_tokens": s.done.accepted_draft_tokens,
        "gen_s": round(s.gen_s, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    if not n:
        stat = judge((), sampled=request.temperature > 0)
        line.update(positions=[], margins=[], logprobs=[], feed=0, verifier_probes=[])
    else:
        only, end = check_positions(0, n, CHECK_POSITIONS, random.SystemRandom())
        started = time.perf_counter()
        result = await verifier.score(
            ScoreRequest(checked, s.tokens[:end], top_logprobs=0, only=only)
        )
        line["score_s"] = round(time.perf_counter() - started, 3)
        pos = list(result.positions)
        line.update(
            positions=[p.index for p in pos],
            margins=[p.choice_margin for p in pos],
            logprobs=[p.logprob for p in pos],
            feed=end,
            verifier_probes=list(result.probe_logprobs),
            verifier_prompt_tokens=result.prompt_tokens,
        )
        # The verifier computed every draw's value (kept for re-judging); the client judges the
        # subset it would have sent (spot_check.py `probe_pick`), when the code has one.
        pick = checked_probes(len(request.probes), len(s.probes))
        line["probe_pick"] = list(pick)
        whole = len(s.probes) == len(request.probes)
        stat = judge(
            pos,
            sampled=request.temperature > 0,
            committed=[s.committed[p.index] for p in pos],
            probes=[s.probes[i] for i in pick] if whole else s.probes,
            verifier_probes=[result.probe_logprobs[i] for i in pick],
        )
    line["verdict"] = stat.verdict
    line["stat"] = {
        "n": stat.n, "mismatches": stat.mismatches, "threshold": stat.threshold,
        "committed_n": stat.committed_n, "committed_score": stat.committed_score,
        "committed_threshold": stat.committed_threshold, "probe_status": stat.probes.status,
        "probe_total": stat.probes.total, "probe_threshold": stat.probes.threshold,
        "probe_largest": stat.probes.largest,
    }  # fmt: skip
    return line


async def run_unit(
    worker: BatchingWorker,
    verifier: BatchingWorker,
    mode: str,
    group: list[Asked],
    max_tokens: int,
) -> list[dict[str, Any]]:
    cheat = {"cheat-prefix": "drop-prefix", "cheat-random": "random-tokens"}.get(mode, "")
    requests = [request_of(a, max_tokens) for a in group]
    answers: list[Served] = [Served() for _ in group]
    if len(group) > 1:

        async def one(i: int) -> None:
            answers[i] = await serve(worker, requests[i], cheat)

        async with trio.open_nursery() as nursery:
            with worker.admit_together():
                for i in range(len(group)):
                    nursery.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()
    else:
        if group[0].config == "cache":  # the first answer fills the cache; the second is checked
            await serve(worker, request_of(group[0], max_tokens), cheat)
        answers[0] = await serve(worker, requests[0], cheat)
    return [
        await check(verifier, a, r, s, mode)
        for a, r, s in zip(group, requests, answers, strict=True)
    ]


def model_for(mode: str, default: Path, cache_dir: Path, say: Callable[[str], None]) -> Path:
    if mode == "cheat-tiny":
        from make_tiny_gguf import make_tiny_gguf

        return make_tiny_gguf(cache_dir / "tiny.gguf", seed=0)
    if mode == "cheat-q3":
        target = cache_dir / "default-Q3_K_M.gguf"
        if not target.exists():  # kept beside the output: a resumed run reuses it
            import inference.quantize as quantize

            say("requantizing the default model to Q3_K_M")
            quantize.quantize_gguf(default, target, "Q3_K_M", allow_requantize=True)
        return target
    return default


async def campaign(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    out: Path = args.out
    start, have = done_units(out, args.mode) if out.exists() else (0, 0)
    wanted = args.requests if args.until is None else min(args.requests, args.until - have)
    if out.exists() and out.stat().st_size and not out.read_bytes().endswith(b"\n"):
        with out.open("a") as f:  # a line cut by a kill: end it, the reader skips it
            f.write("\n")
    written = false = 0
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.model_dir or Path(tmp)
        default = args.model or ensure_default_model()
        path = model_for(args.mode, default, cache_dir, say)
        async with contextlib.AsyncExitStack() as stack:
            verifier = await stack.enter_async_context(BatchingWorker(default, **BASE))
            workers: dict[str, BatchingWorker] = {}
            configs = CONFIGS if args.mode == "honest" else {"t2": {}}
            for name, options in configs.items():
                workers[name] = await stack.enter_async_context(
                    BatchingWorker(path, **{**BASE, **options})
                )
            say(f"{args.mode}: from unit {start} ({have} lines there), {wanted} more, into {out}")
            unit = start
            while written < wanted:
                group = asked(args.mode, unit, args.seed)
                try:
                    with trio.fail_after(UNIT_DEADLINE_S):
                        lines = await run_unit(
                            workers[group[0].config], verifier, args.mode, group, args.max_tokens
                        )
                except trio.TooSlowError:
                    say(f"unit {unit}: no answer within {UNIT_DEADLINE_S:g} s, skipped")
                    unit += 1
                    continue
                with out.open("a") as f:
                    for line in lines:
                        f.write(json.dumps(line) + "\n")
                        f.flush()
                for line in lines:
                    again = rejudge_line(line)
                    false += line["mode"] == "honest" and line["verdict"] == "inconsistent"
                    if again.verdict != line["verdict"]:
                        say(f"unit {unit}: re-judged {again.verdict}, was {line['verdict']}")
                written += len(lines)
                say(
                    f"unit {unit} {group[0].config}: "
                    + ", ".join(f"{ln['verdict']} ({len(ln['tokens'])} tok)" for ln in lines)
                    + f"; {written} written, {false} honest inconsistent"
                )
                unit += 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_campaign.py",
        description="Requests served by honest or cheating in-process nodes, each checked as the "
        "client checks it (window positions, cut feed, prompt probes), one JSON line each; "
        "--summary re-judges such files with the current code.",
    )
    parser.add_argument("--mode", choices=MODES, default="honest", help="who serves")
    parser.add_argument("--out", type=Path, help="the JSON-lines file to append to (resumed)")
    parser.add_argument("--requests", type=int, default=1000, help="requests to add this run")
    parser.add_argument(
        "--until",
        type=int,
        metavar="N",
        help="stop once the file holds N lines of this mode (a resumed run adds the rest)",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--seed", type=int, default=0, help="the campaign's request list")
    parser.add_argument(
        "--model",
        type=Path,
        help="the claimed model, served and verified (default: the default model)",
    )
    parser.add_argument(
        "--model-dir", type=Path, help="where to keep the requantized / tiny GGUF (reused)"
    )
    parser.add_argument(
        "--summary", type=Path, nargs="+", metavar="FILE", help="re-judge these files and report"
    )
    parser.add_argument(
        "--check-probes",
        type=int,
        metavar="K",
        help="in --summary, judge only the first K of each request's draws (a uniform subset: "
        "the draws are independent)",
    )
    parser.add_argument("--json", action="store_true", help="--summary as one JSON object")
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="with --summary: each test's statistic per check"
    )
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    try:
        if args.summary:
            report = summary(args.summary, args.check_probes)
            if args.plot:
                plot(args.summary, args.plot, args.check_probes)
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                print_summary(report)
            return 0
        if args.out is None:
            parser.error("--out is needed to run (or --summary FILE to re-judge)")
        if args.requests < 1 or args.max_tokens < 1:
            parser.error("--requests and --max-tokens must be at least 1")
        return trio.run(campaign, args, say)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as e:  # one line, not a traceback
        print(f"bench_campaign.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
