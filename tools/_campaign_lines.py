"""The lines of tools/bench_campaign.py: reading them back, judging each again with the current
code (inference/verification.py `judge`), and the summary table.

A line holds the checked positions' verifier numbers (choice margin, logprob), the node's
commitments at every position, and every probe draw's node and verifier value, so a change of
the statistic's constants, or of how many probes a check judges (`--check-probes`), can be
judged again without a model. Per mode and configuration the summary gives the verdicts, the
false verdicts (honest) or the detection per check (cheats, greedy and sampled), the honest
noise's percentiles, and for cheats the chance of being flagged within 50 requests at check
fractions 0.10 and 0.13: by the ledger's simulation (tools/_verification_stats.py, the
margins and commitments it sums) and by the first inconsistent check, 1 - (1 - f d)^50 (the
client then asks a second verifier, which agrees for a cheat of this kind).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _verification_stats import checks_to_flag, flagged_within_requests

from inference.probe_stat import delta, probe_llr
from inference.scoring import PositionScore
from inference.verification import VERDICTS, CheckStat, judge
from p2p.client import spot_check

FRACTIONS = (0.10, 0.13)


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The file's complete lines (one cut by a kill is skipped)."""
    with path.open() as f:
        for text in f:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and "verdict" in line:
                yield line


def done_units(path: Path, mode: str) -> tuple[int, int]:
    """The first unit a resumed run of *mode* starts at (past every unit the file has), and the
    file's lines of that mode."""
    units = [ln["unit"] for ln in read_lines(path) if ln["mode"] == mode]
    return (max(units) + 1 if units else 0), len(units)


def _pick(line: dict[str, Any], check_probes: int | None) -> list[int]:
    n = len(line["draws"])
    if len(line["node_probes"]) != n:
        return list(range(n))
    k = check_probes if check_probes is not None else getattr(spot_check, "CHECK_PROBES", None)
    if k is None or k >= n:
        return list(range(n))
    stored = line.get("probe_pick")
    if stored is not None and len(stored) == k:
        return list(stored)
    rng = random.Random(f"{line['unit']}:{line['j']}")
    return sorted(rng.sample(range(n), k))


def rejudge_line(line: dict[str, Any], check_probes: int | None = None) -> CheckStat:
    """The line's check judged by the current code; *check_probes*: judge that many of its
    probes (default: as spot_check.py's CHECK_PROBES, the stored subset where it fits)."""
    sampled = line["temperature"] > 0
    if not line["positions"]:
        return judge((), sampled=sampled)
    positions = [
        PositionScore(token=line["tokens"][i], logprob=lp, rank=0, margin=0.0,
                      choice_margin=m, index=i)
        for i, m, lp in zip(line["positions"], line["margins"], line["logprobs"], strict=True)
    ]  # fmt: skip
    pick = _pick(line, check_probes)
    node = line["node_probes"]
    return judge(
        positions,
        sampled=sampled,
        committed=[line["committed"][i] for i in line["positions"]],
        probes=[node[i] for i in pick] if len(node) == len(line["draws"]) else node,
        verifier_probes=[line["verifier_probes"][i] for i in pick],
    )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))], 4)


def _noise(lines: list[dict[str, Any]], stats: list[CheckStat]) -> dict[str, Any]:
    """Honest noise at the checked positions and probes: percentiles (p50, p99, max)."""
    commit, probes, margins = [], [], []
    for ln in lines:
        for i, m, lp in zip(ln["positions"], ln["margins"], ln["logprobs"], strict=True):
            c = ln["committed"][i]
            if c is not None and not math.isnan(lp):
                commit.append(abs(max(-32.0, lp) - c))
            if math.isfinite(m):
                margins.append(m)
        if len(ln["node_probes"]) == len(ln["verifier_probes"]):
            probes += [delta(a, b) for a, b in zip(ln["node_probes"], ln["verifier_probes"],
                                                    strict=True)]  # fmt: skip
    judged = [s for s in stats if s.n]
    rates = {}
    for setting, sampled in (("greedy", False), ("sampled", True)):
        part = [s for s, ln in zip(stats, lines, strict=True) if (ln["temperature"] > 0) == sampled]
        n = sum(s.n for s in part)
        rates[setting] = [sum(s.mismatches for s in part), n]  # against HONEST_RATE_*
    return {
        "mismatched_positions": rates,
        "commitment_delta": [_pct(commit, q) for q in (0.5, 0.99, 1.0)],
        "probe_delta": [_pct(probes, q) for q in (0.5, 0.99, 1.0)],
        "finite_margin": [_pct(margins, q) for q in (0.5, 0.99, 1.0)],
        "margin_inf_positions": sum(
            not math.isfinite(m) for ln in lines for m in ln["margins"]
        ),
        "mismatches_max": max((s.mismatches for s in judged), default=0),
        "mismatch_threshold_min": min((s.threshold for s in judged), default=0),
        "commitment_sum_over_threshold_max": round(
            max((s.committed_score / s.committed_threshold for s in judged
                 if s.committed_threshold), default=0.0), 4),
        "probe_sum_over_threshold_max": round(
            max((s.probes.total / s.probes.threshold for s in judged if s.probes.threshold),
                default=0.0), 4),
    }  # fmt: skip


def _group(lines: list[dict[str, Any]], check_probes: int | None) -> dict[str, Any]:
    stats = [rejudge_line(ln, check_probes) for ln in lines]
    verdicts = {v: sum(s.verdict == v for s in stats) for v in VERDICTS}
    row: dict[str, Any] = {
        "requests": len(lines),
        "verdicts": verdicts,
        "verdicts_changed_since_run": sum(
            s.verdict != ln["verdict"] for s, ln in zip(stats, lines, strict=True)
        ),
        "probe_status": {
            k: sum(s.probes.status == k for s in stats)
            for k in sorted({s.probes.status for s in stats})
        },
        "cache_hits": sum(ln.get("cached_prompt_tokens", 0) > 0 for ln in lines),
        "prompt_count_differs": sum(
            ln.get("verifier_prompt_tokens", ln["node_prompt_tokens"]) != ln["node_prompt_tokens"]
            for ln in lines
        ),
        "tokens_median": statistics.median(len(ln["tokens"]) for ln in lines),
    }
    if lines[0]["mode"] == "honest":
        row["false_verdicts"] = verdicts["inconsistent"]
        row["noise"] = _noise(lines, stats)
        return row
    for setting, sampled in (("greedy", False), ("sampled", True)):
        part = [s for s, ln in zip(stats, lines, strict=True) if (ln["temperature"] > 0) == sampled]
        if not part:
            continue
        d = sum(s.verdict == "inconsistent" for s in part) / len(part)
        flagged = checks_to_flag(part, sampled, random.Random(0))
        row[setting] = {
            "checks": len(part),
            "detection_per_check": round(d, 4),
            "by_probes_alone": sum(s.probes.status == "inconsistent" for s in part),
            # What a ledger summing probe evidence would gain per check (probe_stat.probe_llr,
            # log e-value; the ledger of tools/_verification_stats.py does not sum it).
            "probe_llr_mean": round(statistics.mean(probe_llr(s.probes) for s in part), 3),
            "ledger_flagged_within_50_at_f": {
                str(f): round(flagged_within_requests(flagged, f), 4) for f in FRACTIONS
            },
            "first_check_within_50_at_f": {
                str(f): round(1.0 - (1.0 - f * d) ** 50, 4) for f in FRACTIONS
            },
        }
    return row


def summary(paths: list[Path], check_probes: int | None = None) -> dict[str, Any]:
    """Every line of *paths* judged again; per mode, per configuration and in all."""
    lines = [ln for p in paths for ln in read_lines(p)]
    out: dict[str, Any] = {
        # What the lines were checked with (the code's constant may have moved since).
        "check_positions": sorted(
            {len(ln["positions"]) for ln in lines if len(ln["tokens"]) > len(ln["positions"])}
        )
        or spot_check.CHECK_POSITIONS,
        "check_probes": check_probes
        if check_probes is not None
        else getattr(spot_check, "CHECK_PROBES", "all"),
        "groups": {},
    }
    keys = sorted({(ln["mode"], ln["config"]) for ln in lines})
    for mode, config in keys:
        mine = [ln for ln in lines if ln["mode"] == mode and ln["config"] == config]
        out["groups"][f"{mode} {config}"] = _group(mine, check_probes)
    honest = [ln for ln in lines if ln["mode"] == "honest"]
    if honest:
        out["honest_all"] = _group(honest, check_probes)
    return out


def print_summary(report: dict[str, Any]) -> None:
    print(
        f"checks of {report['check_positions']} positions, {report['check_probes']} probes "
        "judged (re-judged with the current code):"
    )
    rows = dict(report["groups"])
    if "honest_all" in report:
        rows["honest ALL"] = report["honest_all"]
    for key, row in rows.items():
        v = row["verdicts"]
        head = (
            f"  {key:20} {row['requests']:5} requests: {v['consistent']} consistent, "
            f"{v['inconsistent']} inconsistent, {v['inconclusive']} inconclusive; "
            f"{row['verdicts_changed_since_run']} changed since the run"
        )
        print(head)
        if "noise" in row:
            n = row["noise"]
            print(
                f"      false verdicts {row['false_verdicts']}; cache hits {row['cache_hits']}; "
                f"|commitment d| p50/p99/max {n['commitment_delta']}, |probe d| "
                f"{n['probe_delta']}, finite margins {n['finite_margin']}, +inf margins "
                f"{n['margin_inf_positions']}; mismatched positions greedy / sampled "
                f"{n['mismatched_positions']['greedy']} / {n['mismatched_positions']['sampled']}; "
                f"per check max {n['mismatches_max']} (from "
                f"{n['mismatch_threshold_min']}); sums/threshold max: commitments "
                f"{n['commitment_sum_over_threshold_max']}, probes "
                f"{n['probe_sum_over_threshold_max']}"
            )
            continue
        for setting in ("greedy", "sampled"):
            if setting in row:
                s = row[setting]
                print(
                    f"      {setting:7} detection {s['detection_per_check']:.1%} of "
                    f"{s['checks']} (probes alone {s['by_probes_alone']}, probe log e-value "
                    f"mean {s['probe_llr_mean']}); flagged within 50 "
                    f"requests at f=0.10/0.13: ledger "
                    + " / ".join(f"{x:.1%}" for x in s["ledger_flagged_within_50_at_f"].values())
                    + ", first check "
                    + " / ".join(f"{x:.1%}" for x in s["first_check_within_50_at_f"].values())
                )


def plot(paths: list[Path], out: Path, check_probes: int | None = None) -> None:
    """Per check, each test's statistic over its threshold (1: inconsistent from there): the
    margins' mismatches, the commitments' sum, the probes' sum; honest against each cheat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [ln for p in paths for ln in read_lines(p)]
    modes = sorted({ln["mode"] for ln in lines}, key=lambda m: (m != "honest", m))
    stats = {m: [rejudge_line(ln, check_probes) for ln in lines if ln["mode"] == m] for m in modes}
    tests: list[tuple[str, Any]] = [
        ("margin mismatches / threshold", lambda s: s.mismatches / max(1, s.threshold)),
        ("commitment sum / threshold", lambda s: s.committed_score / s.committed_threshold
         if s.committed_threshold else math.nan),
        ("probe sum / threshold", lambda s: s.probes.total / s.probes.threshold
         if s.probes.threshold else math.nan),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    bins = [10 ** (i / 10) for i in range(-30, 21)]  # 0.001 .. 100, log-spaced
    for ax, (title, value) in zip(axes, tests, strict=True):
        for mode in modes:
            xs = [min(100.0, max(1e-3, value(s))) for s in stats[mode] if s.n]
            xs = [x for x in xs if math.isfinite(x)]
            if not xs:
                continue
            honest = mode == "honest"
            ax.hist(xs, bins=bins, density=False, alpha=0.5 if honest else 1.0,
                    histtype="stepfilled" if honest else "step", linewidth=1.5,
                    label=f"{mode} ({len(xs)})")  # fmt: skip
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("per check (1 = inconsistent from here)")
    axes[0].set_ylabel("checks")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
