"""Choosing a provider: measured speed, load, round-trip time, recent failures, a little chance.

Sans-IO: the clock and the random source are passed in, so the rules are tested with plain calls.
A long-lived client (the gateway) keeps one `ProviderRanker`, so a node that failed recently is
tried last until its backoff ends; a short `gpunet ask` starts fresh each time.

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
