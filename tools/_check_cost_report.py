"""tools/bench_check_cost.py's records and report: one checked request (`Claim`), the window's
noise against the whole feed on it (`window_noise`, over every check `noise_summary`), and the
report as text (`print_report`). A sibling module, to keep the benchmark's file short."""

from __future__ import annotations

import math
import statistics
from typing import Any

import attrs

from inference.generation import GenerationRequest
from inference.scoring import ScoreResult
from inference.verification import CheckStat, judge


@attrs.define
class Claim:
    kind: str
    request: GenerationRequest
    tokens: tuple[int, ...]
    prompt_tokens: int = 0
    gen_wall: float = 0.0
    gen_cpu: float = 0.0
    first_token_s: float = 0.0  # of gen_wall: the prompt's prefill and the first token
    committed: tuple[float | None, ...] = ()  # the node's logprob commitments, as signed
    only: tuple[int, ...] = ()
    end: int = 0  # the check's feed: the tokens up to here
    check_wall: float = 0.0
    check_cpu: float = 0.0
    whole_wall: float = 0.0  # the same positions over the whole feed
    whole_cpu: float = 0.0
    noise: dict[str, Any] = attrs.Factory(dict)
    full_wall: float = 0.0
    full_cpu: float = 0.0


def judged(claim: Claim, result: ScoreResult) -> CheckStat:
    """The verdict of spot_check's statistic on `result`, with the node's commitments."""
    committed = [claim.committed[p.index] for p in result.positions]
    return judge(result.positions, sampled=claim.request.temperature > 0, committed=committed)


def window_noise(claim: Claim, window: ScoreResult, whole: ScoreResult) -> dict[str, Any]:
    """How the window's feed moved the scored positions against the whole feed's, and what the
    statistic says on each (an honest node: any verdict but "consistent" is false)."""
    pairs = list(zip(window.positions, whole.positions, strict=True))
    assert all(a.index == b.index and a.token == b.token for a, b in pairs)

    def finite_gap(a: float, b: float) -> float:
        if a == b:  # inf == inf included
            return 0.0
        return abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf

    stats = {"window": judged(claim, window), "whole": judged(claim, whole)}
    return {
        "max_logprob_gap": max(abs(a.logprob - b.logprob) for a, b in pairs),
        "max_margin_gap": max(finite_gap(a.choice_margin, b.choice_margin) for a, b in pairs),
        **{
            f"{name}_mean_score": s.committed_score / s.committed_n if s.committed_n else 0.0
            for name, s in stats.items()
        },
        **{f"{name}_mismatches": s.mismatches for name, s in stats.items()},
        **{f"{name}_verdict": s.verdict for name, s in stats.items()},
    }


def noise_summary(claims: list[Claim]) -> dict[str, Any]:
    """The window's noise against the whole feed over every check (see window_noise)."""
    noise = [c.noise for c in claims]

    def worst(key: str) -> float:
        return round(max(n[key] for n in noise), 4)

    def not_consistent(feed: str) -> list[str]:
        return [
            f"{c.kind}: {c.noise[feed + '_verdict']}"
            for c in claims
            if c.noise[f"{feed}_verdict"] != "consistent"
        ]

    return {
        "checks": len(noise),
        "max_logprob_gap": worst("max_logprob_gap"),
        "max_margin_gap": worst("max_margin_gap"),
        "window_mean_score_max": worst("window_mean_score"),
        "whole_mean_score_max": worst("whole_mean_score"),
        "window_mean_score_median": round(
            statistics.median(n["window_mean_score"] for n in noise), 4
        ),
        "whole_mean_score_median": round(
            statistics.median(n["whole_mean_score"] for n in noise), 4
        ),
        "window_mismatches": sum(n["window_mismatches"] for n in noise),
        "whole_mismatches": sum(n["whole_mismatches"] for n in noise),
        "window_not_consistent": not_consistent("window"),
        "whole_not_consistent": not_consistent("whole"),
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['model']}, {report['requests']} requests of {report['max_tokens']} tokens, "
        f"prompts ~{report['prompt_tokens']:.0f} tokens, {report['cpus']} CPUs, load "
        f"{report['load_average']} -> {report['load_average_end']}"
    )
    print(
        f"check ({report['check_positions']} positions) vs generating: "
        f"{report['check_vs_generation_wall']:.1%} wall, "
        f"{report['check_vs_generation_cpu']:.1%} CPU (medians of per-request ratios)"
    )
    print(
        f"same positions, whole feed:     "
        f"{report['whole_feed_check_vs_generation_wall']:.1%} wall, "
        f"{report['whole_feed_check_vs_generation_cpu']:.1%} CPU (window / whole feed "
        f"{report['window_vs_whole_feed_wall']:.2f}x wall; fed {report['fed_fraction']:.0%} "
        f"of the answer, median)"
    )
    print(
        f"check with every position:      {report['full_check_vs_generation_wall']:.1%} wall, "
        f"{report['full_check_vs_generation_cpu']:.1%} CPU"
    )
    print(
        f"generating {report['generation_wall_s']:.2f} s (first token "
        f"{report['generation_first_token_s']:.2f} s), check {report['check_wall_s']:.2f} s, "
        f"full check {report['full_check_wall_s']:.2f} s (wall, medians)"
    )
    for mode, r in report["by_mode"].items():
        print(
            f"  {mode:6}: check {r['check_vs_generation_wall']:.1%} wall, "
            f"{r['check_vs_generation_cpu']:.1%} CPU; every position "
            f"{r['full_check_vs_generation_wall']:.1%} wall, "
            f"{r['full_check_vs_generation_cpu']:.1%} CPU"
        )
    w = report["window_noise"]
    print(
        f"the window's noise against the whole feed over {w['checks']} honest checks: logprobs "
        f"up to {w['max_logprob_gap']:.4f} nats apart, margins up to {w['max_margin_gap']:.4f}; "
        f"commitment score per position median {w['window_mean_score_median']:.4f} / "
        f"{w['whole_mean_score_median']:.4f}, max {w['window_mean_score_max']:.4f} / "
        f"{w['whole_mean_score_max']:.4f}; mismatches {w['window_mismatches']} / "
        f"{w['whole_mismatches']}; not consistent: {w['window_not_consistent'] or 'none'} / "
        f"{w['whole_not_consistent'] or 'none'}"
    )
    s = report["split"]
    print("a check's time (cProfile, cumulative, medians):")
    total = s["parts_s"]["total"] or 1.0
    for part, seconds in s["parts_s"].items():
        print(f"  {part:36} {seconds * 1000:8.1f} ms {seconds / total:6.1%}")
    print(
        f"llama_decode of the feed: {s['decode_with_logits_wall_s']:.3f} s with the scored "
        f"logits, {s['decode_no_logits_wall_s']:.3f} s without any (wall; CPU "
        f"{s['decode_with_logits_cpu_s']:.3f} / {s['decode_no_logits_cpu_s']:.3f} s); on one "
        f"thread {s['decode_one_thread_wall_s']:.3f} s wall, "
        f"{s['decode_one_thread_cpu_s']:.3f} s CPU"
    )
    print(
        f"the body's prefill alone (no logits) vs generating: "
        f"{s['body_prefill_vs_generation_wall']:.1%} wall, "
        f"{s['body_prefill_vs_generation_cpu']:.1%} CPU; the check on one thread: "
        f"{s['check_one_thread_vs_generation_cpu']:.1%} CPU"
    )
    if "baseline" in report:
        b = report["baseline"]
        print(
            f"before / after on {b['checks']} checks: wall {b['before_wall_s']:.3f} / "
            f"{b['after_wall_s']:.3f} s, CPU {b['before_cpu_s']:.3f} / {b['after_cpu_s']:.3f} s; "
            f"identical scores on {b['identical_scores']}"
        )
