"""Spot checks summed across requests: one sequential test per (node, model).

One checked request is judged alone (inference/verification.py `judge`): its bound must hold at
1e-6 per request, so 64 tokens of a close quantization (Q3_K_M: 3.2 % of greedy positions
mismatch, 9.9 % of sampled ones; honest nodes at most 0.5 % / 1 %) are mostly "consistent". The
mismatches of every checked request of one node for one model, added up, separate the two
within a few requests. This file is the test that adds them up. Sans-IO: counts in, a verdict
out; p2p/client/reputation.py keeps a `CheckLedger` per (peer id, model sha256) in its JSON.

The statistic is a CUSUM of log-likelihood ratios, reset at request boundaries:

    S <- max(0, S + k log(p1/p0) + (n - k) log((1 - p1)/(1 - p0)))      per checked request

for a request with k mismatches in n judged positions; p0 is the honest rate the verification
calibration allows (`HONEST_RATE_GREEDY` 0.5 %, `HONEST_RATE_SAMPLED` 1 %, each several times
what honest nodes showed), p1 the cheat's rate the test is tuned for (`CHEAT_RATE_GREEDY` 3 %,
`CHEAT_RATE_SAMPLED` 5 %). The node is flagged when S reaches `THRESHOLD`.

False positives. For an honest node (mismatches independent, at rate <= p0 per position), the
likelihood ratio from any one request on is a nonnegative supermartingale of mean <= 1, so by
Ville's inequality the sum started at that request ever reaches h with probability <= e^-h.
The CUSUM flags only when one of those sums does, so over N checked requests the probability
is <= N e^-h (a union bound over the N starts; no bound is needed over the looks within one).
h = ln(1,000 / 1e-4) = 16.1: an honest node is flagged with probability <= 1e-4 over 1,000
checked requests (1e-7 per request). And p2p/client/reputation.py excludes it only when the
mismatches came from two verifiers, so one lying verifier cannot get an honest node excluded.

Detection: the mean number of checked requests until a node is flagged, for a node mismatching
at rate q at every position, 64 (128) judged positions a check, simulated over 2,000 runs each
(tests/p2p/client/test_check_ledger.py asserts them with room); beside it, the chance that one
check alone (`judge`) calls the node inconsistent:

| q | greedy: ledger | greedy: one check | sampled: ledger | sampled: one check |
|---|---|---|---|---|
| 3.2 % / 9.9 % (Q3_K_M, as measured) | 8.8 (4.7) | 1.7 % (5.4 %) | 2.6 (1.5) | 30 % (83 %) |
| 5 % | 4.7 (2.6) | 10 % (31 %) | 7.0 (3.8) | 1.4 % (11 %) |
| 10 % | 2.2 (1.3) | 63 % (95 %) | 2.7 (1.5) | 31 % (83 %) |

At the default check fraction (0.13) a node serving Q3_K_M greedy for 64-token answers is thus
flagged after ~70 of its requests, where the per-check test alone needed ~450. Honest mismatch
rates as measured (0 greedy, <= 0.77 % sampled) drive the statistic down: a simulated honest
node at each of those rates (and one at the allowed greedy rate) is not flagged in 1,000 checks.
The bound assumes honest mismatches independent between positions; the calibration saw at most
2 in one honest request, and a cluster of them costs one request's step, not a flag.

Logprob commitments (inference/verification.py) add positions whose signed logprob is off by
more than 1 nat to the same counts: honest nodes showed none (so p0 holds), cheats more. Spot
checks now judge 32 positions (p2p/client/spot_check.py), so each step is smaller: measured on
the default model, with these counts alone Q3_K_M was flagged after ~9 checked requests
greedy, ~4 sampled (docs/benchmarks.md); the commitment scores below make it ~2.

Commitment scores (inference/commitment_stat.py): a check whose node committed logprobs also
gives the sum of its positions' scores in [0, 1]; their log e-value `commitment_stat.llr`
(honest mean `HONEST_MEAN`, a cheat's `CHEAT_MEAN_COMMITTED`) has exp of mean <= 1 for an honest
node, as the mismatch count's has. The step of such a check is the log of the two e-values'
mean: a mean of e-values is an e-value whatever their dependence (both read the same positions),
so Ville's bound and h above stand unchanged, at a cost of at most ln 2 a step to whichever
statistic carries the evidence. Measured (32-position checks re-judged from the raw data of
docs/benchmarks.md, requests resampled): Q3_K_M flagged after ~2 checked requests greedy and
sampled (was ~9 / ~4), a dropped prefix after ~5 / ~4.

Prompt probes (inference/probe_stat.py): a check whose node signed its prompt probes gives their
count m and the sum of their normalized deltas |d| / `NOISE_SCALE`; their log e-value is
`probe_stat.sum_llr` with the cheat's mean delta `CHEAT_PROBE_SCALE` (2, in units of the
noise scale): the probes' likelihood ratio of Exp(mean 2) over Exp(1), whose exp has mean <= 1
whenever each honest |d| / 0.3 is below an Exp(1) variable, independently per probe and of
earlier checks (fresh draws each request) -- the assumption probe_stat's per-check test rests
on. With them the step is the log of the mean of the e-values present (two or three), so
Ville's bound and h stand as above. Why 2: the per-check test already calls a request with a
sum of |d| from 9.2 nats (8 probes; 13.3 for 16) inconsistent; what it cannot see is a node a
little off at every probe (a context cut to a window, values from a near model), and for
probes steadily c noise scales off the best theta is c, the growth per probe c - 1 - ln c.
theta = 2 adds up from a mean |d| of 0.42 nats (2 ln 2 scales) and is tuned for 0.6: each
probe at 0.6 adds 0.31, so a check judging m probes steps by 0.31 m less ln 3 beside
honest-looking counts and commitments (ln 2 beside counts alone). Simulated (|d| uniform in
[0.4, 0.8], every check consistent alone, 300 runs; tests/p2p/client/
test_check_ledger_probes.py): 16 probes a check flagged after 4.8 checks on average (4.3
beside counts alone), 8 probes after 12 (9.5). Honest probes as measured (median |d|
0.0003-0.07) step by about -0.6 a probe. The cost: a third e-value in the mean costs
whichever one carries the evidence at most ln(3/2) a step against two. A receipt
without its probe values ("missing") adds no probe term; neither does one with a different
count (the check is inconsistent by itself then).

The reset at zero makes a node that turns to cheating after a long honest record as easy to
catch as a new one: its past does not bank credit.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from inference import commitment_stat, probe_stat
from inference.probe_stat import MAX_DELTA, NOISE_SCALE
from inference.prompt_probes import MAX_PROBES
from inference.verification import HONEST_RATE_GREEDY, HONEST_RATE_SAMPLED

CHEAT_RATE_GREEDY = 0.03
CHEAT_RATE_SAMPLED = 0.05
# The mean commitment score per position the test is tuned for: between the highest honest
# request (0.05) and a close quantization's (0.36-0.54).
CHEAT_MEAN_COMMITTED = 0.25
# The false-positive budget: at most ALPHA_TOTAL over LOOKS checked requests of one honest node.
ALPHA_TOTAL = 1e-4
LOOKS = 1000
THRESHOLD = math.log(LOOKS / ALPHA_TOTAL)
# Past LEAN_LEVEL the evidence leans towards cheating and a long-lived client checks the node
# LEAN_BOOST times as often (p2p/client/background_checks.py): a close quantization, whose
# single checks mostly pass, is then flagged within tens of its requests, not hundreds. An
# honest node's statistic sits at 0 (its steps are negative: median -1.9 a check as shipped),
# and since each step is a log e-value, one excursion from 0 ever reaches LEAN_LEVEL with
# probability at most exp(-LEAN_LEVEL) (Ville) = 1.8 %: a small share of its checks boosted.
LEAN_LEVEL = THRESHOLD / 4
LEAN_BOOST = 4.0
MAX_VERIFIERS = 4  # verifiers remembered per ledger (two are what an exclusion needs)
VERIFIER_ID_CHARS = 16  # of a peer id: distinct prefixes are distinct verifiers
MAX_COUNT = 1 << 40  # bounds for counts read back from a file
# The mean normalized probe delta the probes' e-value is tuned for (see the module docstring).
CHEAT_PROBE_SCALE = 2.0


def _weights(p0: float, p1: float) -> tuple[float, float]:
    """(LLR of a mismatch, LLR of a match)."""
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


_GREEDY = _weights(HONEST_RATE_GREEDY, CHEAT_RATE_GREEDY)
_SAMPLED = _weights(HONEST_RATE_SAMPLED, CHEAT_RATE_SAMPLED)


def request_llr(n: int, mismatches: int, *, sampled: bool) -> float:
    """The log-likelihood ratio (cheat over honest) of one checked request's counts."""
    hit, miss = _SAMPLED if sampled else _GREEDY
    return mismatches * hit + (n - mismatches) * miss


def request_step(
    n: int,
    mismatches: int,
    *,
    sampled: bool,
    committed_n: int = 0,
    committed_score: float = 0.0,
    probe_n: int = 0,
    probe_total: float = 0.0,
) -> float:
    """One checked request's step: its counts' LLR, or with commitment scores and / or prompt
    probes the log of the mean of the e-values present (see the module docstring)."""
    llrs = [request_llr(n, mismatches, sampled=sampled)]
    if committed_n > 0:
        committed_score = min(max(committed_score, 0.0), float(committed_n))
        llrs.append(
            commitment_stat.llr(
                committed_n, committed_score, commitment_stat.HONEST_MEAN, CHEAT_MEAN_COMMITTED
            )
        )
    if probe_n > 0:
        llrs.append(probe_stat.sum_llr(probe_n, probe_total, CHEAT_PROBE_SCALE))
    if len(llrs) == 1:
        return llrs[0]
    top = max(llrs)
    return top + math.log(math.fsum(math.exp(v - top) for v in llrs) / len(llrs))


@attrs.define
class CheckLedger:
    """The checked positions of one node for one model, and the running statistic."""

    cusum: float = 0.0
    checks: int = 0  # checked requests added
    positions: int = 0
    mismatches: int = 0
    flagged: int = 0  # times the statistic reached THRESHOLD (it restarts at 0 each time)
    probes: int = 0  # prompt probes judged (checks whose node signed them)
    probe_total: float = 0.0  # the sum of their normalized deltas |d| / NOISE_SCALE
    # Verifiers (peer id prefixes) whose scores moved the statistic up since it was last at 0.
    verifiers: list[str] = attrs.field(factory=list)

    def add(
        self,
        n: int,
        mismatches: int,
        *,
        sampled: bool,
        verifier: str,
        committed_n: int = 0,
        committed_score: float = 0.0,
        probe_n: int = 0,
        probe_total: float = 0.0,
    ) -> bool:
        """Add one checked request's counts (and its commitment scores: how many positions, their
        sum; its prompt probes: how many, the sum of their normalized deltas, as
        `ProbeStat.evidence` gives them); True when the statistic reaches `THRESHOLD` (it is then
        reset, and `verifiers` says whose scores it rested on)."""
        if n <= 0:
            return False
        mismatches = min(max(mismatches, 0), n)
        if not math.isfinite(committed_score):
            committed_n = 0
        probe_n = min(max(probe_n, 0), MAX_PROBES)
        if not math.isfinite(probe_total):
            probe_n = 0
        probe_total = min(max(probe_total, 0.0), probe_n * MAX_DELTA / NOISE_SCALE)
        if probe_n:
            self.probes += probe_n
            self.probe_total += probe_total
        self.checks += 1
        self.positions += n
        self.mismatches += mismatches
        step = request_step(
            n,
            mismatches,
            sampled=sampled,
            committed_n=min(max(committed_n, 0), n),
            committed_score=committed_score,
            probe_n=probe_n,
            probe_total=probe_total,
        )
        self.cusum = max(0.0, self.cusum + step)
        if self.cusum == 0.0:
            self.verifiers = []
        elif step > 0:
            verifier = verifier[:VERIFIER_ID_CHARS]
            self.verifiers = [*(v for v in self.verifiers if v != verifier), verifier]
            self.verifiers = self.verifiers[-MAX_VERIFIERS:]
        if self.cusum < THRESHOLD:
            return False
        self.flagged += 1
        return True

    def leaning(self) -> bool:
        """Whether the statistic is past LEAN_LEVEL (the client then checks more often)."""
        return self.cusum >= LEAN_LEVEL

    def restart(self) -> None:
        self.cusum = 0.0
        self.verifiers = []

    @property
    def rate(self) -> float:
        return self.mismatches / self.positions if self.positions else 0.0

    @property
    def probe_mean(self) -> float:
        """The mean probe delta in nats (0.0 before any)."""
        return self.probe_total * NOISE_SCALE / self.probes if self.probes else 0.0


def ledger_from_json(raw: Any) -> CheckLedger:
    """A ledger as read back from the reputation file (ValueError on anything off)."""
    if raw is None:
        return CheckLedger()
    if not isinstance(raw, dict):
        raise ValueError("a ledger must be a map")
    cusum = raw.get("cusum", 0.0)
    counts = [raw.get(k, 0) for k in ("checks", "positions", "mismatches", "flagged")]
    verifiers = raw.get("verifiers", [])
    # Absent in files written before probes were added up: none then.
    probes, probe_total = raw.get("probes", 0), raw.get("probe_total", 0.0)
    if not (
        isinstance(cusum, int | float)
        and not isinstance(cusum, bool)
        and 0.0 <= cusum < THRESHOLD
        and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < MAX_COUNT for c in counts
        )
        and counts[2] <= counts[1]
        and isinstance(verifiers, list)
        and all(isinstance(v, str) and len(v) <= VERIFIER_ID_CHARS for v in verifiers)
        and isinstance(probes, int)
        and not isinstance(probes, bool)
        and 0 <= probes < MAX_COUNT
        and isinstance(probe_total, int | float)
        and not isinstance(probe_total, bool)
        and 0.0 <= probe_total <= probes * MAX_DELTA / NOISE_SCALE * (1 + 1e-9)
    ):
        raise ValueError("a ledger's fields have the wrong types or ranges")
    checks, positions, mismatches, flagged = counts
    return CheckLedger(
        cusum=float(cusum),
        checks=checks,
        positions=positions,
        mismatches=mismatches,
        flagged=flagged,
        probes=probes,
        # (the room above, and this bound, for a sum that rounding took past its exact bound)
        probe_total=min(float(probe_total), probes * MAX_DELTA / NOISE_SCALE),
        verifiers=verifiers[-MAX_VERIFIERS:],
    )
