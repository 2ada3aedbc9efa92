"""tools/bench_check_cost.py's records and report: one checked request (`Claim`), a check's
knobs (`Knobs`: positions, prompt probes judged, window span), the window's noise against the
whole feed on it (`window_noise`, over every check `noise_summary`), the medians (`ratios`,
`also_summary`), the --baseline module's loading and comparison of scores, and the report as
text (`print_report`). A sibling module, to keep the benchmark's file short."""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

from inference.generation import GenerationRequest
from inference.scoring import ScoreResult
from inference.verification import CheckStat, judge
from p2p.client.check_window import WINDOW_SPAN


@attrs.frozen
class Knobs:
    """What one check scores: answer positions, prompt probes judged (of the request's), the
    window's span (p2p/client/check_window.py)."""

    positions: int
    probes: int
    span: int = WINDOW_SPAN

    @property
    def name(self) -> str:
        return f"{self.positions}:{self.probes}:{self.span}"

    @classmethod
    def parse(cls, text: str) -> Knobs:
        """From "POSITIONS:PROBES[:SPAN]" (ValueError with the reason otherwise)."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
            raise ValueError(f"{text!r}: expected POSITIONS:PROBES or POSITIONS:PROBES:SPAN")
        values = [int(p) for p in parts]
        if values[0] < 1 or (len(values) == 3 and values[2] < 1):
            raise ValueError(f"{text!r}: at least one position, in a span of at least one")
        return cls(*values)


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
    probes: tuple[float | None, ...] = ()  # the node's signed probe values, one per draw
    pick: tuple[int, ...] = ()  # the draws the main check judges
    # Per `Knobs.name` of --also: (wall s, CPU s, rows with logits, verdict).
    also: dict[str, tuple[float, float, int, str]] = attrs.Factory(dict)


def judged(claim: Claim, result: ScoreResult, pick: tuple[int, ...] | None = None) -> CheckStat:
    """The verdict of spot_check's statistic on `result`, with the node's commitments and its
    probe values at the draws *pick* names (default: the main check's)."""
    committed = [claim.committed[p.index] for p in result.positions]
    chosen = claim.pick if pick is None else pick
    probes = tuple(claim.probes[i] for i in chosen) if claim.probes else ()
    return judge(
        result.positions,
        sampled=claim.request.temperature > 0,
        committed=committed,
        probes=probes,
        verifier_probes=result.probe_logprobs,
    )


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
        return round(float(max(n[key] for n in noise)), 4)

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


def also_summary(claims: list[Claim]) -> dict[str, Any]:
    """Per --also knobs: medians of the check's wall and CPU against generating, and of its
    ratio to the main check's (the same request, measured in alternation), its rows with logits
    and the verdicts that were not "consistent" (false ones: the node is honest)."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 4)

    out: dict[str, Any] = {}
    for name in claims[0].also if claims else ():
        wall, cpu, rows, verdict = zip(*(c.also[name] for c in claims), strict=True)
        out[name] = {
            "check_vs_generation_wall": median(
                [w / c.gen_wall for w, c in zip(wall, claims, strict=True)]
            ),
            "check_vs_generation_cpu": median(
                [u / c.gen_cpu for u, c in zip(cpu, claims, strict=True)]
            ),
            "vs_main_check_wall": median(
                [w / c.check_wall for w, c in zip(wall, claims, strict=True)]
            ),
            "vs_main_check_cpu": median(
                [u / c.check_cpu for u, c in zip(cpu, claims, strict=True)]
            ),
            "rows_with_logits": median([float(r) for r in rows]),
            "not_consistent": [
                f"{c.kind}: {v}" for v, c in zip(verdict, claims, strict=True) if v != "consistent"
            ],
        }
    return out


def ratios(claims: list[Claim]) -> dict[str, float]:
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 4)

    return {
        "check_vs_generation_wall": median([c.check_wall / c.gen_wall for c in claims]),
        "check_vs_generation_cpu": median([c.check_cpu / c.gen_cpu for c in claims]),
        "whole_feed_check_vs_generation_wall": median([c.whole_wall / c.gen_wall for c in claims]),
        "whole_feed_check_vs_generation_cpu": median([c.whole_cpu / c.gen_cpu for c in claims]),
        "window_vs_whole_feed_wall": median([c.check_wall / c.whole_wall for c in claims]),
        "fed_fraction": median([c.end / len(c.tokens) for c in claims]),
        "full_check_vs_generation_wall": median([c.full_wall / c.gen_wall for c in claims]),
        "full_check_vs_generation_cpu": median([c.full_cpu / c.gen_cpu for c in claims]),
        "generation_wall_s": median([c.gen_wall for c in claims]),
        "generation_first_token_s": median([c.first_token_s for c in claims]),
        "check_wall_s": median([c.check_wall for c in claims]),
        "full_check_wall_s": median([c.full_wall for c in claims]),
        "prompt_tokens": median([float(c.prompt_tokens) for c in claims]),
    }


def load_baseline(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_scoring", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "score_tokens", None)):
        raise SystemExit(f"{path}: has no score_tokens")
    return module


def same_scores(a: ScoreResult, b: ScoreResult) -> bool:
    """Bit for bit (by value: the baseline's records are classes of another module)."""

    def values(result: ScoreResult) -> list[tuple[Any, ...]]:
        return [attrs.astuple(p) for p in result.positions]

    return a.prompt_tokens == b.prompt_tokens and values(a) == values(b)


def knobs_arg(text: str) -> Knobs:
    try:
        return Knobs.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['model']}, {report['requests']} requests of {report['max_tokens']} tokens, "
        f"prompts ~{report['prompt_tokens']:.0f} tokens, {report['cpus']} CPUs, load "
        f"{report['load_average']} -> {report['load_average_end']}; prompt probes: "
        f"{report['probes_per_request']} a request, {report['check_probes']} judged per check"
    )
    print(
        f"check ({report['check_positions']} positions, span {report['span']}) vs generating: "
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
    for name, a in report.get("also", {}).items():
        print(
            f"  knobs {name:10} (positions:probes:span): {a['check_vs_generation_wall']:.1%} wall, "
            f"{a['check_vs_generation_cpu']:.1%} CPU of generating; {a['vs_main_check_wall']:.2f}x "
            f"the main check's wall, {a['vs_main_check_cpu']:.2f}x its CPU; "
            f"{a['rows_with_logits']:.0f} rows with logits; not consistent: "
            f"{a['not_consistent'] or 'none'}"
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
