"""Spot checks summed across requests (p2p/client/check_ledger.py) on synthetic verdict streams:
honest nodes are not flagged within the stated bound, nodes a little off at many positions are,
within the figures its docstring states; and the reputation keeps the ledger, excluding only on
two verifiers' scores."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import attrs
import numpy as np
import pytest
import trio

from inference.commitment_stat import HONEST_MEAN
from inference.verification import HONEST_RATE_GREEDY, HONEST_RATE_SAMPLED
from p2p.client.check_ledger import (
    THRESHOLD,
    CheckLedger,
    ledger_from_json,
    request_llr,
    request_step,
)
from p2p.client.reputation import REPUTATION_FILE, Reputation
from p2p.client.spot_check import spot_check
from tests.p2p.client.live_checks import REQUEST, live_network

SHA = "ab" * 32


def checks_until_flagged(rate: float, *, sampled: bool, n: int, rng: random.Random) -> int:
    ledger = CheckLedger()
    for checks in range(1, 5001):
        k = sum(rng.random() < rate for _ in range(n))
        if ledger.add(n, k, sampled=sampled, verifier="v"):
            return checks
    return 5001


def test_the_threshold_is_the_stated_budget() -> None:
    assert math.exp(-THRESHOLD) * 1000 == pytest.approx(1e-4)
    # an honest-looking request moves the statistic down, a cheat's up
    assert request_llr(64, 0, sampled=False) < 0 < request_llr(64, 3, sampled=False)
    assert request_llr(64, 1, sampled=True) < 0 < request_llr(64, 4, sampled=True)


@pytest.mark.parametrize("sampled", [False, True])
def test_the_false_positive_bound_holds_on_honest_streams_at_the_allowed_rate(
    sampled: bool,
) -> None:
    """The bound N e^-h, checked where it can be counted: h = ln(50 / 0.05) over 50 checks,
    4,000 honest nodes mismatching at exactly the allowed rate (the worst honest case)."""
    rate = HONEST_RATE_SAMPLED if sampled else HONEST_RATE_GREEDY
    checks, alpha, runs = 50, 0.05, 4000
    h = math.log(checks / alpha)
    counts = np.random.default_rng(7).binomial(64, rate, size=(runs, checks))
    flagged = 0
    for row in counts:
        s = 0.0
        for k in row:
            s = max(0.0, s + request_llr(64, int(k), sampled=sampled))
            if s >= h:
                flagged += 1
                break
    assert flagged / runs <= alpha
    assert flagged < runs * alpha / 2  # the union bound is loose, not tight


def test_honest_nodes_as_measured_are_never_flagged_over_a_thousand_checks() -> None:
    rng = np.random.default_rng(11)
    for rate, sampled in ((0.0, False), (0.0077, True), (HONEST_RATE_GREEDY, False)):
        ledger = CheckLedger()
        for k in rng.binomial(128, rate, size=1000):
            assert not ledger.add(128, int(k), sampled=sampled, verifier="v")
        assert ledger.checks == 1000 and ledger.positions == 128_000


@pytest.mark.parametrize(
    ("rate", "sampled", "most"),
    [(0.05, False, 6.0), (0.10, False, 3.0), (0.05, True, 9.0), (0.10, True, 3.5),
     (0.032, False, 11.0), (0.099, True, 3.5)],
)  # fmt: skip
def test_a_node_off_at_many_positions_is_flagged_within_a_few_checks(
    rate: float, sampled: bool, most: float
) -> None:
    """The docstring's table (64 positions a check), with room for 200 runs' spread."""
    rng = random.Random(f"{rate}-{sampled}")
    runs = [checks_until_flagged(rate, sampled=sampled, n=64, rng=rng) for _ in range(200)]
    assert sum(runs) / len(runs) <= most


def test_commitment_scores_flag_a_close_quantization_within_a_few_checks() -> None:
    """32-position checks whose tokens look honest (0 mismatches) but whose commitments score
    like Q3_K_M's (mean 0.36-0.54 per position, as measured) are flagged within ~3 checks;
    honest-like scores (per-position mean 0.03, a third of the bound's) never over 1,000."""
    rng = np.random.default_rng(5)
    cheat = CheckLedger()
    flagged_at = next(
        k
        for k in range(1, 50)
        if cheat.add(
            32, 0, sampled=False, verifier="v", committed_n=32,
            committed_score=float(rng.beta(2, 2.5, 32).sum()),
        )
    )  # fmt: skip
    assert flagged_at <= 3
    honest = CheckLedger()
    for _ in range(1000):
        total = float((rng.random(32) < 0.03).sum())  # the worst shape at that mean: 0 or 1
        assert not honest.add(
            32, 0, sampled=True, verifier="v", committed_n=32, committed_score=total
        )
    # Without commitments the step is the counts' alone; with, never above the larger
    # e-value's (the mean of two), and a bad score (NaN) counts as none.
    assert request_step(32, 2, sampled=False) == request_llr(32, 2, sampled=False)
    both = request_step(32, 2, sampled=False, committed_n=32, committed_score=16.0)
    assert request_llr(32, 2, sampled=False) < both
    assert both < max(request_llr(32, 2, sampled=False), 16.0 * 10)
    assert request_step(32, 0, sampled=False, committed_n=32, committed_score=0.0) < 0
    ledger = CheckLedger()
    ledger.add(32, 0, sampled=False, verifier="v", committed_n=32, committed_score=math.nan)
    assert ledger.cusum == 0.0 and ledger.checks == 1


def test_the_commitment_e_value_keeps_the_honest_bound_at_the_allowed_mean() -> None:
    """Ville's bound with commitment scores, where it can be counted: h = ln(50 / 0.05) over 50
    checks of 32 positions, 4,000 honest nodes at the worst case the bound allows (every score
    0 or 1, mean exactly HONEST_MEAN)."""
    checks, alpha, runs = 50, 0.05, 4000
    h = math.log(checks / alpha)
    totals = np.random.default_rng(9).binomial(32, HONEST_MEAN, size=(runs, checks))
    flagged = 0
    for row in totals:
        s = 0.0
        for total in row:
            step = request_step(32, 0, sampled=False, committed_n=32, committed_score=float(total))
            s = max(0.0, s + step)
            if s >= h:
                flagged += 1
                break
    assert flagged / runs <= alpha


def test_a_long_honest_past_banks_no_credit_for_cheating_later() -> None:
    rng = random.Random(3)
    ledger = CheckLedger()
    for _ in range(2000):
        assert not ledger.add(64, 0, sampled=False, verifier="v")
    assert ledger.cusum == 0.0
    flagged_at = next(
        checks
        for checks in range(1, 100)
        if ledger.add(64, sum(rng.random() < 0.10 for _ in range(64)), sampled=False, verifier="v")
    )
    assert flagged_at <= 6 and ledger.flagged == 1


def test_the_reputation_excludes_on_two_verifiers_and_keeps_the_ledger(tmp_path: Path) -> None:
    rep = Reputation.load(tmp_path)
    outcomes = [
        rep.record_positions("liar-target", SHA, 64, 6, sampled=False, verifier="one-verifier")
        for _ in range(10)
    ]
    assert "lowered" in outcomes and "excluded" not in outcomes  # one verifier: no exclusion
    assert not rep.is_excluded("liar-target", SHA)
    assert rep.get("liar-target", SHA).failed >= 1
    found = [
        rep.record_positions("cheat", SHA, 64, 3, sampled=False, verifier=f"v{i % 2}")
        for i in range(20)
    ]
    assert found.index("excluded") < 8 and rep.is_excluded("cheat", SHA)
    assert rep.standing("cheat", SHA) == 0.0
    honest = [
        rep.record_positions("honest", SHA, 64, 0, sampled=True, verifier="v") for _ in "x" * 9
    ]
    assert honest == [""] * 9
    # on disk, and back
    again = Reputation.load(tmp_path)
    ledger = again.get("honest", SHA).ledger
    assert (ledger.checks, ledger.positions, ledger.mismatches) == (9, 576, 0)
    assert again.get("cheat", SHA).ledger.flagged >= 1 and again.is_excluded("cheat", SHA)


def test_a_file_without_ledgers_loads_and_a_bad_ledger_sets_the_file_aside(tmp_path: Path) -> None:
    path = tmp_path / REPUTATION_FILE
    old = {"verified": 2, "failed": 0, "caught": False, "evidence": [], "updated": 1.0}
    path.write_text(json.dumps({"version": 1, "entries": {f"p/{SHA}": old}}))
    rep = Reputation.load(tmp_path)
    assert rep.get("p", SHA).verified == 2 and rep.get("p", SHA).ledger == CheckLedger()
    for bad in ({"cusum": -1}, {"cusum": THRESHOLD}, {"positions": 3, "mismatches": 4}, [1]):
        with pytest.raises(ValueError):
            ledger_from_json(bad)
    path.write_text(json.dumps({"version": 1, "entries": {f"p/{SHA}": {**old, "ledger": [1]}}}))
    assert Reputation.load(tmp_path).get("p", SHA).verified == 0
    assert (tmp_path / f"{REPUTATION_FILE}.unreadable").exists()


async def test_spot_checks_feed_the_ledger(tmp_path: Path, tiny_gguf: Path) -> None:
    """On a live network: each check's judged positions and prompt probes land in the checked
    node's ledger (and only there: the verifier's own ledger stays empty)."""
    with trio.fail_after(240):
        async with live_network(tmp_path, tiny_gguf, [("honest", ""), ("verifier", "")]) as net:
            rep = Reputation(None)
            judged = 0
            for seed in (1, 2):
                (segment,) = await net.ask(
                    "honest", attrs.evolve(REQUEST, temperature=0.8, seed=seed)
                )
                result = await spot_check(net.client, segment, reputation=rep)
                assert result.verdict == "consistent", result.reason
                judged += result.verifiers[0].n
            ledger = rep.get(net.peer("honest"), segment.model_sha256).ledger
            assert ledger.checks == 2 and ledger.positions == judged > 0
            assert ledger.mismatches == 0 and ledger.flagged == 0
            # the prompt probes too (those the checks judged), honest values near 0 off
            assert 0 < ledger.probes <= 2 * len(segment.request.probes)
            assert ledger.probe_mean < 0.1
            assert rep.get(net.peer("verifier"), segment.model_sha256).ledger.checks == 0
