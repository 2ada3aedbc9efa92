"""The logprob commitments' statistic: how far, beyond honest noise, a node's signed
log-probabilities (crypto/receipts.py) are from the verifier's own.

Pure (math only); inference/verification.py `judge` combines it with the choice margins, and
p2p/client/check_ledger.py sums it over a node's checked requests.

Why a second statistic: a 1-nat tolerance per position (verification.py `LOGPROB_TOLERANCE`)
uses almost none of the commitments' evidence. Another quantization or a shortened prompt moves
nearly every committed logprob by a little, honest noise moves them by very little — and by how
much depends on the token's probability. Measured (tools/bench_verification.py --raw, 128
tokens, 6 prompts each greedy and sampled, 2026-12-01; the default model on 2 CPU cores; the
verifier a 1-slot prefill, the nodes one-token decodes, batches of 4, speculation, the prompt
cache): the delta d = committed - verifier scales like 1 - p (p the verifier's probability of
the token), as a perturbation of the logits does: its 90th percentile is ~0.25 (1 - p) from
p = 0.995 down to p = 0.05, for honest nodes, and 1.2-5 (1 - p) for Q3_K_M.

So each committed position gets a *normalized delta* z = |d| / (1 - p + `SCALE_FLOOR`) (the
floor covers the commitments' 1/1024-nat rounding where p is ~1) and a bounded *score*
g = clip((z - `Z_FROM`) / (`Z_FULL` - `Z_FROM`), 0, 1): 0 inside the honest bulk, 1 far outside.
The verifier's own p sets the scale, so the node cannot widen it.

The test: a request is inconsistent when the sum S of its n scores makes

    P_honest(S >= s) <= exp(-n KL(s/n || mu0)) < alpha

(Chernoff's bound for independent variables in [0, 1] whose means are at most mu0; each has a
moment-generating function at most a Bernoulli(mu0)'s, by convexity). mu0 = `HONEST_MEAN`,
chosen well above what honest requests showed (below): the bound holds for any honest noise
with at most that mean score per position, whatever its shape or tails, so what the data must
support is one mean per request — not a 1e-6 tail, which ~7,000 positions cannot show.
The assumption left: positions are independent given the request (each position's mean given
the earlier ones at most mu0); a request whose honest noise is unusually large (the measured
per-request means spread 5x) is what mu0's margin is for.

Calibration (the data above plus 48 honest requests on six other prompts: 108 honest requests,
12,691 committed positions; per request, the mean score over all its positions): honest
0.000-0.054 (median 0.007 greedy, 0.010 sampled; the first 16 positions are noisier, up to
0.077); Q3_K_M 0.33-0.55; the prompt's first half dropped 0.11-0.30 (0.65-0.74 over the first
16); random tokens 0.01-0.05 (their margins catch them); made-up commitments 0.83-0.99.
mu0 = 0.09 is 1.7x the highest honest request. docs/benchmarks.md has the detection this gives
per 32-position check and in the ledger, and the plot of the per-check means.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

# z's scale: 1 - p plus this (nats; a commitment is rounded to 1/1024 nats).
SCALE_FLOOR = 0.01
# z below Z_FROM scores 0 (the honest bulk: median 0.05, p90 0.2, p99 0.4); from Z_FULL, 1.
Z_FROM = 0.2
Z_FULL = 1.0
# The mean score per position an honest node may have (see the module docstring).
HONEST_MEAN = 0.09
# Committed logprobs below this read as it (crypto/receipts.py's int16 range).
MIN_LOGPROB = -32.0


def position_score(verifier_logprob: float, committed: float | None) -> float | None:
    """One position's score in [0, 1], or None when it has no commitment or no logprob."""
    if committed is None or math.isnan(verifier_logprob) or math.isnan(committed):
        return None
    mine = min(0.0, max(MIN_LOGPROB, verifier_logprob))
    theirs = min(0.0, max(MIN_LOGPROB, committed))
    z = abs(theirs - mine) / (1.0 - math.exp(mine) + SCALE_FLOOR)
    return min(1.0, max(0.0, (z - Z_FROM) / (Z_FULL - Z_FROM)))


def scores(logprobs: Sequence[float], committed: Sequence[float | None]) -> list[float]:
    """The scores of the positions that have both a commitment and a verifier's logprob."""
    out = []
    for lp, c in zip(logprobs, committed, strict=True):
        g = position_score(lp, c)
        if g is not None:
            out.append(g)
    return out


def _kl(x: float, mu: float) -> float:
    """KL(Bernoulli(x) || Bernoulli(mu)), for 0 < mu < 1 and 0 <= x <= 1."""
    out = 0.0
    if x > 0.0:
        out += x * math.log(x / mu)
    if x < 1.0:
        out += (1.0 - x) * math.log((1.0 - x) / (1.0 - mu))
    return out


def tail_bound(n: int, total: float, mu0: float = HONEST_MEAN) -> float:
    """An upper bound on P(S >= total) for n honest positions (1.0 at or below the mean)."""
    if n <= 0 or total <= n * mu0:
        return 1.0
    return math.exp(-n * _kl(min(1.0, total / n), mu0))


@functools.lru_cache(maxsize=4096)
def score_threshold(n: int, alpha: float, mu0: float = HONEST_MEAN) -> float:
    """The least total score of n positions whose `tail_bound` is below alpha (n + 1 when even
    n is not: too few positions to conclude at alpha)."""
    if n <= 0 or n * math.log(1.0 / mu0) <= math.log(1.0 / alpha):
        return float(n + 1)
    lo, hi = mu0, 1.0  # n KL(x || mu0) grows from 0 to n ln(1/mu0) over [mu0, 1]
    for _ in range(60):
        mid = (lo + hi) / 2
        if n * _kl(mid, mu0) > math.log(1.0 / alpha):
            hi = mid
        else:
            lo = mid
    return hi * n


def llr(n: int, total: float, mu0: float, mu1: float) -> float:
    """The log e-value of n scores summing to *total*, honest mean mu0 against a cheat's mu1:
    total ln(mu1/mu0) + (n - total) ln((1 - mu1)/(1 - mu0)). exp of it has mean <= 1 for any
    honest scores in [0, 1] of mean <= mu0 (convexity), so check_ledger.py may sum it."""
    if n <= 0:
        return 0.0
    return total * math.log(mu1 / mu0) + (n - total) * math.log((1 - mu1) / (1 - mu0))
