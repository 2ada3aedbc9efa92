"""Token buckets: the one rate limiter (session admission, request admission, DHT intake).

Sans-IO: the caller passes `now`. `KeyedBuckets` keeps one bucket per key (a source, a peer) in a
`BoundedLRU`, so a flood of fresh keys costs bounded memory; an evicted key starts afresh with a
full bucket, which is why the other bounds (tasks in flight, sessions) still matter.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import attrs

from p2p.bounded_lru import BoundedLRU

K = TypeVar("K", bound=Hashable)


@attrs.define
class TokenBucket:
    """`rate` tokens a second up to `burst`; starts full."""

    rate: float
    burst: float
    tokens: float = attrs.field(default=attrs.Factory(lambda self: self.burst, takes_self=True))
    stamp: float | None = None

    def refill(self, now: float) -> None:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend *cost* tokens if there are that many; False (nothing spent) otherwise."""
        self.refill(now)
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class KeyedBuckets(Generic[K]):
    """One `TokenBucket` per key, at most `max_keys` keys (least recently used forgotten)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int,
        *,
        evictable: Callable[[K, TokenBucket], bool] | None = None,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: BoundedLRU[K, TokenBucket] = BoundedLRU(max_keys, evictable=evictable)

    def take(self, key: K, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.get_or_create(key, lambda: TokenBucket(self.rate, self.burst))
        return bucket.take(now, cost)

    def bucket(self, key: K) -> TokenBucket | None:
        return self._buckets.peek(key)

    def forget(self, key: K) -> None:
        self._buckets.pop(key)

    def __len__(self) -> int:
        return len(self._buckets)
