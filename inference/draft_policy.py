"""How many of a sequence's draft tokens to feed this step: only as many as pay.

NgramDrafter (inference/speculation.py) proposes the tokens a repeat predicts. Each one fed is
a batch row with logits: the whole step, every sequence's, gets slower by what that row costs
at the batch's current size. A row costs next to nothing while the step is memory-bound (one
stream on a GPU, or on a CPU) and nearly a full token's time once it is compute-bound (8 code
requests on 2 cores). So the choice is
made per sequence and per step, from numbers rather than guesses:

- what a draft of d tokens yields: with p the chance that a draft token is right given the one
  before it was, d tokens keep p + p^2 + ... + p^d on average. p blends the sequence's recent
  outcomes (each kept token a success, each wrong guess a failure, decayed so old evidence
  fades) with a prior from the drafter's evidence, the length of the repeat it matched
  (`prior`): a long-running repeat is likely to go on, an 8-token one less so;
- what it costs: the step of b rows takes T(b) seconds (measured at start, inference/
  step_costs.py, and corrected by the steps served, inference/online_step_costs.py, so a
  full batch of long sequences is weighed at what its rows cost now); d more rows make it
  T(b + d);
- what a kept token is worth: the step time it saves. Its share of the step, T(b) / P (P the
  step's tokens: the batch's sequences that get one, plus what earlier drafts this step are
  expected to keep), when finishing sooner brings the batch's end sooner or gives a waiting
  request the slot sooner. But a sequence already ahead of the batch's longest, with nobody
  waiting, saves only its own row in steps the batch runs anyway for the others: T(b) -
  T(b - 1), once it is AHEAD tokens ahead (nearer, it may still end last: the worth goes
  linearly from the share to the row; how far each has to go is counted in max_tokens, the
  only bound known before a request stops). In a burst of 8 streams started together
  (tools/bench_real_prompts.py) the wall time is that of the streams that repeat least:
  on code, weighed without this rule, 284 drafts went in at x8 (231 kept), all 128 steps
  still ran for the streams that never repeat, and the batch's end came no sooner
  (modelled: docs/benchmarks.md, "What a kept draft is worth in a burst").

The policy feeds the d (among the drafter's length and a few shorter ones) with the largest
expected gain, kept x worth - (1 + MARGIN) x (T(b + d) - T(b)), or nothing when no d gains.
Under full load with low acceptance that is nothing; a lone stream whose text repeats keeps
drafting. Greedy output is unchanged whatever it decides: drafts are only ever kept where they
are the sequence's own choice (inference/batch_sequence.py).

Two guards keep a loaded batch from paying for optimism:

- the margin, for what the curve does not see (a rejected draft's cells removed, a batch of
  another shape each step, the curve's own error between the rows it was fitted at), in
  proportion to the other sequences' share of the step (none for a lone stream, whose drafts
  risk only its own time): where rows are nearly free (a GPU) it is a margin of nearly
  nothing, where each costs nearly a token's share (8 streams on 2 cores: a perfect draft
  gains ~7 % at best) only confident drafts go in. llama.cpp's draft-free `ngram-mod` is
  more careful still (it drafts only after a 24-token match, and then at least 48 tokens or
  none); a more modest prior here (0.8 for an 8-token match) changed nothing at x1 and cost
  4 x code a little more of its modelled gain, so the measured prior stays;
- declined drafts still teach (`DraftStats.watch` / `settle`): when the policy feeds nothing,
  the sequence remembers what the drafter proposed and, as its own tokens come, counts how many
  of them the draft would have kept: the same outcome a fed draft gives, at no cost. So a
  sequence whose guesses failed drafts nothing while they would go on failing, and drafts again
  once its text goes the way the drafter predicts, with no rows spent on probes.

Every choice is logged at debug level (rows, proposal, match, p, fed), and `offered`, `fed` and
`declined` count them since start.

Sans-IO and pure arithmetic: the scheduler thread calls `begin_step` once per step, then
`choose` for each drafting sequence in order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import attrs

log = logging.getLogger(__name__)

DECAY = 0.75  # weight of past outcomes per drafted step: the last few steps dominate
PRIOR_WEIGHT = 2.0  # the prior counts as this many observed draft tokens
# A match of m tokens: prior acceptance m / (m + PRIOR_SCALE). The drafter already demands 8
# matching tokens (speculation.MIN_MATCH); past that its guesses were mostly right on the
# default model (without the policy: 109 of 109 on the yardstick's list, 66 of 66 on a story,
# 501 of 524 with 8 mixed requests; 0 of 4 on code; 318 of 365 on 8 code requests), so 8
# tokens earn 0.89, 16 earn 0.94; the sequence's own outcomes (fed or watched) soon say more.
PRIOR_SCALE = 1.0
# Expected kept tokens must beat the rows' cost by this fraction of it (see the docstring).
MARGIN = 0.25
# A sequence this many tokens ahead of the batch's longest is taken not to end last (see the
# docstring); nearer, a kept token's worth goes from the step's share down to its row's cost.
AHEAD = 16
SHADOW_MAX = 8  # tokens of a declined draft checked against what the sequence then generates
_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)  # draft lengths weighed besides the proposed one


class CostCurve(Protocol):
    """Seconds of a decode step by its rows: StepCosts, or OnlineStepCosts over one."""

    def cost(self, rows: int) -> float: ...


@attrs.define
class DraftStats:
    """One sequence's recent draft outcomes, as decayed counts of per-token trials, and the
    draft it declined last, still being checked against the tokens that follow."""

    kept: float = 0.0  # draft tokens kept (each a right guess after a right one)
    missed: float = 0.0  # wrong guesses (at most one per step: the first wrong one)
    shadow: list[int] = attrs.field(factory=list)  # a declined draft's tokens
    shadow_at: int = 0  # the index among the generated tokens its first token would have
    watched: int = 0  # declined drafts settled (for logs and tests)

    def observe(self, kept: int, wrong: bool) -> None:
        """A step that fed drafts: `kept` were kept; `wrong` when one was then rejected (not
        when the sequence finished before reaching it)."""
        self.kept = self.kept * DECAY + kept
        self.missed = self.missed * DECAY + (1.0 if wrong else 0.0)

    def watch(self, draft: Sequence[int], at: int) -> None:
        """The policy fed none of `draft`, whose first token would be generated token `at`:
        check it against the tokens that come (one declined draft at a time)."""
        if draft and not self.shadow:
            self.shadow = list(draft[:SHADOW_MAX])
            self.shadow_at = at

    def settle(self, generated: Sequence[int]) -> None:
        """Compare the declined draft with the sequence's generated tokens so far; once they
        decide it (a token differs, or all of it came), observe what feeding it would have
        kept, as if it had been fed."""
        shadow = self.shadow
        if not shadow:
            return
        came = generated[self.shadow_at : self.shadow_at + len(shadow)]
        kept = 0
        for token, guess in zip(came, shadow, strict=False):
            if token != guess:
                break
            kept += 1
        if kept < len(came) or len(came) == len(shadow):
            self.observe(kept, wrong=kept < len(came))
            self.shadow = []
            self.watched += 1


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

    def __init__(self, costs: CostCurve | None, margin: float = MARGIN) -> None:
        self.costs = costs
        self.margin = margin
        self._rows = 0
        self._producing = 0.0
        self._base = 0.0
        self._longest = 0
        self._waiting = False
        self._row_cost = 0.0
        self._margin = 0.0
        self._debug = False
        # what it was offered and what it fed, since start (logs, benchmarks, tests)
        self.offered = 0  # draft tokens proposed
        self.fed = 0  # of them fed
        self.declined = 0  # proposals of which nothing was fed

    def begin_step(
        self, rows: int, producing: int, longest: int = 0, waiting: bool = False
    ) -> None:
        """A step now holds `rows` rows, of which `producing` yield a token; `longest` is the
        most tokens any of its sequences still has to generate (0: not known), `waiting` whether
        requests wait for a slot."""
        self._rows = max(1, rows)
        self._producing = float(max(1, producing))
        # the margin guards the other sequences' time: a lone stream risks only its own
        self._margin = self.margin * (1.0 - 1.0 / self._producing)
        self._base = self.costs.cost(self._rows) if self.costs is not None else 0.0
        self._longest = longest
        self._waiting = waiting
        # what one decode row adds to a step of this size: what a sequence that finishes
        # sooner saves the steps the batch runs anyway
        row = self._base - self.costs.cost(self._rows - 1) if self.costs is not None else 0.0
        self._row_cost = max(0.0, row)
        self._debug = log.isEnabledFor(logging.DEBUG)  # once a step, not once a choice

    def choose(
        self, proposed: int, match_length: int, stats: DraftStats, remaining: int = 0
    ) -> int:
        """How many of the `proposed` draft tokens to feed (0 to proposed), for a sequence
        with `remaining` tokens still to generate (0: not known)."""
        if proposed <= 0 or self.costs is None:
            return max(0, proposed)
        p = acceptance(stats, match_length)
        # the seconds a kept token saves: its share of the step, as the batch finishes sooner
        # (or a waiting request gets the slot sooner); but a sequence ahead of the batch's
        # longest, with nobody waiting, only frees its own row in steps that run anyway
        value = self._base / self._producing
        if not self._waiting and 0 < remaining < self._longest:
            # the further ahead, the less likely it ends last: from its share to its row
            row = min(value, self._row_cost)
            value = row + (value - row) * max(0.0, 1.0 - (self._longest - remaining) / AHEAD)
        best, best_gain, best_kept = 0, 0.0, 0.0
        for d in (*(c for c in _CANDIDATES if c < proposed), proposed):
            kept = expected_kept(p, d)
            extra = self.costs.cost(self._rows + d) - self._base
            gain = kept * value - (1.0 + self._margin) * extra
            if gain > best_gain:
                best, best_gain, best_kept = d, gain, kept
        self.offered += proposed
        self.fed += best
        self.declined += best == 0
        if self._debug:
            log.debug(
                "draft: %d rows, %d proposed (match %d), p %.2f (kept %.1f, missed %.1f): fed %d",
                self._rows,
                proposed,
                match_length,
                p,
                stats.kept,
                stats.missed,
                best,
            )
        if best:  # the next sequence weighs its drafts against this bigger, richer step
            self._rows += best
            self._producing += best_kept
            self._base = self.costs.cost(self._rows)
        return best
