"""Reachability rules, sans-IO: how a helper bounds the dial-backs it makes, and how a node
turns dial-back outcomes into "direct", "mapped" or "relayed".

A helper dials back only the source address it sees for the asking session, never an address the
asker names, so it cannot be used to aim connections at a third party (no amplification: one
small session in, at most one TCP connect and one DHT ping out). It makes one dial-back per
asking peer and port, and per source address and port, each `DIAL_BACK_INTERVAL_S` (a node's
re-check on the port its router has just mapped is another port, so it goes through), at most
`PORTS_PER_ADDRESS` ports of one address in a burst (no port scans of an address a carrier NAT
shares), and `MAX_DIAL_BACKS_AT_ONCE` in all.

Every dial-back comes from a helper the asker has just talked to, so a verdict of "direct" or
"mapped" is weak proof (`ReachResult.weak`): a router that filters by address lets contacted
hosts in and strangers not. Strong proof is a stranger's connection (`strangers.py`).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import attrs

from p2p.token_bucket import KeyedBuckets

# A node re-checks every 10 minutes and when its addresses change; 30 s lets it retry soon
# after a change, and bounds a hostile asker (one peer id or one address) to 2 dial-backs a
# minute per port.
DIAL_BACK_INTERVAL_S = 30.0
# Ports of one address dialled back in a burst (then one more each interval): a node's own
# port and its mapped one, and room for one more.
PORTS_PER_ADDRESS = 3.0
MAX_DIAL_BACKS_AT_ONCE = 4
TRACKED_ASKERS = 4096
# Helpers a node asks per check: any one that gets through proves reachability; three ride out
# a helper that is itself broken or lying (it can only claim a failure: success is observed).
HELPERS_PER_CHECK = 3


class DialBackLimiter:
    """May this helper dial back *peer* at *host* now? The caller passes the time and calls
    `done` when the dial-back ended."""

    def __init__(self, interval_s: float = DIAL_BACK_INTERVAL_S) -> None:
        rate = 1.0 / interval_s
        self._peers: KeyedBuckets[tuple[str, int]] = KeyedBuckets(rate, 1.0, TRACKED_ASKERS)
        self._hosts: KeyedBuckets[tuple[str, int]] = KeyedBuckets(rate, 1.0, TRACKED_ASKERS)
        self._ports: KeyedBuckets[str] = KeyedBuckets(rate, PORTS_PER_ADDRESS, TRACKED_ASKERS)
        self.in_flight = 0
        self.refused = 0

    def admit(self, peer: str, host: str, now: float, port: int = 0) -> bool:
        """May *peer*, seen at *host*, be dialled back on *port* now? (Taken if so.)"""
        if self.in_flight >= MAX_DIAL_BACKS_AT_ONCE or not (
            self._has_token(self._hosts, (host, port), now)
            and self._has_token(self._ports, host, now)
            and self._peers.take((peer, port), now)
        ):
            self.refused += 1
            return False
        self._hosts.take((host, port), now)
        self._ports.take(host, now)
        self.in_flight += 1
        return True

    @staticmethod
    def _has_token(buckets: KeyedBuckets[Any], key: object, now: float) -> bool:
        bucket = buckets.bucket(key)
        if bucket is None:
            return True
        bucket.refill(now)
        return bucket.tokens >= 1.0

    def done(self) -> None:
        self.in_flight -= 1


@attrs.frozen
class DialBackOutcome:
    """One helper's dial-back: what it saw (`host`), whether this node's listener heard the TCP
    probe (`tcp`, observed here, not claimed), whether the helper's DHT ping was answered
    (`udp`, the helper's claim), and whether the port tried was the mapped one."""

    helper: str
    host: str
    tcp: bool
    udp: bool
    mapped: bool = False


@attrs.frozen
class ReachResult:
    kind: str  # "direct" | "mapped" | "relayed" | "unknown"
    observed_host: str | None = None
    answered: int = 0  # helpers that answered
    # "direct"/"mapped" shown only by hosts this node had sent to: strangers may be filtered
    weak: bool = False
    # where this node's connections to the helpers left from (its LAN address behind a NAT)
    local_host: str | None = None


def decide(outcomes: Sequence[DialBackOutcome]) -> ReachResult:
    """No answer at all: "unknown" (keep what was published before). A TCP dial-back that got
    through on the mapped port: "mapped"; on the node's own port: "direct"; neither: "relayed".
    The observed host is the one most helpers saw (a lone helper cannot rename the node)."""
    if not outcomes:
        return ReachResult("unknown")
    hosts = collections.Counter(o.host for o in outcomes)
    observed = hosts.most_common(1)[0][0]
    n = len(outcomes)
    if any(o.tcp and not o.mapped for o in outcomes):
        return ReachResult("direct", observed, n)
    if any(o.tcp and o.mapped for o in outcomes):
        return ReachResult("mapped", observed, n)
    return ReachResult("relayed", observed, n)
