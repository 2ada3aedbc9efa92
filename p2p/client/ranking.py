"""Choosing a provider: measured speed, load, time to first token, recent failures, a little chance.

Sans-IO: the clock and the random source are passed in, so the rules are tested with plain calls.
A long-lived client (the gateway) keeps one `ProviderRanker`, so a node that failed recently is
tried last until its backoff ends; a short `gpunet ask` starts fresh each time.

A record's speed is a claim: anyone can sign "10^12 tok/s". What this client measured itself
(time to first token and decode tok/s of its own requests, `record_success`) replaces the claim
once it has it, and an unmeasured claim counts as at most `CLAIM_CAP_FACTOR` times the best speed
measured among the candidates: a new node may still be tried first (that is how it gets measured)
but a lie buys no more than that factor. With nothing measured yet (a fresh `gpunet ask`) claims
rank as told; what bounds a lying node's cost then is the dialling (p2p/client/provider_race.py:
the next provider is dialled after a short stagger, a node that does not finish its handshake
goes into backoff here). Rejected: ignoring claims altogether (every fresh client would then pick
at random, and honest fast nodes would wait for measurements nobody makes).

Reputation (p2p/client/reputation.py, what this client's own spot checks found) weighs in through
`standing`: a multiplier per (peer id, model sha256), 0 for a node caught serving something else
than the file it claims, which is then not a candidate for that model at all.

Beside the ranking, the two reorderings the caller may ask for: a preferred node first
(`prefer_first`), and after a mid-stream failure the failed node's build and hardware class
first (`prefer_same_class`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import attrs

from p2p.client.provider_query import served_entry
from p2p.dht.records import CapabilityRecord, ModelEntry

# A failed node waits this long before it ranks normally again, doubling per failure in a row.
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 300.0
# Unknown speed (a node that has not benchmarked itself yet) counts as this many tok/s, so new
# nodes are neither shunned nor preferred.
UNKNOWN_DECODE_TOK_S = 20.0
# Multiplicative noise on the score: equal nodes share the work and new nodes get tried.
JITTER = 0.15
# An unmeasured node's claimed speed counts as at most this many times the best measured one.
# 2x: a node twice as fast as the best we know is plausible (a bigger GPU, a smaller quant) and
# worth trying once, which is how it gets measured; more than that is not believed until seen.
CLAIM_CAP_FACTOR = 2.0
# Weight of the newest measurement in the running average (exponential smoothing): one slow
# answer (a long prompt, a busy moment) moves the estimate halfway, not all the way.
MEASUREMENT_WEIGHT = 0.5
# A node reached only through a relay (its record names relays, p2p/reach/) pays one more hop
# on every message: about one relay round trip on the first token and the relay's share of
# bandwidth. Until this client has measured its first token (which then includes the hop) it
# ranks as a direct node of 0.8x its speed: among equals the direct one first, yet a relayed
# node twice as fast still wins.
RELAY_HOP_FACTOR = 0.8
# Fewer tokens than this time the network more than the decode: no speed is measured from them.
MIN_MEASURED_TOKENS = 4


@attrs.frozen
class Candidate:
    record: CapabilityRecord
    model: ModelEntry
    score: float
    reason: str


@attrs.define
class _Failures:
    count: int = 0
    until: float = 0.0


@attrs.frozen
class Measured:
    """What this client saw of a provider's own answers (running averages)."""

    ttft_s: float | None = None
    decode_tok_s: float | None = None


def _smooth(old: float | None, new: float | None) -> float | None:
    if new is None or old is None:
        return old if new is None else new
    return old + MEASUREMENT_WEIGHT * (new - old)


@attrs.define
class ProviderRanker:
    clock: Callable[[], float]
    rng: random.Random = attrs.field(factory=random.Random)
    measured: dict[str, Measured] = attrs.field(factory=dict)
    _failures: dict[str, _Failures] = attrs.field(factory=dict)
    # (peer id, model sha256) -> the score's multiplier; 0.0 excludes (a reputation's standing).
    standing: Callable[[str, str], float] = lambda _peer, _sha: 1.0

    def record_failure(self, peer_id: str) -> None:
        """The node failed: it could not be reached, its handshake failed or was too slow, or
        its answer broke. It ranks last until its backoff ends."""
        f = self._failures.setdefault(peer_id, _Failures())
        f.count += 1
        f.until = self.clock() + min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (f.count - 1))

    def record_success(
        self, peer_id: str, *, ttft_s: float | None = None, decode_tok_s: float | None = None
    ) -> None:
        """The node answered; *ttft_s* and *decode_tok_s* are what this client measured of it
        (None where the answer was too short to tell)."""
        self._failures.pop(peer_id, None)
        old = self.measured.get(peer_id, Measured())
        self.measured[peer_id] = Measured(
            _smooth(old.ttft_s, ttft_s), _smooth(old.decode_tok_s, decode_tok_s)
        )

    def in_backoff(self, peer_id: str) -> bool:
        f = self._failures.get(peer_id)
        return f is not None and f.until > self.clock()

    def rank(self, providers: Sequence[tuple[CapabilityRecord, ModelEntry]]) -> list[Candidate]:
        """Best first. Stale records (expired by now) and withdrawn ones (the node stopped) are
        skipped; nodes in backoff go last."""
        now = self.clock()
        live = [
            (r, m)
            for r, m in providers
            if r.expires_at > now and not r.withdrawn and self.standing(r.peer_id, m.sha256) > 0
        ]
        speeds = [s for r, _m in live if (s := self._measured_speed(r.peer_id)) is not None]
        cap = CLAIM_CAP_FACTOR * max(speeds) if speeds else None
        out = [self._score(record, model, cap) for record, model in live]
        out.sort(key=lambda c: (self.in_backoff(c.record.peer_id), -c.score))
        return out

    def _measured_speed(self, peer_id: str) -> float | None:
        seen = self.measured.get(peer_id)
        return seen.decode_tok_s if seen is not None else None

    def _speed(
        self, record: CapabilityRecord, model: ModelEntry, cap: float | None
    ) -> tuple[float, str]:
        """The speed the score uses and how it is told: measured, or the claim (capped)."""
        seen = self._measured_speed(record.peer_id)
        if seen is not None:
            return seen, f"measured {seen:.0f} tok/s"
        claim = model.decode_tok_s or UNKNOWN_DECODE_TOK_S
        if cap is not None and claim > cap:
            return cap, f"claims {claim:.0f} tok/s, counted as {cap:.0f}"
        return claim, f"claims {claim:.0f} tok/s"

    def _score(self, record: CapabilityRecord, model: ModelEntry, cap: float | None) -> Candidate:
        speed, told = self._speed(record, model, cap)
        load = record.load
        # A request joining a node already serving n others gets roughly 1/(n+1) of its speed
        # when it has no free slot; with free slots (batching) the share is much better.
        share = 1.0 if load.free_slots > 0 else 1.0 / (1 + load.active_requests + load.queue_depth)
        seen = self.measured.get(record.peer_id)
        ttft = seen.ttft_s if seen is not None else None
        # Time to first token as measured here (round trip + prefill): 100 ms halves the score.
        ttft_factor = 1.0 / (1.0 + 10 * ttft) if ttft is not None else 1.0
        relayed = bool(record.relays) and record.reach != "direct"
        if relayed and ttft is None:
            ttft_factor = RELAY_HOP_FACTOR
        trust = self.standing(record.peer_id, model.sha256)
        score = speed * share * ttft_factor * trust * (1 + self.rng.uniform(-JITTER, JITTER))
        parts = [told, f"{load.active_requests} active/{load.free_slots} free"]
        if trust != 1.0:
            parts.append(f"reputation x{trust:.2f}")
        if ttft is not None:
            parts.append(f"first token {ttft * 1000:.0f} ms")
        if relayed:
            parts.append("via relay")
        if self.in_backoff(record.peer_id):
            parts.append("recently failed")
        return Candidate(record, model, score, ", ".join(parts))


def measure_answer(
    sent: float, first_text: float | None, ended: float, completion_tokens: int
) -> tuple[float | None, float | None]:
    """(time to first token, decode tok/s) of one answer as this client saw it, the way
    docs/benchmarks.md measures a client: times on one clock, the request sent at *sent*, its
    first text at *first_text*, its end at *ended*.
    None for what the answer cannot tell (no text; too few tokens to time the decode)."""
    ttft = first_text - sent if first_text is not None else None
    decode = None
    if first_text is not None and completion_tokens >= MIN_MEASURED_TOKENS and ended > first_text:
        decode = (completion_tokens - 1) / (ended - first_text)
    return ttft, decode


@attrs.frozen
class Provider:
    """A node chosen to serve a request, the model file it serves it with, and why it ranked."""

    record: CapabilityRecord
    model: ModelEntry
    reason: str = ""


def rank_providers(
    ranker: ProviderRanker, records: Sequence[CapabilityRecord], model: str
) -> list[Provider]:
    """The providers of *model* (a name or a sha256) among *records*, best first; a node
    serving two files that answer to *model* counts once, with the first it lists."""
    found = [(r, m) for r in records if (m := served_entry(r, model)) is not None]
    return [Provider(c.record, c.model, c.reason) for c in ranker.rank(found)]


def prefer_first(providers: list[Provider], prefer: str | None) -> list[Provider]:
    """The node whose peer id starts with *prefer* first, the ranking order kept otherwise."""
    if not prefer:
        return providers
    key = prefer.lower()
    return sorted(providers, key=lambda p: not p.record.peer_id.startswith(key))  # stable


def prefer_same_class(providers: Sequence[Provider], failed: CapabilityRecord) -> list[Provider]:
    """Providers of *failed*'s build and hardware class first, the ranking order kept otherwise.

    After a mid-stream failure the text continues by replay; greedy text stays identical to an
    uninterrupted run only on the same llama.cpp build and hardware class (across classes only
    "nothing lost, nothing repeated" holds). Nodes too old to publish both are not matched.
    """
    if not (failed.build and failed.hardware_class):
        return list(providers)
    same = (failed.build, failed.hardware_class)
    return sorted(providers, key=lambda p: (p.record.build, p.record.hardware_class) != same)
