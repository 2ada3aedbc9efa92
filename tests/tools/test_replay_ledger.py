"""tools/replay_ledger.py on synthetic campaign lines: probes steadily off make the ledger flag
only with the probes' term, honest lines never flag, bad input is one line, not a traceback."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tools import replay_ledger


def _lines(path: Path, probe_off: float, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(12):
            verifier = [-rng.uniform(0.5, 8.0) for _ in range(16)]
            line = {
                "temperature": 0.0,
                "stat": {"n": 32, "mismatches": 0, "committed_n": 32, "committed_score": 0.5},
                "draws": list(range(16)),
                "probe_pick": list(range(0, 16, 2)),
                "node_probes": [v - probe_off for v in verifier],
                "verifier_probes": verifier,
            }
            out.write(json.dumps(line) + "\n")
    return path


def test_probes_off_flag_only_with_the_probes_term(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    honest = _lines(tmp_path / "honest.jsonl", 0.001, 1)
    off = _lines(tmp_path / "off.jsonl", 1.0, 2)
    code = replay_ledger.main([str(honest), str(off), "--runs", "50", "--most", "100", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    by = {(Path(r["file"]).name, r["probes"]): r for r in rows}
    assert by[("honest.jsonl", True)]["flagged_share"] == 0.0
    assert by[("honest.jsonl", False)]["flagged_share"] == 0.0
    assert by[("off.jsonl", False)]["flagged_share"] == 0.0  # outputs honest: nothing to see
    flagged = by[("off.jsonl", True)]
    assert flagged["flagged_share"] == 1.0 and flagged["checks_max"] <= 4


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"stat": {}}\n')
    assert replay_ledger.main([str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl:1: not a campaign line" in err[0]
    assert replay_ledger.main([str(tmp_path / "missing.jsonl")]) == 1


def test_leaning_checks_more_only_where_evidence_adds_up() -> None:
    from p2p.client.check_ledger import LEAN_LEVEL, THRESHOLD

    # Each check adds a little under LEAN_LEVEL: 5 checks flag the node at a fixed fraction,
    # fewer requests when the boost kicks in after the first two.
    steps = [LEAN_LEVEL * 0.6]
    assert THRESHOLD / steps[0] < 7
    fixed = [replay_ledger.within(steps, random.Random(i), 50, 0.1, 1.0) for i in range(400)]
    leaning = [replay_ledger.within(steps, random.Random(i), 50, 0.1, 4.0) for i in range(400)]
    assert sum(f for f, _ in leaning) > sum(f for f, _ in fixed) + 100
    honest = [replay_ledger.within([-1.9], random.Random(i), 200, 0.1, 4.0) for i in range(50)]
    assert not any(f for f, _ in honest)
    assert 0.05 < sum(c for _, c in honest) / (50 * 200) < 0.15  # no boost: never leans
