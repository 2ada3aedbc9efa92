"""Admission control on a node: who may start a request now. Sans-IO, clock injected.

A volunteer's node is shared by strangers; one greedy client must not take every slot. Each
peer gets a concurrency cap and a token-bucket request rate; over either bound the answer is
immediate (`busy` / `rate_limited`), so the client moves to the next provider instead of waiting.
The global queue bound is the model worker's own (`WorkerBusy`).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

# Sixteen concurrent requests per peer: a gateway multiplexes many users through one identity,
# and the model worker's own slot and queue bounds still answer `busy` beyond the node's capacity.
PER_PEER_CONCURRENCY = 16
# Requests per second per peer, with a burst: interactive use never meets it, a flood does.
PER_PEER_RATE = 5.0
PER_PEER_BURST = 20.0
# A bound on the number of peers remembered, so a flood of fresh identities costs bounded memory.
MAX_TRACKED_PEERS = 10_000


@attrs.define
class _Bucket:
    tokens: float
    stamp: float
    active: int = 0


@attrs.define
class AdmissionControl:
    clock: Callable[[], float]
    per_peer_concurrency: int = PER_PEER_CONCURRENCY
    rate: float = PER_PEER_RATE
    burst: float = PER_PEER_BURST
    _peers: dict[str, _Bucket] = attrs.field(factory=dict)

    def try_admit(self, peer_id: str) -> str | None:
        """None when admitted (call `release` later), else the error code to answer with."""
        now = self.clock()
        bucket = self._peers.get(peer_id)
        if bucket is None:
            if len(self._peers) >= MAX_TRACKED_PEERS:
                self._forget_idle()
            bucket = self._peers[peer_id] = _Bucket(tokens=self.burst, stamp=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.active >= self.per_peer_concurrency:
            return "busy"
        if bucket.tokens < 1.0:
            return "rate_limited"
        bucket.tokens -= 1.0
        bucket.active += 1
        return None

    def release(self, peer_id: str) -> None:
        bucket = self._peers.get(peer_id)
        if bucket is not None and bucket.active > 0:
            bucket.active -= 1

    def _forget_idle(self) -> None:
        for pid in [p for p, b in self._peers.items() if b.active == 0]:
            del self._peers[pid]
