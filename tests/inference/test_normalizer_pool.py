"""The commitments' log-sum-exps shared with a helper thread (inference/normalizer_pool.py):
the same values as `log_normalizer` on real logits (exactly for whole rows, within 1e-12
relative for the rows of a small step, split in parts), the same commitments and probe values from a
BatchingWorker with the helper as without, the helper thread ends with the worker, a failure
in it fails the step's requests (not a hang) and the worker serves on, and --threads 1 starts
no thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

import inference.batch_sequence as batch_sequence
import inference.normalizer_pool as normalizer_pool
import inference.probe_rows as probe_rows
from inference.batching import BatchingWorker
from inference.generation import GenerationError, GenerationRequest
from inference.llama_lowlevel import LoadedModel
from inference.normalizer_pool import NormalizerPool, helper_wanted
from inference.token_logprobs import log_normalizer, token_logprob
from tests.inference.test_batching import Result, run, run_together

PROMPT = "The ferry left the harbour an hour late, and by the time it cleared the breakwater"
PROMPTS = ("The capital of France is", "Once upon a time", "def fib(n):", "The quick brown fox")
DRAWS = tuple(range(7, 2**32, 2**32 // 9))[:8]  # fixed probe draws: results comparable


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("normalizer-helper")]


def check_pool_on_real_logits(path: Path, gpu_layers: int) -> None:
    model = LoadedModel.load(path, n_ctx=128, n_seq=1, n_threads=2, n_gpu_layers=gpu_layers)
    pool = NormalizerPool(helper=True)
    try:
        tokens = model.tokenize(PROMPT)
        model.clear_batch()
        for pos, token in enumerate(tokens):
            model.add(token, pos, 0, True)
        assert model.decode() == 0
        rows = list(range(len(tokens)))
        expected = [log_normalizer(model.logits(i)) for i in rows]
        for _ in range(3):  # several steps over the same pool and thread
            with pool.step(model, rows) as norm:
                with pool._cond:  # the helper has taken and finished a row: it did help
                    assert pool._cond.wait_for(lambda: pool.helped > 0, timeout=30)
                assert [norm(i) for i in rows] == expected  # whole rows: to the last bit
        assert pool.helped > 0
        for n in (1, 2, 3):  # steps of fewer rows than MIN_UNITS: each split in parts
            with pool.step(model, rows[:n]) as norm:
                values = [norm(i) for i in rows[:n]]
            for value, exact in zip(values, expected, strict=False):
                assert abs(value - exact) <= 1e-12 * abs(exact)
        with pool.step(model, [0, 1]) as norm:  # a row not posted is computed by the caller
            assert norm(2) == expected[2]
    finally:
        pool.close()
        model.close()
    assert pool.thread is not None and not pool.thread.is_alive()


def test_pool_values_on_the_tiny_model(tiny_gguf: Path, gpu_layers: int) -> None:
    check_pool_on_real_logits(tiny_gguf, gpu_layers)


@pytest.mark.slow
def test_pool_values_on_the_default_model(default_model: Path, gpu_layers: int) -> None:
    check_pool_on_real_logits(default_model, gpu_layers)


def entries(result: Result) -> list[float]:
    return [e.logprob for c in result.chunks for e in c.logprobs]


def requests(n: int, max_tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(p, max_tokens=max_tokens, ignore_eos=True, logprobs=0, probes=DRAWS)
        for p in PROMPTS[:n]
    ]


async def serve_checked(
    path: Path, monkeypatch: pytest.MonkeyPatch, max_tokens: int
) -> tuple[list[tuple[float, float]], int]:
    """Four requests together, then one alone (its rows split), on a worker with its helper,
    every commitment and probe value checked where it is made: each log-sum-exp the worker was
    handed (by the pool, often from the helper) beside `log_normalizer` of the same logits,
    recomputed there. (Two runs of a worker need not give the same logits to the last bit, so
    this compares at the source rather than two runs.) The pairs, and the helper's units."""
    pairs: list[tuple[float, float]] = []

    def checked(logits: Any, token: int, n_top: int, piece: Any, norm: float | None = None) -> Any:
        assert norm is not None  # the worker's path always hands the step's value
        pairs.append((norm, log_normalizer(logits)))
        return token_logprob(logits, token, n_top, piece, norm)

    monkeypatch.setattr(batch_sequence, "token_logprob", checked)
    monkeypatch.setattr(probe_rows, "token_logprob", checked)
    async with BatchingWorker(path, n_ctx=512, n_threads=2, slots=4) as worker:
        worker._norms.helper = True  # as where a core is left over (helper_wanted)
        results = await run_together(worker, requests(4, max_tokens))
        results.append(await run(worker, requests(4, max_tokens)[0]))
        helped = worker._norms.helped
    for result in results:
        assert len(entries(result)) == len(result.ids) == max_tokens
        assert len(result.done.probe_logprobs) == len(DRAWS)
    assert len(pairs) >= 5 * max_tokens  # every token and probe value went through it
    return pairs, helped


def assert_same(pairs: list[tuple[float, float]]) -> None:
    assert pairs
    for given, expected in pairs:  # whole rows exactly; rows split in parts within 1e-12
        assert abs(given - expected) <= 1e-12 * abs(expected), (given, expected)
    assert sum(given == expected for given, expected in pairs) >= len(pairs) // 2


async def test_same_commitments_with_the_helper_on_the_tiny_model(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(120):
        pairs, _ = await serve_checked(tiny_gguf, monkeypatch, 24)
    assert_same(pairs)
    assert not helper_threads()  # the worker's helper ended with it


@pytest.mark.slow
async def test_same_commitments_with_the_helper_on_the_default_model(
    default_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(600):
        pairs, helped = await serve_checked(default_model, monkeypatch, 16)
    assert_same(pairs)
    assert helped > 0  # 1 ms rows: the helper surely took some (the tiny model's are µs)


async def test_the_helper_thread_stops_with_the_worker(tiny_gguf: Path) -> None:
    with trio.fail_after(60):
        async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=2) as worker:
            worker._norms.helper = True  # as where a core is left over (helper_wanted)
            await run_together(worker, requests(2, 8))
            thread = worker._norms.thread
            assert thread is not None and thread.is_alive() and thread.daemon
        assert not thread.is_alive()
        assert not helper_threads()


async def test_a_failing_helper_fails_the_requests_and_the_worker_serves_on(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = threading.Event()

    def broken(*args: Any) -> float:
        if threading.current_thread().name.startswith("normalizer-helper"):
            tried.set()
            raise MemoryError("injected")
        tried.wait(30)  # the worker's first row waits until the helper has taken one
        return real(*args)  # type: ignore[no-any-return]

    real: Any = log_normalizer
    monkeypatch.setattr(normalizer_pool, "log_normalizer", broken)
    with trio.fail_after(120):
        async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=4) as worker:
            worker._norms.helper = True  # as where a core is left over (helper_wanted)
            failures: list[BaseException] = []
            try:
                await run_together(worker, requests(4, 16))
            except* GenerationError as group:  # the step's requests, each its own error
                failures.extend(group.exceptions)
            assert tried.is_set() and failures
            assert all("log-probabilities failed" in str(e) for e in failures)
            monkeypatch.setattr(normalizer_pool, "log_normalizer", real)
            results = await run_together(worker, requests(4, 8))  # serves on, helper and all
            assert all(len(entries(r)) == 8 for r in results)


async def test_one_thread_starts_no_helper(tiny_gguf: Path) -> None:
    assert not helper_wanted(2, cpus=2) and not helper_wanted(None, cpus=16)  # CPU: no
    assert helper_wanted(None, gpu_layers=99, cpus=16) and helper_wanted(4, gpu_layers=1, cpus=16)
    assert not helper_wanted(1, gpu_layers=99, cpus=16)  # --threads 1 is a budget
    assert not helper_wanted(4, gpu_layers=99, cpus=1)
    with trio.fail_after(60):
        async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=1, slots=2) as worker:
            results = await run_together(worker, requests(2, 8))
            assert all(len(entries(r)) == 8 for r in results)
            assert worker._norms.thread is None and not helper_threads()


def test_a_step_without_rows_or_helper_computes_in_the_caller() -> None:
    rng = np.random.default_rng(3)
    row = (rng.standard_normal(4096) * 6).astype(np.float32)

    class Rows:  # the one LoadedModel method the pool reads
        def logits(self, i: int) -> np.ndarray[Any, np.dtype[np.float32]]:
            return row

    pool = NormalizerPool(helper=False)
    with pool.step(Rows(), [0]) as norm:  # type: ignore[arg-type]
        assert norm(0) == log_normalizer(row)
    assert pool.thread is None


def test_a_helper_that_runs_late_is_measured_and_left_aside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    rows = [(rng.standard_normal(4096) * 6).astype(np.float32) for _ in range(8)]

    class Rows:  # the one LoadedModel method the pool reads
        def logits(self, i: int) -> np.ndarray[Any, np.dtype[np.float32]]:
            return rows[i]

    def late(logits: Any) -> float:  # a helper with no idle core: each row takes 20 ms
        if threading.current_thread().name.startswith("normalizer-helper"):
            time.sleep(0.02)  # simulates the slowness; no test waits on it
        return real(logits)  # type: ignore[no-any-return]

    real: Any = log_normalizer
    monkeypatch.setattr(normalizer_pool, "log_normalizer", late)
    pool = NormalizerPool(helper=True)
    steps = 4 * normalizer_pool.EXPLORE
    try:
        for _ in range(steps):
            with pool.step(Rows(), range(8)) as norm:  # type: ignore[arg-type]
                assert [norm(i) for i in range(8)] == [real(r) for r in rows]
    finally:
        pool.close()
    # measured once each way, then alone but for one step in EXPLORE
    assert pool.alone_steps >= steps - steps // normalizer_pool.EXPLORE - 2
    assert pool._cost[(4, True)] > pool._cost[(4, False)]
