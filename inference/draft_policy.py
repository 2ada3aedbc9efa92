"""How many of a sequence's draft tokens to feed this step: only as many as pay.

NgramDrafter (inference/speculation.py) proposes the tokens a repeat predicts. Each one fed is
a batch row with logits: the whole step, every sequence's, gets slower by what that row costs
at the batch's current size. A row costs next to nothing while the step is memory-bound (one
stream on a GPU, or on a CPU) and nearly a full token's time once it is compute-bound (8 code
requests on 2 cores, where rejected drafts cost ~7 % of aggregate throughput). So the choice is
made per sequence and per step, from numbers rather than guesses:

- what a draft of d tokens yields: with p the chance that a draft token is right given the one
  before it was, d tokens keep p + p^2 + ... + p^d on average. p blends the sequence's recent
  outcomes (each kept token a success, each wrong guess a failure, decayed so old evidence
  fades) with a prior from the drafter's evidence, the length of the repeat it matched
  (`prior`): a long-running repeat is likely to go on, an 8-token one less so;
- what it costs: the step of b rows takes T(b) seconds (measured at start, inference/
  step_costs.py, and corrected by the steps served, inference/online_step_costs.py, so a
  full batch of long sequences is weighed at what its rows cost now) and yields P tokens
  (the batch's sequences that get a token, plus what earlier drafts this step are expected
  to keep); d more rows make it T(b + d). The step's throughput
  rises only if the expected kept tokens exceed P x (T(b + d) - T(b)) / T(b).

The policy feeds the d (among the drafter's length and a few shorter ones) with the largest
expected gain, or nothing when no d gains. Under full load with low acceptance that is nothing;
a lone stream whose text repeats keeps drafting. Greedy output is unchanged whatever it decides:
drafts are only ever kept where they are the sequence's own choice (inference/batch_sequence.py).

Sans-IO and pure arithmetic: the scheduler thread calls `begin_step` once per step, then
`choose` for each drafting sequence in order.
"""

from __future__ import annotations

from typing import Protocol

import attrs

DECAY = 0.75  # weight of past outcomes per drafted step: the last few steps dominate
PRIOR_WEIGHT = 2.0  # the prior counts as this many observed draft tokens
# A match of m tokens: prior acceptance m / (m + PRIOR_SCALE). The drafter already demands 8
# matching tokens (speculation.MIN_MATCH); past that its guesses were mostly right on the
# default model (without the policy: 109 of 109 on the yardstick's list, 66 of 66 on a story,
# 501 of 524 with 8 mixed requests; 0 of 4 on code), so 8 tokens earn 0.89, 16 earn 0.94.
PRIOR_SCALE = 1.0
_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)  # draft lengths weighed besides the proposed one


class CostCurve(Protocol):
    """Seconds of a decode step by its rows: StepCosts, or OnlineStepCosts over one."""

    def cost(self, rows: int) -> float: ...


@attrs.define
class DraftStats:
    """One sequence's recent draft outcomes, as decayed counts of per-token trials."""

    kept: float = 0.0  # draft tokens kept (each a right guess after a right one)
    missed: float = 0.0  # wrong guesses (at most one per step: the first wrong one)

    def observe(self, kept: int, wrong: bool) -> None:
        """A step that fed drafts: `kept` were kept; `wrong` when one was then rejected (not
        when the sequence finished before reaching it)."""
        self.kept = self.kept * DECAY + kept
        self.missed = self.missed * DECAY + (1.0 if wrong else 0.0)


def prior(match_length: int) -> float:
    """Chance a draft token is right from the drafter's evidence alone: the repeat's length."""
    m = max(0, match_length)
    return m / (m + PRIOR_SCALE)


def acceptance(stats: DraftStats, match_length: int) -> float:
    """p: the sequence's recent outcomes blended with the evidence's prior."""
    trials = stats.kept + stats.missed + PRIOR_WEIGHT
    return min(0.999, (stats.kept + PRIOR_WEIGHT * prior(match_length)) / trials)


def expected_kept(p: float, d: int) -> float:
    """p + p^2 + ... + p^d: the tokens a draft of d keeps on average."""
    if d <= 0 or p <= 0:
        return 0.0
    return d if p >= 1 else p * (1 - p**d) / (1 - p)


class DraftPolicy:
    """Decides draft lengths against measured step costs; one per worker, scheduler thread
    only. Without costs (none measured) every proposed draft is fed, as before the policy."""

    def __init__(self, costs: CostCurve | None) -> None:
        self.costs = costs
        self._rows = 0
        self._producing = 0.0
        self._base = 0.0

    def begin_step(self, rows: int, producing: int) -> None:
        """A step now holds `rows` rows, of which `producing` yield a token."""
        self._rows = max(1, rows)
        self._producing = float(max(1, producing))
        self._base = self.costs.cost(self._rows) if self.costs is not None else 0.0

    def choose(self, proposed: int, match_length: int, stats: DraftStats) -> int:
        """How many of the `proposed` draft tokens to feed (0 to proposed)."""
        if proposed <= 0 or self.costs is None:
            return max(0, proposed)
        p = acceptance(stats, match_length)
        per_second = self._producing / self._base  # what the step's time is worth
        best, best_gain, best_kept = 0, 0.0, 0.0
        for d in (*(c for c in _CANDIDATES if c < proposed), proposed):
            kept = expected_kept(p, d)
            extra = self.costs.cost(self._rows + d) - self._base
            gain = kept - per_second * extra
            if gain > best_gain:
                best, best_gain, best_kept = d, gain, kept
        if best:  # the next sequence weighs its drafts against this bigger, richer step
            self._rows += best
            self._producing += best_kept
            self._base = self.costs.cost(self._rows)
        return best
