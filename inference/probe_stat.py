"""The prompt probes' statistic: are a node's signed probe values the verifier's, up to noise?

Pure (math only); inference/verification.py `judge` combines it with the output's tests.
A probe (inference/prompt_probes.py) is the log-probability of a prompt token given every prompt
token before it; the node signs its value in the receipt, the verifier's scoring prefill gives
the true one (inference/probe_scoring.py). A node that did not compute the part of the prompt
before a probe cannot know its value: it makes one up, or computes it on the context it kept.

The test. Per probe, the delta d = node - verifier (both clamped to the receipts' range
[-32, 0]); under honest noise, each |d| / `NOISE_SCALE` is assumed to be stochastically below
an Exp(1) variable, independently of the other probes of the request: P(|d| > x) <= e^(-x/b),
b = `NOISE_SCALE` = 0.3 nats. Then the sum S of the m probes' |d| / b is below a Gamma(m, 1)
variable, and P_honest(S >= s) <= P(Poisson(s) <= m - 1) exactly; the request is inconsistent
when that is below its alpha share (ALPHA / 3 in `judge` beside margins and commitments: at
most 3.3e-7). For 8 probes that is a sum of |d| from 9.2 nats (4.5 for one probe, 13.3 for 16).
A value the node did not give (None) counts as `MAX_DELTA` off.

Calibration (2026-12-01, the default model on 2 shared CPU cores; docs/benchmarks.md has the
tables). The real node path, tools/bench_probes.py (12 prompts, each also behind another
prompt's text, greedy and sampled; the verifier a 1-slot scoring prefill on 2 threads): honest
|d| on 1 or 2 threads median 0.0003, p99 0.07, largest 0.12 (1 and 2 threads bitwise alike);
4 requests admitted together (their prompts in one batch) median 0.06, p99 0.38, largest 0.47
— an exponential of scale ~0.09. tools/measure_probe_noise.py (every position of a prompt, the
node feeding its prompt in chunks of 32 or 48 beside other sequences' rows): median 0.07,
largest 0.82 of 70 — scale >= 0.19 if exponential. b = 0.3 is 1.6x that worst case and 3.3x
the bench's batched one; what it does not cover: an honest stack far noisier than measured
(a GPU node against a CPU verifier was not measured here), which would then be called
inconsistent — the ledger's exclusion still needs two verifiers. Cheats (the measurement):
values after a dropped prefix's cut, computed without the prefix, median |d| 0.5, ~30 % above
1 nat; an 8-token window's values median 0.5; made-up values (uniform in [-12, 0]) median 4.4.

Missing probes. A request with draws whose receipt carries no probe values is "missing": an
older node (it ignores the field) or one that omits them; neither proves it computed the prompt,
so the check does not count as verified work (p2p/client/spot_check.py), but it is not evidence
either. A receipt with values, but not one per draw, is "inconsistent": no honest node signs it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import attrs

# b of the assumed honest tail P(|d| > x) <= exp(-x / b) (see the module docstring).
NOISE_SCALE = 0.3
# A receipt's probe values are int16 in 1/1024 nats (crypto/receipts.py): from -32 to 0.
MIN_VALUE = -32.0
# A missing value (None) is this far off: the whole range.
MAX_DELTA = 32.0
# A probe this far off is shown as "off" (for people; the test uses the sum).
SHOWN_OFF = 1.0
STATUSES = ("none", "missing", "consistent", "inconsistent")


@attrs.frozen
class ProbeStat:
    status: str  # one of STATUSES; "none": the verifier had no probe to compute
    asked: int = 0  # probes the verifier computed (one per draw)
    given: int = 0  # values the node signed
    off: int = 0  # probes off by more than SHOWN_OFF nats
    total: float = 0.0  # the sum of |d| / NOISE_SCALE
    threshold: float = 0.0  # the sum from which the probes are inconsistent
    largest: float = 0.0  # the largest |d| (nats)

    def evidence(self) -> tuple[int, float]:
        """What these probes give a ledger (p2p/client/check_ledger.py): (probes judged, the sum
        of their normalized deltas); (0, 0.0) without values, or with a count that differs
        (the check is inconsistent by itself then)."""
        if self.status not in ("consistent", "inconsistent") or self.given != self.asked:
            return 0, 0.0
        return self.asked, self.total

    def clause(self, *, detailed: bool = False) -> str:
        """What the probes showed, as a clause a verdict's reason ends with ("" for none);
        *detailed* adds the sum and its threshold (`gpunet verify`)."""
        if self.status == "missing":
            return (
                f"; the receipt has no values for the request's {self.asked} prompt probes "
                "(not counted as verified work)"
            )
        if self.status == "inconsistent" and self.given != self.asked:
            return f"; the receipt has {self.given} prompt probe values for {self.asked} draws"
        if self.status not in ("consistent", "inconsistent"):
            return ""
        sums = f"; sum {self.total:.1f}, inconsistent from {self.threshold:.1f}" if detailed else ""
        return (
            f"; prompt probes {self.status} ({self.off}/{self.asked} off by over 1 nat, "
            f"largest {self.largest:.2f}{sums})"
        )


def _clamp(v: float) -> float:
    return min(0.0, max(MIN_VALUE, v))


def delta(node: float | None, verifier: float) -> float:
    """|node - verifier| in nats, both clamped to the receipts' range; MAX_DELTA for None/NaN."""
    if node is None or math.isnan(node) or math.isnan(verifier):
        return MAX_DELTA
    return abs(_clamp(node) - _clamp(verifier))


def gamma_tail(m: int, s: float) -> float:
    """P(Gamma(m, 1) >= s) = P(Poisson(s) <= m - 1)."""
    if s <= 0.0:
        return 1.0
    log_s = math.log(s)
    return math.fsum(math.exp(-s + j * log_s - math.lgamma(j + 1)) for j in range(m))


@functools.lru_cache(maxsize=64)
def sum_threshold(m: int, alpha: float) -> float:
    """The least sum of m normalized deltas whose `gamma_tail` is below alpha."""
    lo, hi = 0.0, 1.0
    while gamma_tail(m, hi) >= alpha:
        hi *= 2.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if gamma_tail(m, mid) < alpha:
            hi = mid
        else:
            lo = mid
    return hi


def judge_probes(
    node: Sequence[float | None], verifier: Sequence[float], alpha: float
) -> ProbeStat:
    """The probes' status from the node's signed values and the verifier's, per draw in order
    (see the module docstring); *alpha*: this test's share of the request's false-verdict
    budget."""
    asked, given = len(verifier), len(node)
    if not asked:
        return ProbeStat("none", given=given)
    if not given:
        return ProbeStat("missing", asked=asked)
    threshold = sum_threshold(asked, alpha)
    if given != asked:
        return ProbeStat("inconsistent", asked, given, threshold=threshold)
    deltas = [delta(n, v) for n, v in zip(node, verifier, strict=True)]
    total = math.fsum(deltas) / NOISE_SCALE
    return ProbeStat(
        "inconsistent" if total >= threshold else "consistent",
        asked,
        given,
        off=sum(d > SHOWN_OFF for d in deltas),
        total=total,
        threshold=threshold,
        largest=max(deltas),
    )


def probe_llr(stat: ProbeStat, cheat_scale: float = 5.0) -> float:
    """The log e-value of consistent/inconsistent probes for a ledger: honest Exp(1) against a
    cheat's Exp(mean *cheat_scale*) per normalized delta, sum of x (1 - 1/theta) - ln theta; its
    exp has mean <= 1 under the honest assumption (the ratio grows with x). 0 without values."""
    return sum_llr(*stat.evidence(), cheat_scale)


def sum_llr(m: int, total: float, cheat_scale: float) -> float:
    """`probe_llr` from its counts: m probes whose normalized deltas sum to *total*.

    Per probe the likelihood ratio of Exp(mean theta) to Exp(1) at x is e^(x (1 - 1/theta)) /
    theta, increasing in x; under Exp(1) its mean is exactly 1, so under any honest delta below
    Exp(1) (the module's assumption) it is <= 1, and the product over independent probes too.
    *total* is clamped to [0, m * MAX_DELTA / NOISE_SCALE] (the most a judged request can sum),
    which only lowers the ratio."""
    if m <= 0 or not math.isfinite(total) or cheat_scale <= 1.0:
        return 0.0
    total = min(max(total, 0.0), m * MAX_DELTA / NOISE_SCALE)
    return total * (1.0 - 1.0 / cheat_scale) - m * math.log(cheat_scale)
