"""tools/bench_campaign.py on the tiny model: every request checked as the client checks it, one
line each; a second run resumes after the first's last unit; a line cut by a kill is skipped;
--summary re-judges the lines (a made-up probe is caught, honest lines stay as judged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.prompt_probes import DEFAULT_PROBES
from p2p.client.spot_check import CHECK_POSITIONS
from tools import bench_campaign as tool
from tools._campaign_lines import read_lines, rejudge_line, summary


def _run(out: Path, model: Path, requests: int) -> None:
    argv = ["--mode", "honest", "--requests", str(requests), "--max-tokens", "40"]
    assert tool.main([*argv, "--out", str(out), "--model", str(model), "--seed", "3"]) == 0


def test_a_campaign_resumes_and_its_lines_rejudge(tmp_path: Path, tiny_gguf: Path) -> None:
    out = tmp_path / "honest.jsonl"
    _run(out, tiny_gguf, 2)  # units 0 (t1) and 1 (t2)
    with out.open("a") as f:
        f.write('{"v": 1, "mode": "honest", "unit": 7')  # a kill mid-line
    _run(out, tiny_gguf, 1)  # resumes at unit 2: slots4, 4 requests together
    lines = list(read_lines(out))
    assert [(ln["unit"], ln["config"]) for ln in lines] == [(0, "t1"), (1, "t2")] + [
        (2, "slots4")
    ] * 4
    for ln in lines:
        assert len(ln["draws"]) == len(ln["node_probes"]) == len(ln["verifier_probes"])
        assert len(ln["draws"]) == DEFAULT_PROBES
        n = len(ln["tokens"])
        assert len(ln["committed"]) == n
        assert len(ln["positions"]) == min(n, CHECK_POSITIONS)
        assert ln["feed"] == ln["positions"][-1] + 1 if n else ln["feed"] == 0
        assert rejudge_line(ln).verdict == ln["verdict"]
        assert ln["verdict"] != "inconsistent"  # the same file on both sides
    assert tool.main(["--out", str(out), "--model", str(tiny_gguf), "--until", "6"]) == 0
    assert len(list(read_lines(out))) == 6  # it held 6 already: nothing added
    report = summary([out])
    assert report["honest_all"]["requests"] == 6
    assert report["honest_all"]["false_verdicts"] == 0


def test_the_summary_catches_made_up_probes(tmp_path: Path, tiny_gguf: Path) -> None:
    out = tmp_path / "honest.jsonl"
    _run(out, tiny_gguf, 1)
    (line,) = read_lines(out)
    cheat = dict(line, mode="cheat-prefix", config="t2", node_probes=[-30.0] * DEFAULT_PROBES)
    faked = tmp_path / "cheat.jsonl"
    faked.write_text(json.dumps(cheat) + "\n")
    report = summary([out, faked], check_probes=4)
    setting = "sampled" if line["temperature"] > 0 else "greedy"
    row = report["groups"]["cheat-prefix t2"][setting]
    assert row["detection_per_check"] == 1.0
    assert row["by_probes_alone"] == 1
    assert report["honest_all"]["false_verdicts"] == 0


def test_running_without_an_output_file_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        tool.main(["--mode", "honest"])
    assert "--out is needed" in capsys.readouterr().err
