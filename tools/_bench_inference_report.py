"""tools/bench_inference.py's report: the ratios it checks against the issue's targets, and
the table it prints.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from pathlib import Path
from typing import Any

LABELS = {
    "direct": "direct llama-cpp-python",
    "gpunet": "gpunet BatchingWorker",
    "llama_cpp.server": "llama_cpp.server (HTTP)",
    "llama-server": "llama-server -np 8 (HTTP)",
}
# (numerator method, figure, denominator method, figure, target, what the target means)
TARGETS = (
    ("gpunet", "decode_tok_s", "direct", "decode_tok_s", 0.98, "target"),
    ("gpunet", "agg4_tok_s", "llama-server", "agg4_tok_s", 1.0, "target"),
    ("gpunet", "agg8_tok_s", "llama-server", "agg8_tok_s", 1.0, "target"),
    ("gpunet", "agg4_tok_s", "gpunet", "decode_tok_s", 2.5, "aim"),
    ("gpunet", "agg8_tok_s", "gpunet", "decode_tok_s", 4.0, "aim"),
)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paired_ratio(
    runs: dict[str, list[dict[str, float]]], num: str, fig_num: str, den: str, fig_den: str
) -> dict[str, float] | None:
    """Median (min-max) over rounds of num's figure / den's figure from the same round."""
    if num not in runs or den not in runs:
        return None
    values = [
        a[fig_num] / b[fig_den]
        for a, b in zip(runs[num], runs[den], strict=True)
        if fig_num in a and b.get(fig_den)
    ]
    return summary(values) if values else None


def paired_ratios(runs: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Every ratio of TARGETS, paired by round, with its target or aim."""
    return [
        {
            "ratio": f"{num} {fn} / {den} {fd}",
            goal: target,
            "paired": paired_ratio(runs, num, fn, den, fd),
        }
        for num, fn, den, fd, target, goal in TARGETS
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def print_report(report: dict[str, Any]) -> None:
    ks = report["concurrency"]
    print(
        f"{report['model']}, {report['threads']} threads, greedy, {report['max_tokens']} tokens, "
        f"median of {report['rounds']} paired rounds"
    )
    print(f"offload: {report['offload']['reason']}")
    print(
        f"{report['date']}; {report['machine']}; Python {report['python']}, "
        f"llama-cpp-python {report['llama_cpp_python']}"
    )
    start, end = report["load_average_start"], report["load_average_end"]
    print(
        "load average at start "
        + " ".join(f"{x:.2f}" for x in start)
        + ", at end "
        + " ".join(f"{x:.2f}" for x in end)
    )
    keys = ["ttft_ms", "decode_tok_s", *[f"agg{k}_tok_s" for k in ks]]
    heads = ["TTFT ms", "decode tok/s", *[f"agg{k} tok/s" for k in ks]]
    print(f"| {'method':<26} | " + " | ".join(f"{h:>12}" for h in heads) + " |")
    print(f"|{'-' * 28}|" + "|".join("-" * 14 for _ in heads) + "|")
    for name, m in report["medians"].items():
        cells = [f"{m[k]:12.1f}" if k in m else f"{'-':>12}" for k in keys]
        print(f"| {LABELS[name]:<26} | " + " | ".join(cells) + " |")
    for name, why in report["skipped"].items():
        print(f"{name} skipped: {why}")
    if report["quiet_wait_s"] > 0:
        busiest = max(f["busy_before"] for figs in report["runs"].values() for f in figs)
        print(
            f"CPUs at most {busiest:.0%} busy just before a unit "
            f"(--quiet-wait {report['quiet_wait_s']:g})"
        )
    print("ratios, median (min-max) of the per-round ratios:")
    for r in report["ratios"]:
        goal = "target" if "target" in r else "aim"
        p = r["paired"]
        if p is None:
            print(f"  {r['ratio']:<46} -       ({goal} {r[goal]})")
            continue
        verdict = ("met" if p["median"] >= r[goal] else "NOT met") if goal == "target" else ""
        print(
            f"  {r['ratio']:<46} {p['median']:.2f}x ({p['min']:.2f}-{p['max']:.2f})  "
            f"{goal} >= {r[goal]} {verdict}".rstrip()
        )
    if report["all_full_length"]:
        print(f"check: every request produced {report['max_tokens']} tokens")
    else:
        print(f"CHECK FAILED: {len(report['short_requests'])} units had short requests:")
        for line in report["short_requests"]:
            print(f"  {line}")
