"""Admission control on a node: who may start a request now. Sans-IO, clock injected.

A volunteer's node is shared by strangers; one greedy client must not take every slot. Each
peer gets a concurrency cap and a token-bucket request rate; over either bound the answer is
immediate (`busy` / `rate_limited`), so the client moves to the next provider instead of waiting.
The global queue bound is the model worker's own (`WorkerBusy`).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from p2p.errors import ErrorCode
from p2p.token_bucket import KeyedBuckets, TokenBucket

# Sixteen concurrent requests per peer: a gateway multiplexes many users through one identity,
# and the model worker's own slot and queue bounds still answer `busy` beyond the node's capacity.
PER_PEER_CONCURRENCY = 16
# Requests per second per peer, with a burst: interactive use never meets it, a flood does.
PER_PEER_RATE = 5.0
PER_PEER_BURST = 20.0
# A bound on the number of peers remembered, so a flood of fresh identities costs bounded memory
# (a forgotten peer starts again with a full bucket; peers with requests in flight are kept).
MAX_TRACKED_PEERS = 10_000


@attrs.define
class AdmissionControl:
    clock: Callable[[], float]
    per_peer_concurrency: int = PER_PEER_CONCURRENCY
    rate: float = PER_PEER_RATE
    burst: float = PER_PEER_BURST
    max_tracked_peers: int = MAX_TRACKED_PEERS
    # Requests in flight per peer; only peers with at least one are present, so the table is
    # bounded by the node's own bound on requests in flight.
    _active: dict[str, int] = attrs.field(factory=dict, init=False)
    _buckets: KeyedBuckets[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._buckets = KeyedBuckets(
            self.rate, self.burst, self.max_tracked_peers, evictable=self._idle
        )

    def _idle(self, peer_id: str, _bucket: TokenBucket) -> bool:
        return peer_id not in self._active

    def try_admit(self, peer_id: str) -> ErrorCode | None:
        """None when admitted (call `release` later), else the code to answer with."""
        active = self._active.get(peer_id, 0)
        if active >= self.per_peer_concurrency:
            return ErrorCode.BUSY
        if not self._buckets.take(peer_id, self.clock()):
            return ErrorCode.RATE_LIMITED
        self._active[peer_id] = active + 1
        return None

    def try_hold(self, peer_id: str) -> ErrorCode | None:
        """Like `try_admit` for work paced by bytes rather than by requests (the model-file
        shares of p2p/share/, hundreds of chunk requests a second): one of the peer's
        concurrent places, no request-rate token. None when held (call `release` later)."""
        active = self._active.get(peer_id, 0)
        if active >= self.per_peer_concurrency:
            return ErrorCode.BUSY
        self._active[peer_id] = active + 1
        return None

    def release(self, peer_id: str) -> None:
        active = self._active.get(peer_id, 0)
        if active > 1:
            self._active[peer_id] = active - 1
        else:
            self._active.pop(peer_id, None)

    @property
    def tracked_peers(self) -> int:
        return len(self._buckets)
