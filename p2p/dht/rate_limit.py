"""Per-source rate limit on incoming DHT datagrams: token buckets, sans-IO (the clock is passed in).

A source is the (ip, port) pair a datagram came from. Limiting by IP alone would throttle every
node behind one NAT, and every node of a test network on 127.0.0.1, as one; limiting by (ip, port)
lets an attacker with many ports get many buckets — the in-flight task bound in the protocol and
the bounded table here cap what that buys.

Numbers: an honest peer sends us a handful of datagrams per lookup and per publish (a publish
round is 4–66 stores spread over k nodes, so a few per destination). 100 per second sustained
with bursts of 200 is far above that and far below what hurts a node (each datagram costs
~50–200 µs of CPU: msgpack plus at most one Ed25519 verification).
"""

from __future__ import annotations

from collections.abc import Hashable

from p2p.token_bucket import KeyedBuckets

RATE_PER_S = 100.0
BURST = 200.0
MAX_SOURCES = 4096


class SourceRateLimiter:
    """One token bucket per source, at most `max_sources` of them (least recently seen evicted).

    Eviction forgets a source's debt, so a flood from more than `max_sources` addresses is not
    limited per source — it is still limited by the protocol's bound on tasks in flight.
    """

    def __init__(
        self, rate: float = RATE_PER_S, burst: float = BURST, max_sources: int = MAX_SOURCES
    ) -> None:
        self._buckets: KeyedBuckets[Hashable] = KeyedBuckets(rate, burst, max_sources)
        self.dropped = 0

    def allow(self, source: Hashable, now: float) -> bool:
        if self._buckets.take(source, now):
            return True
        self.dropped += 1
        return False

    def __len__(self) -> int:
        return len(self._buckets)
