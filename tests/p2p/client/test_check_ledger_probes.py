"""Prompt probes added up in the ledger (p2p/client/check_ledger.py): an honest stream of probe
checks stays under Ville's bound, a node whose probes are a little off every time (consistent
check by check) is flagged within a few checks, older files without probe fields load, and the
exclusion still needs two verifiers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import numpy as np
import pytest

from inference.probe_stat import (
    MAX_DELTA,
    NOISE_SCALE,
    ProbeStat,
    judge_probes,
    probe_llr,
    sum_llr,
)
from inference.verification import ALPHA
from p2p.client.check_ledger import (
    CHEAT_PROBE_SCALE,
    THRESHOLD,
    CheckLedger,
    ledger_from_json,
    request_llr,
    request_step,
)
from p2p.client.reputation import REPUTATION_FILE, Reputation

SHA = "cd" * 32
M = 16  # probes a request (DEFAULT_PROBES)
N = 32  # judged output positions a check


def probe_check(rng: np.random.Generator, offset: tuple[float, float], m: int = M) -> ProbeStat:
    """One check's *m* probes judged as spot_check judges them (ALPHA / 3 beside margins and
    commitments): verifier values from the prompt's range, the node's off by a uniform
    |d| in *offset* nats."""
    verifier = rng.uniform(-10.0, -0.5, m)
    off = rng.uniform(*offset, m) * rng.choice([-1.0, 1.0], m)
    node = [float(v) for v in np.clip(verifier + off, -32.0, 0.0)]
    return judge_probes(node, [float(v) for v in verifier], ALPHA / 3)


def test_the_probe_e_value_is_fair_at_the_honest_assumption() -> None:
    """E[exp(llr)] = 1 for Exp(1) normalized deltas (the assumption's worst case), < 1 below it;
    and the ledger's step for probes at 0 is negative, for probes 0.6 nats off positive."""
    # one probe, by quadrature over the Exp(1) density (the ratio's variance is infinite there,
    # so a sample mean would not show it); independent probes multiply
    x = np.linspace(0.0, 200.0, 400_001)
    ratio = np.exp([sum_llr(1, float(t), CHEAT_PROBE_SCALE) for t in x])
    mean = float(np.sum(ratio * np.exp(-x)) * (x[1] - x[0]))
    assert 0.99 < mean <= 1.0 + 1e-3
    rng = np.random.default_rng(1)
    smaller = rng.exponential(0.3, (200_000, 4)).sum(axis=1)
    assert np.mean(np.exp([sum_llr(4, float(t), CHEAT_PROBE_SCALE) for t in smaller])) < 0.2
    assert request_step(N, 0, sampled=False, probe_n=M, probe_total=0.0) < 0
    steady = M * 0.6 / NOISE_SCALE
    assert request_step(N, 0, sampled=False, probe_n=M, probe_total=steady) > 4.0
    # the sum is clamped to what M probes can sum; a NaN or no probes are no term at all
    assert sum_llr(M, 1e9, 2.0) == sum_llr(M, M * MAX_DELTA / NOISE_SCALE, 2.0)
    assert sum_llr(M, math.nan, 2.0) == 0.0 == sum_llr(0, 5.0, 2.0)
    assert request_step(N, 1, sampled=True, probe_n=0) == request_llr(N, 1, sampled=True)
    assert probe_llr(ProbeStat("consistent", M, M, total=3.0), 2.0) == sum_llr(M, 3.0, 2.0)


@pytest.mark.parametrize("committed", [False, True])
def test_villes_bound_holds_for_honest_probe_streams_at_the_assumed_noise(committed: bool) -> None:
    """The bound N e^-h, where it can be counted: h = ln(50 / 0.05) over 50 checks, 2,000 honest
    nodes whose every normalized probe delta is Exp(1) (the largest noise the assumption allows)
    and whose output mismatches at the allowed rate; with and without commitment scores."""
    checks, alpha, runs = 50, 0.05, 2000
    h = math.log(checks / alpha)
    rng = np.random.default_rng(23)
    totals = rng.gamma(M, 1.0, (runs, checks))
    mismatches = rng.binomial(N, 0.005, (runs, checks))
    scores = rng.binomial(N, 0.1, (runs, checks))  # commitment_stat.HONEST_MEAN's worst shape
    flagged = 0
    for run in range(runs):
        s = 0.0
        for c in range(checks):
            s = max(
                0.0,
                s
                + request_step(
                    N,
                    int(mismatches[run, c]),
                    sampled=False,
                    committed_n=N if committed else 0,
                    committed_score=float(scores[run, c]),
                    probe_n=M,
                    probe_total=float(totals[run, c]),
                ),
            )
            if s >= h:
                flagged += 1
                break
    assert flagged / runs <= alpha


def test_honest_probes_as_measured_never_flag_over_a_thousand_checks() -> None:
    """The real threshold (<= 1e-4 over 1,000 checks by the bound): honest |d| as measured (an
    exponential of scale 0.09 nats, the batched bench; 0.19, the worst chunked run) through
    judge_probes and the ledger, 1,000 checks each: never flagged, the statistic near 0."""
    rng = np.random.default_rng(5)
    for scale in (0.09, 0.19):
        ledger = CheckLedger()
        for _ in range(1000):
            verifier = rng.uniform(-10.0, -0.5, M)
            node = verifier + rng.exponential(scale, M) * rng.choice([-1.0, 1.0], M)
            stat = judge_probes([float(v) for v in node], [float(v) for v in verifier], ALPHA / 3)
            assert stat.status == "consistent"
            probe_n, total = stat.evidence()
            assert not ledger.add(N, 0, sampled=False, verifier="v", probe_n=probe_n,
                                  probe_total=total)  # fmt: skip
        assert ledger.probes == 1000 * M and ledger.probe_mean == pytest.approx(scale, rel=0.1)
        assert ledger.cusum < 1.0


@pytest.mark.parametrize(
    ("m", "committed", "most"), [(16, False, 6), (16, True, 7), (8, False, 14), (8, True, 17)]
)
def test_probes_a_little_off_every_time_are_flagged_within_a_few_checks(
    m: int, committed: bool, most: int
) -> None:
    """|d| uniform in [0.4, 0.8] nats at every probe: each check alone is consistent (the sum
    stays under judge_probes' threshold), the ledger flags within a few checks (the module
    docstring's simulation: 4.8 on average for 16 probes a check, 12 for 8, fewer without
    commitments; the bounds are its largest of 300 runs plus one); outputs and commitments
    look honest."""
    rng = np.random.default_rng(9)
    ledger = CheckLedger()
    flagged_at = 0
    for checks in range(1, 40):
        stat = probe_check(rng, (0.4, 0.8), m)
        assert stat.status == "consistent" and stat.off == 0
        probe_n, total = stat.evidence()
        if ledger.add(
            N, 0, sampled=False, verifier="v", committed_n=N if committed else 0,
            committed_score=1.0, probe_n=probe_n, probe_total=total,
        ):  # fmt: skip
            flagged_at = checks
            break
    assert 0 < flagged_at <= most


def test_no_probe_term_without_values_or_with_a_different_count() -> None:
    assert ProbeStat("none").evidence() == (0, 0.0)
    assert ProbeStat("missing", asked=M).evidence() == (0, 0.0)
    assert ProbeStat("inconsistent", M, 8, threshold=40.0).evidence() == (0, 0.0)
    assert ProbeStat("inconsistent", M, M, total=90.0).evidence() == (M, 90.0)
    ledger = CheckLedger()
    ledger.add(N, 0, sampled=False, verifier="v", probe_n=M, probe_total=math.inf)
    ledger.add(N, 0, sampled=False, verifier="v", probe_n=10_000, probe_total=-4.0)
    assert ledger.checks == 2 and ledger.probes == 16 and ledger.probe_total == 0.0


def test_older_files_load_and_bad_probe_fields_set_the_file_aside(tmp_path: Path) -> None:
    path = tmp_path / REPUTATION_FILE
    old_ledger = {
        "cusum": 1.5, "checks": 3, "positions": 96, "mismatches": 1, "flagged": 0,
        "verifiers": ["v"],
    }  # fmt: skip
    entry = {"verified": 2, "failed": 0, "caught": False, "evidence": [], "updated": 1.0}

    def write(ledger: dict[str, object]) -> None:
        entries = {f"p/{SHA}": {**entry, "ledger": ledger}}
        path.write_text(json.dumps({"version": 1, "entries": entries}))

    write(old_ledger)  # written before probes were added up
    ledger = Reputation.load(tmp_path).get("p", SHA).ledger
    assert (ledger.checks, ledger.cusum, ledger.probes, ledger.probe_total) == (3, 1.5, 0, 0.0)
    bads: list[dict[str, object]] = [
        {"probes": -1}, {"probes": True}, {"probes": 2, "probe_total": 1e6},
        {"probe_total": 1.0}, {"probes": 1, "probe_total": "x"}, {"probes": 1 << 41},
        {"probes": 1, "probe_total": math.nan},
    ]  # fmt: skip
    for bad in bads:
        with pytest.raises(ValueError):
            ledger_from_json({**old_ledger, **bad})
    write({**old_ledger, "probes": 4, "probe_total": -1.0})
    assert Reputation.load(tmp_path).get("p", SHA).verified == 0
    assert (tmp_path / f"{REPUTATION_FILE}.unreadable").exists()


def test_probe_evidence_excludes_only_on_two_verifiers(tmp_path: Path) -> None:
    """Probes steadily 0.6 nats off, outputs honest: one verifier's checks lower the node's
    standing but never exclude it; two verifiers' exclude it; the counts survive a reload."""
    steady = (M, M * 0.6 / NOISE_SCALE)
    rep = Reputation.load(tmp_path)
    alone = [rep.record_positions("p1", SHA, N, 0, sampled=False, verifier="only", probes=steady)
             for _ in range(12)]  # fmt: skip
    assert "lowered" in alone and "excluded" not in alone and not rep.is_excluded("p1", SHA)
    two = [rep.record_positions("p2", SHA, N, 0, sampled=True, verifier=f"v{i % 2}",
                                probes=steady) for i in range(12)]  # fmt: skip
    assert "excluded" in two[:6] and rep.is_excluded("p2", SHA)
    again = Reputation.load(tmp_path)
    assert again.is_excluded("p2", SHA)
    ledger = again.get("p1", SHA).ledger
    assert ledger.probes == 12 * M and ledger.probe_mean == pytest.approx(0.6)
    assert THRESHOLD > 0 and ledger.flagged >= 2


def test_a_ledger_of_probes_all_at_the_limit_reads_back() -> None:
    """Every probe as far off as a receipt allows, summed over many checks: the file's bound
    holds despite rounding, so the reputation file is not set aside for it."""
    ledger = CheckLedger()
    for _ in range(997):
        ledger.add(N, 0, sampled=False, verifier="v", probe_n=7, probe_total=1e9)
        ledger.restart()
    back = ledger_from_json(attrs.asdict(ledger))
    assert back.probes == 997 * 7 and back.probe_total <= back.probes * MAX_DELTA / NOISE_SCALE
    assert back.probe_mean == pytest.approx(MAX_DELTA)
