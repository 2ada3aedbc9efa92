"""The spot check's statistic: is a run's output consistent with the model that scored it?

Pure (math only). Input: the verifier's `PositionScore`s of the run's tokens (inference/
scoring.py); output: a `CheckStat` with a verdict.

The evidence is the choice margin: how far each claimed token is from what the request's own
sampler chain, with its seed (inference/replayable_draw.py), picks on the verifier's logits.
An honest run's tokens are each its own chain's pick, so they are the verifier's picks up to
the numerical noise between two runs of the model (batch shape, threads, speculation, prompt
cache, prefill against one-token decodes, CPU against GPU): a near-tie broken the other way, or
a token at the edge of top-p / min-p / top-k kept by one side and filtered out by the other
(margin +inf). No cascade: the verifier teacher-forces the claimed tokens, so one differing
token does not shift the later positions. Another model, a coarser quantization, random tokens
or a shortened prompt give tokens that the chain would not have picked, at many positions.

So a position is a *mismatch* when its choice margin exceeds MISMATCH_MARGIN (in logits), and
the verdict is a one-sided binomial test: "inconsistent" when an honest run, mismatching at
each position with probability at most HONEST_RATE (greedy or sampled), would show this many
mismatches in n positions with probability below ALPHA; "inconclusive" under MIN_POSITIONS
positions (or when the run cannot be replayed: a sampled run without its seed, NaN margins).

Calibration (tools/bench_verification.py --max-tokens 96 --prompts 12 --raw FILE: the default
model Gemma 3 270M Q4_K_M on 2 shared CPU cores; 12 prompts (code, prose, chat) each greedy and
at temperature 0.8 with a seed, 96 tokens; honest nodes on 1 and 2 threads, 4 slots with 4
requests together, speculation on, the prompt cache on: 120 honest requests, ~10,600
positions; the verifier on 2 threads, 1 slot, no cache or speculation). Positions with a
choice margin above 1.0:

- honest greedy 0 of 5,388 (the largest finite margin 0.9; above 0.5 at most 4 of 1,080);
  honest sampled 0.36-0.77 % per configuration (at most 2 in one request), nearly all +inf
  (a filter's edge);
- cheats, greedy / sampled: the tiny test model 52 % / 97 %, random tokens (temperature 10,
  no filters) 100 % / 100 %, Q2_K requantization 6.5 % / 20.5 %, Q3_K_M 3.2 % / 9.9 %, the
  prompt's first half dropped 2.7 % / 7.5 %.

HONEST_RATE is 0.5 % greedy (about 9× the 95 % upper bound of the 0 measured) and 1 % sampled
(1.3× the highest configuration measured: at 0.77 % an honest request of 96 tokens is called
inconsistent with probability 7e-8). ALPHA = 1e-6 per request. An inconsistent verdict then
needs 7 mismatches of 96 greedy, 9 sampled (8 / 10 of 128; 5 / 6 of 32). With these values, on
the same data: 0 false verdicts of 120 honest requests (1 inconclusive: 14 tokens); detection
per request, greedy / sampled: tiny model 100 % / 100 %, random tokens 100 % / 100 %, Q2_K
33 % / 100 %, Q3_K_M 8 % / 58 %, dropped prefix 0 % / 42 %. Greedy output of a close
quantization, or of a prompt whose dropped half hardly changes the answer, mostly *is* the
model's choice; those cheats are caught over many checks (reputation), not in one.

Logprob commitments (crypto/receipts.py): a node may sign its own log-probability of each token
it generated. A position is then also a mismatch when that commitment is more than
LOGPROB_TOLERANCE nats from the verifier's (the same counts, the same binomial test and ledger).
Calibration (tools/bench_verification.py --max-tokens 128 --prompts 6, 2026-12-01, same setup
as above; 60 honest requests, ~7,300 committed positions): honest |delta| median 0.002-0.013,
p99 0.20-0.46, largest 0.76 (1 and 2 threads alike; prefill against one-token decodes is most
of it), none above 1.0, so the honest mismatch rates above are unchanged; at 0.5 it would be
0.9 % of honest greedy positions (speculation, 1-2 threads), over the 0.5 % allowed. Cheats'
positions above 1.0 nats, greedy / sampled: Q3_K_M 2.6 % / 8.6 %, dropped prefix 2.6 % / 5.1 %,
made-up values (uniform in [-5, 0]) 74 % / 72 %, random tokens 0 % (their margins catch them).

The commitments' own test (inference/commitment_stat.py): each committed position's delta,
normalized by the honest noise expected at the token's probability, scored in [0, 1] and summed;
"inconsistent" when the sum's Chernoff bound under an honest mean score `HONEST_MEAN` is below
alpha.

Prompt probes (inference/prompt_probes.py, inference/probe_stat.py): the node's signed
log-probabilities at prompt positions the client's draws named, against the verifier's prefill;
they show whether the node computed the whole prompt, which the output's tests see only where
the answer depends on it. Inconsistent probes make the request inconsistent whatever its output
(few tokens included); missing probes (an older node, or one that omits them) change no verdict
but are said (`CheckStat.probes.status`), and p2p/client/spot_check.py gives no credit for them.

`judge` runs the tests the receipt gives data for (the margins always; the commitments, the
probes when present) at ALPHA / k each for k tests: a union bound keeps the request's
false-verdict probability at ALPHA.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import attrs

from inference import commitment_stat
from inference.probe_stat import ProbeStat, judge_probes
from inference.scoring import PositionScore

VERDICTS = ("consistent", "inconsistent", "inconclusive")
# A choice margin above this many logits is a mismatch: honest noise stayed under 1.0 on the
# default model except at filter edges (+inf). Scale it with the model's logit range: the tiny
# random test model's logits span ~2, a trained model's ~20 or more.
MISMATCH_MARGIN = 1.0
# Mismatches per position an honest run may show (see the module docstring).
HONEST_RATE_GREEDY = 0.005
HONEST_RATE_SAMPLED = 0.01
# The probability, per checked request, that an honest run is called inconsistent.
ALPHA = 1e-6
# Fewer judged positions say nothing either way.
MIN_POSITIONS = 16
# A committed log-probability (crypto/receipts.py) further than this many nats from the
# verifier's own is a mismatch too (see the module docstring's calibration: honest at most 0.76).
LOGPROB_TOLERANCE = 1.0
# Commitments are int16 in 1/1024 nats down to -32 (crypto/receipts.py); the verifier's value is
# clamped alike, and the quantization step is well inside the tolerance.
_MIN_COMMITTED = -32.0


@attrs.frozen
class CheckStat:
    n: int  # positions judged
    mismatches: int  # positions whose token the verifier's sampler would not have picked
    score: float  # mismatches / n (0.0 when n is 0)
    verdict: str  # "consistent" | "inconsistent" | "inconclusive"
    threshold: int = 0  # mismatches from which n positions are inconsistent
    # The commitments' test (inference/commitment_stat.py): positions with a commitment, the sum
    # of their scores, and the sum from which they are inconsistent (0.0: no commitments).
    committed_n: int = 0
    committed_score: float = 0.0
    committed_threshold: float = 0.0
    # The prompt probes' test (inference/probe_stat.py); status "none" when none were asked.
    probes: ProbeStat = attrs.field(factory=lambda: ProbeStat("none"))


@functools.lru_cache(maxsize=4096)
def mismatch_threshold(n: int, rate: float, alpha: float = ALPHA) -> int:
    """The least k with P(Binomial(n, rate) >= k) < alpha (n + 1 when none is)."""
    if n <= 0:
        return 1
    # Sum the upper tail from k = n down, in log space (n is at most MAX_SCORE_TOKENS).
    log_rate, log_rest = math.log(rate), math.log1p(-rate)
    tail = 0.0
    for k in range(n, -1, -1):
        log_term = (
            math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * log_rate + (n - k) * log_rest
        )  # fmt: skip
        tail += math.exp(log_term)
        if tail >= alpha:
            return k + 1
    return 0


def off_commitment(position: PositionScore, committed: float | None, tolerance: float) -> bool:
    """Whether the node's committed log-probability of this token is not the verifier's."""
    if committed is None or math.isnan(position.logprob):
        return False
    mine = max(_MIN_COMMITTED, position.logprob)
    return not abs(mine - committed) <= tolerance


def judge(
    positions: Sequence[PositionScore],
    *,
    sampled: bool,
    mismatch_margin: float = MISMATCH_MARGIN,
    committed: Sequence[float | None] | None = None,
    logprob_tolerance: float = LOGPROB_TOLERANCE,
    probes: Sequence[float | None] = (),
    verifier_probes: Sequence[float] = (),
) -> CheckStat:
    """The verdict on one checked run from the verifier's scores of its tokens (see the module
    docstring); `sampled`: the run's temperature was above 0. `committed`: the node's signed
    log-probability of each of these positions' tokens (None where it committed none; no
    sequence: the node commits nothing). A position is a mismatch when its choice margin or its
    commitment is off; a position without a replayable margin counts when it has a commitment.
    `probes`: the node's signed prompt-probe values (receipt order, () if none), against the
    verifier's `verifier_probes` (one per draw of the request)."""
    if committed is None:
        committed = [None] * len(positions)
    n = mismatches = 0
    for p, c in zip(positions, committed, strict=True):
        if math.isnan(p.choice_margin) and c is None:
            continue
        n += 1
        mismatches += p.choice_margin > mismatch_margin or off_commitment(p, c, logprob_tolerance)
    scores = commitment_stat.scores([p.logprob for p in positions], committed)
    # k tests on one request: each at ALPHA / k (a union bound). Which ones run depends on what
    # the receipt and the request carry, never on the values.
    has_probes = bool(verifier_probes) and bool(probes)
    alpha = ALPHA / (1 + bool(scores) + has_probes)
    probe_stat = judge_probes(probes, verifier_probes, alpha)
    score = mismatches / n if n else 0.0
    rate = HONEST_RATE_SAMPLED if sampled else HONEST_RATE_GREEDY
    threshold = mismatch_threshold(n, rate, alpha)
    committed_score = math.fsum(scores)
    committed_threshold = commitment_stat.score_threshold(len(scores), alpha) if scores else 0.0
    if probe_stat.status == "inconsistent":  # the prompt was not computed: whatever the output
        verdict = "inconsistent"
    elif n < MIN_POSITIONS:
        verdict = "inconclusive"
    elif mismatches >= threshold or (scores and committed_score >= committed_threshold):
        verdict = "inconsistent"
    else:
        verdict = "consistent"
    return CheckStat(
        n=n,
        mismatches=mismatches,
        score=score,
        verdict=verdict,
        threshold=threshold,
        committed_n=len(scores),
        committed_score=committed_score,
        committed_threshold=committed_threshold,
        probes=probe_stat,
    )
