"""Which positions and prompt probes a spot check scores, and where its feed may stop (issue #16:
a check costs at most 15 % of generating the request).

A check is one prefill of prompt + output on the verifier, and that prefill is most of its cost
(tools/bench_check_cost.py), so a check that stops feeding after its last scored position costs
less. It scores the node's first `FIRST_POSITIONS` tokens (a dropped prompt prefix shows most
there) and `sample - FIRST_POSITIONS` more drawn at random inside a *window* of `WINDOW_SPAN`
consecutive positions; the verifier is sent the tokens up to the last scored one only.

Where the window lies is drawn so that no part of an answer is less likely to be checked than
another: a node that answers honestly at the start and cheaply later is still checked at its
late tokens. The window's start s is uniform over [lo - span + 1, hi - 1] (lo the first position
after the first ones, hi the answer's end) and clamped into [lo, hi - span]: every position lies
in the window with probability at least span / (hi - lo + span - 1), the ones near either end
more (the clamped starts pile up there), and the window always holds `span` positions, so every
check judges `sample` of them. On 128 tokens with the default 8 + 10 positions the feed stops
after ~77 of them on average instead of 128; the window's noise (a prefill's length picks the
CPU's kernels) is measured in tools/bench_verification.py --window.

Which of the request's prompt probes the verifier recomputes (`probe_subset`): a uniform
subset, drawn after the node answered, so the node must compute and sign every probe (it cannot
know which will be judged) while the verifier computes only the subset's rows, each an
output-layer row as dear as a scored position.

The draws use the OS's randomness (the node must not know which positions are checked).
"""

from __future__ import annotations

import random

FIRST_POSITIONS = 8  # a dropped prefix's commitments are furthest off in the first 16 or so
# The window the other positions are drawn in: twice their number, so they are not one run of
# neighbours (each position's noise is assumed independent of the others' by the statistic).
WINDOW_SPAN = 20  # spot_check.py's CHECK_POSITIONS - FIRST_POSITIONS = 10, twice


def check_positions(
    start: int, end: int, sample: int, rng: random.Random | None = None, span: int = WINDOW_SPAN
) -> tuple[tuple[int, ...], int]:
    """(the positions to score, increasing; the feed's end: one past the last of them) for a
    check of `sample` positions among the node's own positions [start, end). Every position
    (and the full feed) when there are no more than `sample`."""
    if sample < 1 or span < 1:
        raise ValueError("a check scores at least one position, in a window of at least one")
    if end - start <= sample:
        return tuple(range(start, end)), end
    rng = rng or random.SystemRandom()
    first = min(FIRST_POSITIONS, sample)
    lo = start + first
    rest = sample - first
    span = min(max(span, rest), end - lo)
    s = rng.randint(lo - span + 1, end - 1)
    window = min(max(s, lo), end - span)
    chosen = sorted(rng.sample(range(window, window + span), rest)) if rest else []
    positions = (*range(start, lo), *chosen)
    return positions, positions[-1] + 1


def probe_subset(n: int, k: int | None, rng: random.Random | None = None) -> tuple[int, ...]:
    """The indices, increasing, of *k* of a request's *n* probe draws, uniformly at random (each
    k-subset alike); all of them when *k* is None or at least *n*."""
    if k is not None and k < 1:
        raise ValueError("a check judges at least one prompt probe")
    if k is None or k >= n:
        return tuple(range(n))
    return tuple(sorted((rng or random.SystemRandom()).sample(range(n), k)))
