"""tools/cuda_check.py on this machine: without a GPU both legs run on the CPU and agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from inference.gpu import supports_gpu_offload

ROOT = Path(__file__).resolve().parents[2]


def run_check(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GPUNET_MODEL_CACHE=str(tmp_path / "cache"))  # its sha256 cache
    return subprocess.run(
        [sys.executable, "tools/cuda_check.py", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_reports_both_legs(tiny_gguf: Path, tmp_path: Path) -> None:
    done = run_check(tmp_path, "--model", tiny_gguf, "--rounds", "2", "--max-tokens", "12")
    assert done.returncode == 0, done.stderr
    report = json.loads(run_check(tmp_path, "--model", tiny_gguf, "--rounds", "1", "--json").stdout)
    assert report["errors"] == {}
    assert report["model"] == "tiny-llama" and report["layer_count"] == 2
    assert set(report["legs"]) == {"gpu", "cpu"}
    cpu = report["legs"]["cpu"]
    assert cpu["n_gpu_layers"] == 0 and cpu["decode_tok_s_median"] > 0
    assert cpu["self_benchmark"]["prefill_tok_s"] > 0
    assert len(cpu["greedy_ids"]) == 128
    if not (supports_gpu_offload() and report["gpus"]):
        # the "gpu" leg is the planner's choice, which here is the CPU too
        assert report["plan"]["n_gpu_layers"] == 0
        assert report["plan"]["reason"].startswith("on the CPU")
        assert report["legs"]["gpu"]["greedy_ids"] == cpu["greedy_ids"]
        assert report["greedy_first_difference"] is None
    # the text report names what was measured
    assert "plan: " in done.stdout and "decode, GPU / CPU:" in done.stdout


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    done = run_check(tmp_path, "--model", tmp_path / "nope.gguf")
    assert done.returncode == 2
    assert "is not a file" in done.stderr and "Traceback" not in done.stderr
