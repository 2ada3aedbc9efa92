"""tools/rejudge_check_knobs.py judges raw data again at several knobs: a cheat whose probes are
off in a few draws is caught more often the more probes a check judges, an honest node never;
spot checks of fewer positions still judge every request and the ledger's P(flagged) uses the
cost given; bad input is one line, not a traceback."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tools import rejudge_check_knobs


def _probe_raw(tmp_path: Path) -> Path:
    rng = random.Random(1)
    honest, cheat = [], []
    for _ in range(6):
        truth = [-rng.uniform(0.1, 8.0) for _ in range(16)]
        honest.append({"kind": "x", "node": [t + 0.001 for t in truth], "verifier": truth})
        # four of the sixteen draws named the part it dropped: made-up values far off
        made_up = [t - 10.0 if i < 4 else t for i, t in enumerate(truth)]
        cheat.append({"kind": "x", "node": made_up, "verifier": truth})
    path = tmp_path / "probes.json"
    path.write_text(json.dumps({"honest-t1": honest, "cheat-prefix": cheat}))
    return path


def _positions_raw(tmp_path: Path) -> Path:
    rows = []
    for mode, off in (("honest-t1", 0.0), ("cheat-random", 5.0)):
        for temperature in (0.0, 0.8):
            rows.append(
                {
                    "mode": mode,
                    "kind": "x",
                    "temperature": temperature,
                    "seed": 1,
                    "margins": [off] * 64,
                    "logprobs": [-0.5] * 64,
                    "committed": [-0.5 - off] * 64,
                }
            )
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    return path


def test_more_probes_judged_catch_more_and_honest_never(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--probe-raw", str(_probe_raw(tmp_path)), "--probes", "1", "4", "16", "--json"]
    assert rejudge_check_knobs.main([*args, "--subsets", "200", "--positions"]) == 0
    report = json.loads(capsys.readouterr().out)["probes"]
    catch = [report[k]["cheat-prefix"]["first_check_catch"] for k in ("1", "4", "16")]
    assert catch[0] < catch[1] < catch[2] == 1.0
    assert 0.15 < catch[0] < 0.35  # one probe of 16 meets the 4 made-up ones a quarter of times
    assert all(report[k]["honest-t1"]["false_verdicts"] == 0 for k in report)


def test_positions_are_judged_with_the_cost_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--positions-raw", str(_positions_raw(tmp_path)), "--positions", "16", "24"]
    args += ["--probes", "16", "--draws", "5", "--cost", "24:16=0.1", "--json"]
    assert rejudge_check_knobs.main(args) == 0
    report = json.loads(capsys.readouterr().out)["positions"]
    # keys positions:probes:span, the span twice the window's positions by default
    assert report["24:16:32"]["fraction"] == 0.2 and report["16:16:16"]["cost"] is None
    for knobs in ("16:16:16", "24:16:32"):
        assert report[knobs]["honest-t1 greedy"]["inconsistent"] == 0
        assert report[knobs]["cheat-random sampled"]["detection_per_check"] == 1.0
    assert report["24:16:32"]["cheat-random greedy"]["flagged_within_50_at_budget"] > 0.99
    rejudge_check_knobs.print_report({"probes": {}, "positions": report})  # prints


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "none.json")
    assert rejudge_check_knobs.main(["--probe-raw", missing]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):
        rejudge_check_knobs.main(["--probes", "0"])


def test_the_cost_model_scales_the_measured_check_by_its_rows_and_feed() -> None:
    quiet = {  # a bench_check_cost.py --json without probes, its split
        "check_positions": 32,
        "max_tokens": 128,
        "prompt_tokens": 40,
        "generation_wall_s": 5.0,
        "check_vs_generation_wall": 0.16,
        "split": {
            "decode_with_logits_wall_s": 0.64,
            "decode_no_logits_wall_s": 0.35,
            "parts_s": {"log-softmax, rank, top-k": 0.04, "sampler replay (choice margin)": 0.02},
        },
    }
    costs = rejudge_check_knobs.estimate_costs(quiet, [(32, 0, 48), (32, 16, 48), (18, 16, 20)])
    node = 5.0 / (5.0 + rejudge_check_knobs.NODE_PROBE_S)  # the node's probe rows, added
    assert costs[(32, 0)] == round(0.16 * node, 4)
    assert costs[(32, 16)] > costs[(32, 0)] > costs[(18, 16)]
