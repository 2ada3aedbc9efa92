"""Choosing a provider: measured speed, load, round-trip time, recent failures, a little chance.

Sans-IO: the clock and the random source are passed in, so the rules are tested with plain calls.
A long-lived client (the gateway) keeps one `ProviderRanker`, so a node that failed recently is
tried last until its backoff ends; a short `gpunet ask` starts fresh each time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import attrs

from p2p.dht.records import CapabilityRecord, ModelEntry

# A failed node waits this long before it ranks normally again, doubling per failure in a row.
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 300.0
# Unknown speed (a node that has not benchmarked itself yet) counts as this many tok/s, so new
# nodes are neither shunned nor preferred.
UNKNOWN_DECODE_TOK_S = 20.0
# Multiplicative noise on the score: equal nodes share the work and new nodes get tried.
JITTER = 0.15


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


@attrs.define
class ProviderRanker:
    clock: Callable[[], float]
    rng: random.Random = attrs.field(factory=random.Random)
    rtt_s: dict[str, float] = attrs.field(factory=dict)
    _failures: dict[str, _Failures] = attrs.field(factory=dict)

    def record_failure(self, peer_id: str) -> None:
        f = self._failures.setdefault(peer_id, _Failures())
        f.count += 1
        f.until = self.clock() + min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (f.count - 1))

    def record_success(self, peer_id: str, rtt_s: float | None = None) -> None:
        self._failures.pop(peer_id, None)
        if rtt_s is not None:
            self.rtt_s[peer_id] = rtt_s

    def in_backoff(self, peer_id: str) -> bool:
        f = self._failures.get(peer_id)
        return f is not None and f.until > self.clock()

    def rank(self, providers: Sequence[tuple[CapabilityRecord, ModelEntry]]) -> list[Candidate]:
        """Best first. Stale records (expired by now) are skipped; nodes in backoff go last."""
        now = self.clock()
        out: list[Candidate] = []
        for record, model in providers:
            if record.expires_at <= now:
                continue
            out.append(self._score(record, model))
        out.sort(key=lambda c: (self.in_backoff(c.record.peer_id), -c.score))
        return out

    def _score(self, record: CapabilityRecord, model: ModelEntry) -> Candidate:
        speed = model.decode_tok_s or UNKNOWN_DECODE_TOK_S
        load = record.load
        # A request joining a node already serving n others gets roughly 1/(n+1) of its speed
        # when it has no free slot; with free slots (batching) the share is much better.
        share = 1.0 if load.free_slots > 0 else 1.0 / (1 + load.active_requests + load.queue_depth)
        rtt = self.rtt_s.get(record.peer_id)
        rtt_factor = 1.0 / (1.0 + 10 * rtt) if rtt is not None else 1.0
        score = speed * share * rtt_factor * (1 + self.rng.uniform(-JITTER, JITTER))
        parts = [f"{speed:.0f} tok/s", f"{load.active_requests} active/{load.free_slots} free"]
        if rtt is not None:
            parts.append(f"rtt {rtt * 1000:.0f} ms")
        if self.in_backoff(record.peer_id):
            parts.append("recently failed")
        return Candidate(record, model, score, ", ".join(parts))
