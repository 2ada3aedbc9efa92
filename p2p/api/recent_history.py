"""The gateway's memory of its own recent requests: what the dashboard's charts draw.

The records in the DHT say what nodes claim; this says what this gateway saw them do: when each
request ended, which node answered, how many tokens it got, how long the first one took and how
fast the rest came, and how it ended. Measured here, at the gateway, so a node that lies in its
record cannot improve its own figures.

Bounded twice, since every request adds to it and any peer id may be the provider: a ring of
the last MAX_SAMPLES requests, and the tokens served per node in a BoundedLRU of MAX_NODES
peers. Fed by p2p/api/generation_response.py when a request
ends and read by `GET /api/network`.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import attrs

from p2p.bounded_lru import BoundedLRU

# Enough points for the charts of a busy gateway over WINDOW_S (about 1 request/s) while a page
# view's JSON stays small (~60 KiB).
MAX_SAMPLES = 600
WINDOW_S = 600.0  # the charts span the last 10 minutes
MAX_NODES = 4096  # peers whose token counts are kept; the least recently served are forgotten


@attrs.frozen
class Sample:
    """One request as the gateway saw it end."""

    at: float  # wall-clock time it ended (time.time()): the charts' time axis
    provider: str  # the peer id that answered last; "" when none did
    model: str  # the model's name as the provider's record gives it ("" none)
    tokens: int
    ttft_s: float | None  # request arrival to its first text at the gateway; None: no text
    tok_s: float  # tokens after the first per second of their arrival; 0.0: fewer than 2
    outcome: str  # p2p/metrics.py Outcome value ("ok", "busy", ...)


def measured_rate(tokens: int, first_at: float | None, ended_at: float) -> float:
    """The decode speed this gateway saw: tokens after the first over the time they took."""
    if first_at is None or tokens < 2 or ended_at <= first_at:
        return 0.0
    return (tokens - 1) / (ended_at - first_at)


class RecentHistory:
    """The last requests of one gateway and the tokens each node served it."""

    def __init__(self, capacity: int = MAX_SAMPLES, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: collections.deque[Sample] = collections.deque(maxlen=capacity)
        self._tokens: BoundedLRU[str, int] = BoundedLRU(MAX_NODES)
        self._requests: BoundedLRU[str, int] = BoundedLRU(MAX_NODES)

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        if sample.provider and sample.outcome == "ok":
            self._requests.set(sample.provider, (self._requests.peek(sample.provider) or 0) + 1)
            if sample.tokens:
                old = self._tokens.peek(sample.provider) or 0
                self._tokens.set(sample.provider, old + sample.tokens)

    def tokens_served(self, peer_id: str) -> int:
        """Tokens *peer_id* generated for this gateway since it started (as far as remembered)."""
        return self._tokens.peek(peer_id) or 0

    def requests_served(self, peer_id: str) -> int:
        """Requests *peer_id* answered to the end for this gateway."""
        return self._requests.peek(peer_id) or 0

    def recent(self, now: float) -> list[Sample]:
        """The requests that ended within the window, oldest first."""
        return [s for s in self._samples if now - self.window_s <= s.at <= now + 1.0]

    def to_json(self, now: float) -> dict[str, Any]:
        """The charts' data: each recent request, and the totals of the last minute."""
        recent = self.recent(now)
        last_minute = [s for s in recent if s.at >= now - 60.0]
        ttfts = sorted(s.ttft_s for s in last_minute if s.ttft_s is not None)
        return {
            "window_s": self.window_s,
            "requests": [
                {
                    "at": round(s.at, 3),
                    "provider": s.provider,
                    "model": s.model,
                    "tokens": s.tokens,
                    "ttft_ms": None if s.ttft_s is None else round(s.ttft_s * 1000, 1),
                    "tok_s": round(s.tok_s, 1),
                    "outcome": s.outcome,
                }
                for s in recent
            ],
            "last_minute": {
                "requests": len(last_minute),
                "ok": sum(1 for s in last_minute if s.outcome == "ok"),
                "tokens": sum(s.tokens for s in last_minute),
                "tok_s": round(sum(s.tokens for s in last_minute) / 60.0, 2),
                "ttft_ms_median": round(ttfts[len(ttfts) // 2] * 1000, 1) if ttfts else None,
            },
        }


def request_sample(
    provider: str,
    model: str,
    tokens: int,
    outcome: str,
    times: tuple[float, float | None, float],
    *,
    wall_now: float | None = None,
) -> Sample:
    """A request's sample from its (arrival, first text or None, end) times on one monotonic
    clock; it is placed at *wall_now* (default: time.time()) on the charts' axis."""
    started, first_at, ended = times
    return Sample(
        at=time.time() if wall_now is None else wall_now,
        provider=provider,
        model=model if provider else "",
        tokens=tokens,
        ttft_s=None if first_at is None else max(0.0, first_at - started),
        tok_s=measured_rate(tokens, first_at, ended),
        outcome=outcome,
    )
