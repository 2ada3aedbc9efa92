"""The log-sum-exp of token_logprobs.py in a per-thread scratch buffer gives exactly, to the last
bit, what the fresh-array formula gave (the receipt's commitments and the API's logprobs must
not move), on real logits of the tiny GGUF and of the default model's 262K vocabulary; a row of
another size or dtype, or another thread, is not confused by the buffer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.llama_lowlevel import LoadedModel
from inference.token_logprobs import log_normalizer, token_logprob

PROMPT = "The ferry left the harbour an hour late, and by the time it cleared"


def fresh_array_normalizer(logits: np.ndarray[Any, Any]) -> float:
    """The formula as it was before the scratch buffer: a new array per call."""
    peak = float(logits.max())
    return peak + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))


def real_logits(path: Path, gpu_layers: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The logits at every position of PROMPT, one row each (copies)."""
    model = LoadedModel.load(path, n_ctx=128, n_seq=1, n_threads=2, n_gpu_layers=gpu_layers)
    try:
        tokens = model.tokenize(PROMPT)
        model.clear_batch()
        for pos, token in enumerate(tokens):
            model.add(token, pos, 0, True)
        assert model.decode() == 0
        return np.stack([model.logits(i).copy() for i in range(len(tokens))])
    finally:
        model.close()


def check_rows(rows: np.ndarray[Any, np.dtype[np.float32]]) -> None:
    assert rows.dtype == np.float32 and rows.shape[0] > 3
    for row in rows:
        expected = fresh_array_normalizer(row)
        assert log_normalizer(row) == expected  # exactly, not approximately
        token = int(row.argmax())
        entry = token_logprob(row, token, 0, lambda t: b"")
        assert entry.logprob == float(row[token]) - expected
        assert log_normalizer(row) == expected  # a second call over the used buffer


def test_the_scratch_buffer_changes_no_bit_on_the_tiny_model(
    tiny_gguf: Path, gpu_layers: int
) -> None:
    check_rows(real_logits(tiny_gguf, gpu_layers))


@pytest.mark.slow
def test_the_scratch_buffer_changes_no_bit_on_the_default_model(
    default_model: Path, gpu_layers: int
) -> None:
    rows = real_logits(default_model, gpu_layers)
    assert rows.shape[1] == 262_144
    check_rows(rows)


def test_rows_of_other_sizes_views_and_dtypes() -> None:
    rng = np.random.default_rng(7)
    big = (rng.standard_normal(4096) * 8).astype(np.float32)
    small = (rng.standard_normal(33) * 8).astype(np.float32)
    for row in (big, small, big, big[::2], big[:1000], small.astype(np.float64)):
        assert log_normalizer(row) == fresh_array_normalizer(row)
    grid = big.reshape(64, 64)  # not a row: the fresh-array path, unchanged
    assert log_normalizer(grid) == fresh_array_normalizer(grid)


def test_threads_do_not_share_a_buffer() -> None:
    rng = np.random.default_rng(11)
    rows = [(rng.standard_normal(50_000) * (3 + i)).astype(np.float32) for i in range(4)]
    expected = [fresh_array_normalizer(r) for r in rows]
    start = threading.Barrier(len(rows), timeout=30)
    wrong: list[int] = []

    def work(i: int) -> None:
        start.wait()
        for _ in range(50):
            if log_normalizer(rows[i]) != expected[i]:
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []
