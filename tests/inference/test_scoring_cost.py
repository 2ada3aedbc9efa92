"""A check's cost (inference/scoring.py, tools/bench_check_cost.py): a sampled check feeds every
token it is given and scores its positions as a check of more positions does, bit for bit; the
softmax's scratch buffer changes no value; the benchmark asks for the positions (and the feed) a
spot check asks for and reports every part of a check's time and the window's noise."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from inference.generation import GenerationRequest
from inference.llama_lowlevel import LoadedModel
from inference.scoring import ScoreRequest, position_score, score_tokens
from p2p.client.spot_check import CHECK_POSITIONS, FIRST_POSITIONS
from tools import bench_check_cost

PROMPT = "the capital of france is"
SAMPLED = GenerationRequest(PROMPT, temperature=0.9, seed=3, repeat_penalty=1.3)


def test_a_sampled_check_feeds_every_token(
    monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path
) -> None:
    """Even past its last scored position: a shorter batch may pick other CPU kernels and move
    the scored positions' numbers (inference/scoring.py), so a check feeds it all."""
    tokens = list(range(300, 340))
    fed: list[int] = []
    original = LoadedModel.decode

    def counted(self: LoadedModel) -> int:
        fed.append(self.n_tokens)
        return original(self)

    model = LoadedModel.load(tiny_gguf, n_ctx=512, n_seq=1, n_threads=2, n_gpu_layers=0)
    try:
        more = score_tokens(model, 0, ScoreRequest(SAMPLED, tokens, 3, (0, 7, 21, 39)))
        model.forget_all()
        monkeypatch.setattr(LoadedModel, "decode", counted)
        some = score_tokens(model, 0, ScoreRequest(SAMPLED, tokens, 3, (0, 7, 21)))
    finally:
        model.close()
    assert sum(fed) == some.prompt_tokens + len(tokens) - 1
    # The scored positions do not depend on which others are scored (penalties, draw steps
    # and all), bit for bit on the CPU.
    assert [p.index for p in some.positions] == [0, 7, 21]
    assert some.positions == more.positions[:3]
    assert not any(math.isnan(p.choice_margin) for p in some.positions)  # replayed


def random_logits(seed: int, n: int = 5000) -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(n) * 4).astype(np.float32)
    logits[rng.integers(0, n, 20)] = -np.inf  # banned tokens
    return logits


@pytest.mark.parametrize("top", [0, 5])
def test_the_scratch_buffer_changes_no_value(top: int) -> None:
    scratch = np.empty(5000, dtype=np.float32)
    for seed in range(20):
        logits = random_logits(seed)
        kept = logits.copy()
        token = int(np.random.default_rng(seed).integers(0, 5000))
        plain = position_score(logits, token, 0.25, top, 3)
        reused = position_score(logits, token, 0.25, top, 3, scratch)
        assert attrs.astuple(plain) == attrs.astuple(reused)
        assert np.array_equal(logits, kept)  # the logits themselves are left alone
        assert len(plain.top) == top


def test_the_benchmark_checks_what_a_spot_check_asks_for() -> None:
    rng = random.Random(5)
    for n in (CHECK_POSITIONS + 1, 128, 400):
        only, end = bench_check_cost.check_positions(n, rng)
        assert len(only) == CHECK_POSITIONS and list(only) == sorted(set(only))
        assert only[:FIRST_POSITIONS] == tuple(range(FIRST_POSITIONS)) and only[-1] == end - 1
        assert end <= n
    assert bench_check_cost.check_positions(CHECK_POSITIONS, rng) == ((), CHECK_POSITIONS)
    kinds = [kind for kind, _ in bench_check_cost.requests(8, 3)]
    assert kinds == [f"{k} {m}" for k in ("code", "prose", "chat") for m in ("greedy", "T0.8")]


def test_the_benchmark_reports_every_part(
    tiny_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model", str(tiny_gguf), "--max-tokens", "40", "--rounds", "1", "--prompts", "1"]
    baseline = Path(__file__).parents[2] / "inference" / "scoring.py"  # itself: identical
    assert (
        bench_check_cost.main([*args, "--profile", "1", "--baseline", str(baseline), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 2
    assert report["check_vs_generation_cpu"] > 0 and report["full_check_vs_generation_wall"] > 0
    parts = report["split"]["parts_s"]
    assert set(bench_check_cost.PARTS) < set(parts)
    assert parts["llama_decode"] > 0 and parts["total"] >= parts["llama_decode"]
    assert report["baseline"]["checks"] == report["baseline"]["identical_scores"] == 2
    # the window against the whole feed, judged with the node's commitments
    noise = report["window_noise"]
    assert noise["checks"] == 2 and noise["max_logprob_gap"] >= 0
    assert 0 < report["fed_fraction"] <= 1 and report["whole_feed_check_vs_generation_wall"] > 0
