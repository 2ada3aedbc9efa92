"""Step costs that follow the real load: the start-up curve corrected by the steps served.

inference/step_costs.py measures T(rows) once, at start, on short sequences of an idle
machine. Serving differs: sequences are hundreds of tokens long, the cores are shared with
the trio thread and whatever else the volunteer runs, and a full batch may cost its rows
differently from the start-up steps. The drafting policy (inference/draft_policy.py) decides
on the ratio (T(b + d) - T(b)) / T(b), so what it needs from serving is the curve's *shape* at
the load it is under: a uniform slowdown changes no decision, extra rows that cost more than
at start do.

So the batching worker times each step whose rows all have logits (decoding rows and drafts,
the rows the curve is measured with; a step that prefills prompt chunks is left out), from
feeding its rows to sampling its tokens, since that whole time is what the step's tokens cost,
and feeds (rows, seconds) here. Each sample's ratio to the start-up curve, as a logarithm
(a step twice as slow and one half as slow weigh alike), is fitted by a correction per power
of two of rows from 1 to 64, read between two buckets linearly in log2(rows) so the curve stays
continuous: each sample is a least-squares step on that fit (weight 1 / n for a bucket's first
samples, ALPHA after), shared by the two buckets around it. A cost is never read below that of
fewer rows: a dip would look like free draft rows. Bounded and robust by construction:

- memory: seven buckets, whatever is served;
- a bad sample (a step held up by a GC pause or a scheduler hiccup) counts as at most CLIP
  times the current estimate, so one moves a bucket by at most ALPHA x log(CLIP) (7 %);
  a slowdown that lasts moves it all the way within a few dozen steps;
- a bucket with little or only old evidence (its decayed weight against PRIOR_WEIGHT) leans on
  what its neighbours saw (each power of two away counting NEIGHBOUR as much): a row count
  nobody has fed lately (drafts stopped because they did not pay) takes the correction of the
  rows around it, is tried again when that says it pays, and learns again what it costs.

The context length is not a key: it grows by one token a step, so the averages follow it, and
a table by (rows, context) would leave most cells unobserved exactly where the policy asks.

Sans-IO and pure arithmetic: the scheduler thread calls `observe` after each step and the
policy calls `cost`, both on that thread.
"""

from __future__ import annotations

import math

from inference.step_costs import StepCosts

BUCKETS = 7  # rows 1, 2, 4, ... 64: log2(rows) from 0 to 6; beyond 64 the last bucket
ALPHA = 0.1  # weight of a new sample once a bucket has 1 / ALPHA samples (about 10 steps)
CLIP = 2.0  # a sample counts as at most this many times (or this fraction of) the estimate
PRIOR_WEIGHT = 4.0  # a bucket trusts its own average over its neighbours' past this many samples
NEIGHBOUR = 0.25  # how much a bucket's evidence counts per power of two away, for the prior
FORGET = 0.998  # per observed step: evidence ~500 steps old (~30 s of a full batch) fades
FRESH = 1e-6  # a bucket with less decayed weight than this has no evidence left
_KERNEL = [[NEIGHBOUR ** abs(j - k) for j in range(BUCKETS)] for k in range(BUCKETS)]
_MEMO = 1024  # row counts remembered between two steps (the policy asks the same few often)


class OnlineStepCosts:
    """T(rows): `base`, the start-up curve, times a correction learned from served steps."""

    def __init__(self, base: StepCosts) -> None:
        self.base = base
        self._log = [0.0] * BUCKETS  # fitted log(observed / base) per bucket
        self._weight = [0.0] * BUCKETS  # decayed sample count per bucket
        self._eff = [0.0] * BUCKETS  # what is read: _log leaning on the neighbours' prior
        self._points = [base.cost(2**k) for k in range(BUCKETS)]
        self._floor = list(self._points)  # cost at each bucket's row count, made monotone
        self._memo: dict[int, float] = {}  # cost by rows until the next observed step
        self.samples = 0  # steps observed (accepted or clipped)

    @staticmethod
    def _split(rows: int) -> tuple[int, int, float]:
        """The two buckets around `rows` and the share of the upper one."""
        x = min(math.log2(max(1, rows)), BUCKETS - 1.0)
        low = int(x)
        high = min(low + 1, BUCKETS - 1)
        return low, high, x - low

    def _prior(self, k: int) -> float:
        """What the evidence near bucket k says: nearer buckets count more, none says 0 (the
        start-up curve). A row count nobody fed lately takes its neighbours' correction, not
        the average of all: under a full batch's load, past it rows do not turn cheap."""
        weights = [w * c for w, c in zip(self._weight, _KERNEL[k], strict=True)]
        total = sum(weights)
        if total <= 0:
            return 0.0
        return sum(w * v for w, v in zip(weights, self._log, strict=True)) / total

    def _refresh(self) -> None:
        """Recompute what `cost` reads, once per observed step (not per question asked)."""
        for k in range(BUCKETS):
            w = self._weight[k]
            self._eff[k] = (w * self._log[k] + PRIOR_WEIGHT * self._prior(k)) / (w + PRIOR_WEIGHT)
        floor = 0.0
        for k in range(BUCKETS):
            floor = max(floor, self._points[k] * math.exp(self._eff[k]))
            self._floor[k] = floor
        self._memo.clear()

    def correction(self, rows: int) -> float:
        """Observed cost / start-up cost for a step of `rows` rows (1.0 before any step)."""
        low, high, t = self._split(rows)
        return math.exp((1 - t) * self._eff[low] + t * self._eff[high])

    def cost(self, rows: int) -> float:
        """Seconds of a step of `rows` rows (each with logits) at the load served lately; never
        less than a step of fewer rows (a dip would look like free draft rows)."""
        seconds = self._memo.get(rows)
        if seconds is None:
            low, high, t = self._split(rows)
            corrected = math.exp((1 - t) * self._eff[low] + t * self._eff[high])
            seconds = max(self.base.cost(rows) * corrected, self._floor[low])
            if len(self._memo) < _MEMO:
                self._memo[rows] = seconds
        return seconds

    def observe(self, rows: int, seconds: float) -> None:
        """A decode step of `rows` rows, all with logits, took `seconds` of wall time. Samples
        that cannot be a step's time (not finite, not positive, no rows) are ignored."""
        if rows < 1 or not math.isfinite(seconds) or seconds <= 0:
            return
        base = self.base.cost(rows)
        estimate = math.log(self.correction(rows))
        bound = math.log(CLIP)
        ratio = min(estimate + bound, max(estimate - bound, math.log(seconds / base)))
        low, high, t = self._split(rows)
        shares = ((low, 1 - t), (high, t)) if low != high and t > 0 else ((low, 1.0),)
        for k, _ in shares:
            if self._weight[k] * FORGET < FRESH:  # never fed, or long forgotten
                self._log[k] = self._eff[k]
        self._weight = [w * FORGET for w in self._weight]
        # a least-squares step on the interpolated fit (not each bucket averaging the raw
        # ratios near it), so samples between two buckets do not blur the curve's shape
        residual = ratio - ((1 - t) * self._log[low] + t * self._log[high])
        for k, share in shares:
            self._weight[k] += share
            # the first samples average plainly (a fresh bucket converges at once), later
            # ones with weight ALPHA
            rate = min(1.0, share * max(ALPHA, 1.0 / self._weight[k]))
            self._log[k] += rate * residual
        self.samples += 1
        self._refresh()

    def describe(self) -> str:
        """One line for logs: the correction at each bucket's row count."""
        return ", ".join(f"{2**k} rows x{self.correction(2**k):.2f}" for k in range(BUCKETS))
