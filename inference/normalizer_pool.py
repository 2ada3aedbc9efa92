"""The commitments' log-sum-exps of a decode step, shared with a helper thread on the idle core.

Every generated token's signed commitment (its log-probability, inference/token_logprobs.py)
and every prompt probe (inference/probe_rows.py) needs log(sum(exp(logits))) over the whole
vocabulary: ~1 ms of numpy a row for Gemma 3's 262,144 tokens on this CPU, on the batching
worker's thread between two llama_decode calls, while llama.cpp's other thread has nothing to
do (~8 % of a step of 8 sequences, ~4 % of a single stream's). numpy releases the GIL inside
its subtract / exp / sum loops, so a second thread computes them in parallel.

One step, as BatchingWorker runs it (`NormalizerPool.step`): right after the decode, the rows
whose normalizers the step will certainly need (each producing sequence's row when it asks for
log-probabilities, which a node always does for its receipts, and the probe rows:
`batch_sequence.step_rows`) are posted, in the order the worker reads them. The helper takes
rows from the back, the worker from the front as it reaches them (after sampling each one):
a row nobody has started is the worker's, a row the helper is computing is waited for, a row
it has done is read. So the worker never waits for work the helper has not begun. A step with
fewer than MIN_UNITS such rows (a single stream has one) splits each into parts that are
shared the same way.

Values: a whole row is computed by `log_normalizer` itself (in whichever thread), so it is the
same float to the last bit as before. A split row's exponentials are the same float32 values
(the row's peak is taken first, over the whole row), summed per part in float64 and the sums
added: only the order of the float64 additions differs, a relative difference of ~1e-16
(tests assert ≤ 1e-12). Rows not posted (kept draft tokens: a rejected draft costs what it
did before, nothing) are computed by the worker as they come.

Lifetime and safety: the logits are views into llama.cpp's output buffer, which the next
decode rewrites or moves, so a step ends (`step`'s exit, on errors too) only once the helper
holds none of its rows; rows nobody started are dropped. An exception in either thread becomes
the step's GenerationError (the batch's requests fail, the worker serves on); every wait has a
deadline. `helper=False` starts no thread and computes everything in the worker, as before:
what a worker gets on the CPU, where measured on 2 cores the helper did not pay
(`helper_wanted`: only a GPU's decode leaves cores idle; not yet measured there). Where a
core is not idle after all (a loaded machine), the helper runs late and the worker waits for
it: the pool times both ways and takes the cheaper (EXPLORE below). The thread is a daemon,
started on the first step that has rows and stopped by `close()` when the worker's loop ends.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import numpy as np

from inference.generation import GenerationError
from inference.llama_lowlevel import LoadedModel
from inference.token_logprobs import log_normalizer, partial_exp_sum

# A step's function: batch index -> that row's log_normalizer.
Normalizer = Callable[[int], float]

# A step of fewer rows splits each into parts, so that there are at least this many units: the
# worker waits at most for the one part the helper is computing, not a whole row (on a loaded
# machine the helper may compute slowly), and a single stream's row is still shared.
MIN_UNITS = 4
# Whether the helper pays is measured, not assumed: the wall time of each step's reading (post
# to end, per row) goes into a moving average per way (helper or alone) and step size (1, 2,
# 3, 4+ rows); each step goes the cheaper way, and one in EXPLORE the other, so both figures
# follow the machine. On a loaded machine (no idle core: the helper runs late and the worker
# waits) that picks alone; on an idle second core, the helper.
EXPLORE = 16
ALPHA = 0.1  # the averages' weight of a new step
# A unit is a millisecond of numpy; one held this long means the helper is gone or stuck.
WAIT_S = 10.0

_FREE, _WORKER, _HELPER, _DONE, _DROPPED = range(5)


def helper_wanted(n_threads: int | None, *, gpu_layers: int = 0, cpus: int | None = None) -> bool:
    """Whether a worker gets a helper thread: only where the decode runs on a GPU (`gpu_layers`),
    so that llama.cpp's CPU threads wait on it and cores are idle, and never with one thread
    (--threads 1 is a budget) or one CPU. On the CPU llama.cpp's batches take every core the node
    may use, and the quiet 2-core machine measured the helper at 1.04× a single stream's wall a
    token (the hand-offs cost more than half a row saves) and 0.97× (0.90-1.06) at 8 streams:
    not worth a thread there (docs/benchmarks.md "The commitments' normalizers on the idle
    core"). On a GPU, where a step is milliseconds, the rows' ~1 ms each weigh most."""
    cpus = cpus or os.cpu_count() or 1
    return gpu_layers != 0 and cpus > 1 and n_threads != 1  # -1: every layer


@attrs.define(eq=False)
class _Unit:
    """A whole row (`peak` None: its log_normalizer) or a part of one (its exp sum)."""

    logits: np.ndarray[Any, np.dtype[np.float32]]
    lo: int = 0
    hi: int = 0
    peak: float | None = None
    state: int = _FREE
    value: float = 0.0
    error: BaseException | None = None

    def compute(self) -> None:
        try:
            if self.peak is None:
                self.value = log_normalizer(self.logits)
            else:
                self.value = partial_exp_sum(self.logits, self.peak, self.lo, self.hi)
        except Exception as e:  # becomes the step's GenerationError in the worker
            self.error = e


def in_this_thread(model: LoadedModel) -> Normalizer:
    """The step's function without a helper: each row computed by the caller, as before."""
    return lambda index: log_normalizer(model.logits(index))


def _done(unit: _Unit) -> bool:
    return unit.state == _DONE


class NormalizerPool:
    """The helper thread of one BatchingWorker and the units of its current step."""

    def __init__(self, helper: bool, name: str = "normalizer-helper") -> None:
        self.helper = helper
        self.name = name
        self._cond = threading.Condition()
        self._units: list[_Unit] = []  # this step's, in the worker's reading order
        self._thread: threading.Thread | None = None
        self._closed = False
        self.helped = 0  # units the helper computed (for tests and benchmarks)
        self.adaptive = True  # False: the helper on every step with rows (benchmarks)
        self.alone_steps = 0  # steps of rows the measured costs sent the worker's way
        self._cost: dict[tuple[int, bool], float] = {}  # (size class, helper) -> s a row
        self._seen: dict[int, int] = {}  # steps per size class

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    @contextlib.contextmanager
    def step(self, model: LoadedModel, rows: Sequence[int]) -> Iterator[Normalizer]:
        """Post this step's certain rows; yield the worker's normalizer function; on exit wait
        until the helper holds none of the rows (their logits die with the next decode)."""
        rows = list(dict.fromkeys(rows))
        size = min(len(rows), MIN_UNITS)
        helped = self._choose(size)
        started = time.perf_counter()  # the helper's way pays its posting (peaks) too
        by_row = self._post(model, rows) if helped else {}
        try:
            if not by_row:
                yield in_this_thread(model)
            else:
                try:
                    yield lambda index: self._value(model, by_row, index)
                finally:
                    self._end()
        finally:
            if rows and (helped == bool(by_row)):
                self._observe(size, helped, (time.perf_counter() - started) / len(rows))

    def _choose(self, size: int) -> bool:
        """Whether this step's rows go to the helper too: the cheaper way as measured."""
        if not self.helper or self._closed or size == 0:
            return False
        if not self.adaptive:
            return True
        seen = self._seen[size] = self._seen.get(size, 0) + 1
        helper, alone = self._cost.get((size, True)), self._cost.get((size, False))
        if helper is None or alone is None:
            way = helper is None  # measure each way once first
        else:
            way = (helper <= alone) != (seen % EXPLORE == 0)
        self.alone_steps += not way
        return way

    def _observe(self, size: int, helped: bool, per_row: float) -> None:
        key = (size, helped)
        old = self._cost.get(key)
        self._cost[key] = per_row if old is None else old + ALPHA * (per_row - old)

    def _post(self, model: LoadedModel, rows: Sequence[int]) -> dict[int, list[_Unit]]:
        """The units of these rows, handed to the helper; {} when it is not used."""
        if not self.helper or self._closed or not rows or not self._started():
            return {}
        by_row: dict[int, list[_Unit]] = {}
        try:
            for index in rows:
                logits = model.logits(index)
                if logits.dtype != np.float32 or logits.ndim != 1:
                    continue
                parts = -(-MIN_UNITS // len(rows))  # a few rows: each in parts, one peak
                if parts > 1:
                    peak, n = float(logits.max()), logits.shape[0]
                    by_row[index] = [
                        _Unit(logits, n * k // parts, n * (k + 1) // parts, peak)
                        for k in range(parts)
                    ]
                else:
                    by_row[index] = [_Unit(logits)]
        except GenerationError:
            return {}  # a row without logits: the worker meets the same error when it reads
        with self._cond:
            self._units = [unit for units in by_row.values() for unit in units]
            self._cond.notify_all()
        return by_row

    def _started(self) -> bool:
        """The helper thread, started on first use; False when it cannot be."""
        if self._thread is not None:
            return self._thread.is_alive()
        thread = threading.Thread(target=self._help, name=self.name, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no more threads: the worker computes alone, as before
            self.helper = False
            return False
        self._thread = thread
        return True

    def _value(self, model: LoadedModel, by_row: dict[int, list[_Unit]], index: int) -> float:
        """Row *index*'s normalizer: computed here unless the helper has it (or started it)."""
        units = by_row.get(index)
        if units is None:
            return log_normalizer(model.logits(index))
        for unit in units:
            with self._cond:
                mine = unit.state == _FREE
                if mine:
                    unit.state = _WORKER
                else:
                    self._wait(functools.partial(_done, unit))
            if mine:
                unit.compute()
                unit.state = _DONE
            if unit.error is not None:
                error = unit.error
                raise GenerationError(
                    f"log-probabilities failed: {type(error).__name__}: {error}".replace("\n", " ")
                ) from error
        if len(units) == 1:
            return units[0].value
        peak = units[0].peak
        assert peak is not None
        return peak + math.log(sum(unit.value for unit in units))

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Under the lock: until *ready*, within WAIT_S and while the helper lives."""
        deadline = WAIT_S
        while not ready():
            thread = self._thread
            if thread is None or not thread.is_alive() or deadline <= 0:
                self.helper = False  # from now on the worker computes alone
                raise GenerationError("the log-probability helper thread stopped answering")
            self._cond.wait(0.5)
            deadline -= 0.5

    def _end(self) -> None:
        """Drop what nobody started; wait for what the helper is computing."""
        with self._cond:
            for unit in self._units:
                if unit.state == _FREE:
                    unit.state = _DROPPED
            try:
                self._wait(lambda: all(u.state != _HELPER for u in self._units))
            finally:
                self._units = []

    def _help(self) -> None:
        """The helper thread: take the last free unit of the step, compute it, repeat."""
        while True:
            with self._cond:
                unit = self._claim()
                while unit is None and not self._closed:
                    self._cond.wait()
                    unit = self._claim()
                if unit is None:
                    return
            unit.compute()
            with self._cond:
                unit.state = _DONE
                self.helped += 1
                self._cond.notify_all()

    def _claim(self) -> _Unit | None:
        for unit in reversed(self._units):
            if unit.state == _FREE:
                unit.state = _HELPER
                return unit
        return None

    def close(self) -> None:
        """Stop the helper thread (the worker's loop has ended); idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(WAIT_S)
