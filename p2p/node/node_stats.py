"""What a node has done for others since it started: requests by outcome, tokens, refusals by
code and time to first token, for `gpunet status` (p2p/node/control.py) and the node's
`/metrics` (p2p/metrics.py `track_node_work`).

Sans-IO and bounded: the runtime feeds it one finished request at a time (its final message and
duration, from `Node._generate`'s finally block) and each refusal's code; it keeps counters keyed
by bounded enums only (the outcome is "ok", "cancelled" or an `ErrorCode` value; models by the
names the node serves, never a requester's text), a fixed histogram and a ring of recent TTFTs.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from p2p.errors import ErrorCode
from p2p.protocol import wire

# Time to first token on the node itself (prefill of the prompt, no network): ~10 ms for a short
# prompt on a GPU, seconds for a long one on a CPU. The gateway's buckets (p2p/metrics.py).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Recent TTFTs kept for the median and p90 that `gpunet status` shows.
RECENT_TTFT = 256
OK = "ok"
CANCELLED = "cancelled"  # the requester went away or cancelled before a final message
OUTCOMES = (OK, CANCELLED, *(c.value for c in ErrorCode))
# Requests of a model not served here (unknown_model) are counted under this name.
NO_MODEL = "-"


@attrs.define
class ModelWork:
    requests: int = 0
    tokens: int = 0  # completion tokens generated


def quantile(values: list[float], q: float) -> float:
    """The *q* quantile of non-empty *values* (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class NodeStats:
    """The node's served work; *clock* is monotonic seconds (for the uptime)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.refusals: dict[str, int] = {c.value: 0 for c in ErrorCode}
        self.by_model: dict[str, ModelWork] = {}
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.busy_s = 0.0  # summed durations of finished requests
        self.ttft_recent: deque[float] = deque(maxlen=RECENT_TTFT)
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.ttft_sum = 0.0
        # Figures of the moment (queue, slots in use, bytes shared), read at each scrape; set by
        # p2p/node/control.py once the node serves.
        self.live: Callable[[], dict[str, float]] = dict

    @property
    def requests(self) -> int:
        """Admitted requests that ended, whatever the outcome."""
        return sum(self.outcomes.values())

    def uptime_s(self) -> float:
        return max(0.0, self._clock() - self.started)

    def finished(self, final: wire.Message | None, took_s: float, model: str | None) -> None:
        """One admitted request ended with *final* (None: cancelled or the requester gone)
        after *took_s*; *model* is the served model's name (None: not served here)."""
        outcome = CANCELLED
        if isinstance(final, wire.Error):
            outcome = final.code.value
        elif isinstance(final, wire.Done | wire.Scores | wire.Embeddings):
            outcome = OK
        self.outcomes[outcome] += 1
        self.busy_s += max(0.0, took_s)
        work = self.by_model.setdefault(model or NO_MODEL, ModelWork())
        work.requests += 1
        if isinstance(final, wire.Done):
            self.tokens_generated += final.completion_tokens
            self.prompt_tokens += final.prompt_tokens
            work.tokens += final.completion_tokens
            if final.completion_tokens > 0 and math.isfinite(final.ttft_s):
                self._observe_ttft(max(0.0, final.ttft_s))

    def refused(self, code: ErrorCode) -> None:
        """A request was refused before it started (busy, rate limited, paused, ...)."""
        self.refusals[code.value] += 1

    def _observe_ttft(self, seconds: float) -> None:
        self.ttft_recent.append(seconds)
        self.ttft_sum += seconds
        bucket = next((i for i, b in enumerate(TTFT_BUCKETS) if seconds <= b), len(TTFT_BUCKETS))
        self.ttft_counts[bucket] += 1

    def ttft_cumulative(self) -> list[tuple[str, int]]:
        """The histogram as Prometheus wants it: (upper bound, count at or below it)."""
        out, total = [], 0
        for bound, count in zip((*map(str, TTFT_BUCKETS), "+Inf"), self.ttft_counts, strict=True):
            total += count
            out.append((bound, total))
        return out

    def summary(self) -> dict[str, Any]:
        """The counters as `gpunet status --json` shows them (zero counts left out)."""
        recent = list(self.ttft_recent)
        return {
            "uptime_s": round(self.uptime_s(), 1),
            "requests": self.requests,
            "outcomes": {k: v for k, v in self.outcomes.items() if v},
            "refusals": {k: v for k, v in self.refusals.items() if v},
            "tokens_generated": self.tokens_generated,
            "prompt_tokens": self.prompt_tokens,
            "ttft_s": {
                "samples": len(recent),
                "median": round(quantile(recent, 0.5), 4) if recent else None,
                "p90": round(quantile(recent, 0.9), 4) if recent else None,
            },
            "busy_s": round(self.busy_s, 2),
        }
