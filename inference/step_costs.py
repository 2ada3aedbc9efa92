"""What one decode step costs on this machine, by the number of rows in its batch.

Two decisions need the same curve. The slot planner (inference/slot_planner.py) asks how much
aggregate decode grows from n to 2n concurrent sequences: n / cost(n) against 2n / cost(2n).
The drafting policy (inference/draft_policy.py) asks what d draft rows add to a step that
already holds b rows: cost(b + d) - cost(b). Neither can be guessed: on 2 cores the default
model's step grows from ~16 ms (1 row) to ~55 ms (8 rows), on a GPU 8 rows cost barely more
than one. So a worker measures the curve at start in its own thread and context, as
tools/bench_decode_steps.py does by hand: a short prefix prefilled once and shared by every
sequence (cells tagged, not copied), then for each row count one untimed step and a few timed
ones, every row with logits (draft rows and decoding rows both need theirs, and with a 262k
vocabulary the output head is a large part of a row's cost). Rows come from distinct sequences
up to the context's sequences, then several consecutive positions per sequence, as drafts are.

`StepCostJob` is the worker-thread job (a MeasureJob, so the scheduler runs it as it runs the
self-benchmark: alone, on an empty batch); `StepCosts` is the record both decisions read.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import attrs
import trio

from inference.generation import GenerationError
from inference.llama_lowlevel import LoadedModel
from inference.worker_thread import MeasureJob

# Row counts measured: enough points for the knee of any slot count up to the settings' 64 and
# for drafts up to the step's draft budget (64, inference/batching.py MAX_STEP_DRAFTS).
DEFAULT_COUNTS = (1, 2, 4, 8, 16, 32, 64)
PREFIX_TOKENS = 64  # context each row attends to: a short prompt, not an empty one
TIMED_REPEATS = 3  # median of these per count (one untimed step first)

_TEXT = (
    "Volunteers lend their machines to a network that answers prompts. Each node measures how "
    "long one step of its batch takes, so that it knows how many requests to decode together. "
)


@attrs.frozen
class StepCosts:
    """Median seconds of one decode step of `rows[i]` rows (each with logits), taken from
    `sequences[i]` distinct sequences; rows increasing."""

    rows: tuple[int, ...]
    seconds: tuple[float, ...]
    sequences: tuple[int, ...]

    def __attrs_post_init__(self) -> None:
        if not self.rows or len({len(self.rows), len(self.seconds), len(self.sequences)}) > 1:
            raise ValueError("step costs need one time and one sequence count per row count")
        if list(self.rows) != sorted(set(self.rows)) or self.rows[0] < 1:
            raise ValueError(f"row counts must be increasing and positive, got {self.rows}")
        if any(not s > 0 for s in self.seconds):
            raise ValueError("step times must be positive")

    @classmethod
    def of(cls, points: dict[int, float]) -> StepCosts:
        """From {rows: seconds}, each row from its own sequence (tests, fake curves)."""
        rows = tuple(sorted(points))
        return cls(rows, tuple(points[r] for r in rows), rows)

    def cost(self, rows: int) -> float:
        """Seconds of a step of `rows` rows: linear between measured counts, the last slope
        beyond them, the first point's time below it (a step never costs less than one row's)."""
        xs, ys = self.rows, self.seconds
        if rows <= xs[0]:
            return ys[0]
        if len(xs) == 1:
            return ys[0] * rows / xs[0]
        i = next((k for k in range(1, len(xs)) if rows <= xs[k]), len(xs) - 1)
        slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
        return max(ys[0], ys[i - 1] + slope * (rows - xs[i - 1]))

    def decode_rates(self) -> dict[int, float]:
        """Aggregate decode tokens/s at n concurrent sequences, one row each: the points
        measured with a sequence per row."""
        return {
            r: r / s
            for r, s, n in zip(self.rows, self.seconds, self.sequences, strict=True)
            if n == r
        }

    def describe(self) -> str:
        pairs = zip(self.rows, self.seconds, strict=True)
        return ", ".join(f"{r} rows {1000 * s:.1f} ms" for r, s in pairs)


def measure_step_costs(
    model: LoadedModel,
    *,
    n_seq: int,
    counts: Sequence[int] = DEFAULT_COUNTS,
    budget_s: float = 2.0,
) -> StepCosts:
    """Time decode steps of each row count on `model` (from its owning thread; every sequence
    empty). Counts past the batch size, or that the budget has no room for (each costs about
    as much more as its rows), are left out; 1 and 2 always run."""
    started = time.perf_counter()
    text = model.tokenize(_TEXT)
    prefix_len = max(1, min(PREFIX_TOKENS, model.n_ctx // 2, model.n_batch))
    prefix = (text * (prefix_len // len(text) + 1))[:prefix_len]
    model.forget_all()
    model.clear_batch()
    for pos, token in enumerate(prefix):
        model.add(token, pos, 0, False)
    _decode(model)
    for seq in range(1, n_seq):
        model.share(0, seq, prefix_len)
    rows_done: list[int] = []
    seconds: list[float] = []
    sequences: list[int] = []
    try:
        for count in sorted(set(counts)):
            used = min(count, n_seq)
            per_seq = -(-count // used)
            if count > model.n_batch or prefix_len + per_seq > model.n_ctx:
                break
            if rows_done[1:]:  # past 1 and 2 rows: only what the budget still has room for
                guess = seconds[-1] * count / rows_done[-1] * (TIMED_REPEATS + 1)
                if time.perf_counter() - started + guess > budget_s:
                    break
            times = []
            for repeat in range(TIMED_REPEATS + 1):
                model.clear_batch()
                for i in range(count):
                    token = text[i % len(text)]
                    model.add(token, prefix_len + i // used, i % used, True)
                t0 = time.perf_counter()
                _decode(model)
                if repeat:  # the first step of a new shape allocates; not timed
                    times.append(time.perf_counter() - t0)
                for seq in range(used):
                    model.forget_from(seq, prefix_len)
            rows_done.append(count)
            seconds.append(max(statistics.median(times), 1e-6))
            sequences.append(used)
    finally:
        model.forget_all()
        model.clear_batch()
    return StepCosts(tuple(rows_done), tuple(seconds), tuple(sequences))


def _decode(model: LoadedModel) -> None:
    status = model.decode()
    if status != 0:
        raise RuntimeError(f"llama_decode failed while measuring step costs ({status})")


@attrs.define
class StepCostJob(MeasureJob):
    """The step-cost measurement as a worker-thread job. A MeasureJob to the scheduler (it waits
    for an empty batch and runs alone); its answer is `costs`, read with `wait_costs()`."""

    n_seq: int = 1
    counts: tuple[int, ...] = DEFAULT_COUNTS
    costs: StepCosts | None = None

    @classmethod
    def make(
        cls, n_seq: int, budget_s: float, counts: Sequence[int] = DEFAULT_COUNTS
    ) -> StepCostJob:
        return cls(0, 0, budget_s, n_seq=n_seq, counts=tuple(counts))

    def run(self, model: LoadedModel, token: trio.lowlevel.TrioToken) -> None:
        try:
            self.costs = measure_step_costs(
                model, n_seq=self.n_seq, counts=self.counts, budget_s=self.budget_s
            )
        except Exception as e:
            self.result = GenerationError(f"step-cost measurement failed: {type(e).__name__}: {e}")
        self.wake(token)

    async def wait_costs(self) -> StepCosts:
        await self.done.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        if self.costs is None:
            raise GenerationError("the model worker is closed")
        return self.costs
