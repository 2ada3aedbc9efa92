"""The hole punch's rules, sans-IO: when each side tries its simultaneous open, and how many
punches a volunteer answers. `hole_punch.py` is the trio code that follows them.

Both sides learn the other's observed address from the relay (relay_protocol.py's observed
line and `Circuit.peer`) and connect to it from the local port of their own relay connection.
A pending connect waits for the peer's SYN (the kernel retransmits its own at 1 s), so one try
usually spans the window; a new try is made only after one failed at once (a reset: a router
that answers unsolicited SYNs did so), after `gap_s`, `tries` in all.

A volunteer aims SYNs at an address the relay names, so a hostile relay could try to use it
against a third party: every punch is for a circuit the volunteer accepted itself, at most
`tries` connects each, `per_minute` punches a minute in total and `per_target_per_minute` to
one host. That is a few SYNs a minute at worst, less than the relay could send itself. And
the relay cannot aim either side inward: a target must be as public as the relay itself
(`target_allowed`: no loopback or LAN address named by a relay on the internet).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import attrs

from p2p.token_bucket import KeyedBuckets, TokenBucket

# Three seconds: the first SYN, its retransmit at 1 s, and room for the other side's to come.
# A punch that has not worked by then will not; the relayed session serves meanwhile.
PUNCH_WINDOW_S = 3.0
PUNCH_TRIES = 6
RETRY_GAP_S = 0.25
PUNCHES_PER_MINUTE = 30.0
PUNCHES_PER_TARGET_PER_MINUTE = 6.0
TRACKED_TARGETS = 256

# How a session was reached, as the pool records it and `gpunet ask --json` reports it.
DIRECT = "direct"  # dialled at an address the node's record lists
MAPPED = "mapped"  # the same, to a node whose record says its router maps the port
HOLE_PUNCHED = "hole-punched"  # a relayed session upgraded by a simultaneous open
RELAYED = "relayed"  # through a relay, end to end encrypted
LOCAL = "local"  # the node's own API, in process
PATHS = (DIRECT, MAPPED, HOLE_PUNCHED, RELAYED, LOCAL)


def path_label(session_path: str | None, record_reach: str | None) -> str:
    """How a request went, for people and `--json`: the pool's path of its session, with a
    direct dial to a node whose record says its router maps the port called "mapped"."""
    if session_path is None:
        return "unknown"
    return MAPPED if session_path == DIRECT and record_reach == MAPPED else session_path


# RFC 2544's benchmark range stands in for the internet (network labs: tests/netns/lab.py); it
# is no one's LAN, and ipaddress counts it private, which made a relay with a global address
# refuse every punch between peers there.
_BENCHMARK_NET = ipaddress.ip_network("198.18.0.0/15")


def address_scope(host: str) -> int | None:
    """0 loopback, 1 private or link-local, 2 global; None for what no peer can be."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified or (ip.version == 4 and str(ip) == "255.255.255.255"):
        return None
    if ip.is_loopback:
        return 0
    if ip.version == 4 and ip in _BENCHMARK_NET:
        return 2
    return 1 if ip.is_private or ip.is_link_local else 2


def target_allowed(
    target_host: str, relay_host: str, *, scope: Callable[[str], int | None] = address_scope
) -> bool:
    """Whether to punch to *target_host*, an address the relay at *relay_host* reported: never
    a multicast or unspecified one, and none narrower in scope than the relay's own (a relay on
    the internet saw its peers on the internet; one on a LAN may have seen LAN addresses)."""
    target, relay = scope(target_host), scope(relay_host)
    return target is not None and relay is not None and target >= relay


@attrs.frozen
class PunchPlan:
    """When to try the simultaneous open: `tries` connects within `window_s` of the start."""

    window_s: float = PUNCH_WINDOW_S
    tries: int = PUNCH_TRIES
    gap_s: float = RETRY_GAP_S

    def next_try(self, tried: int, started: float, now: float) -> float | None:
        """When to start the next connect after *tried* ones (the first at once), or None when
        the tries or the window are spent."""
        if tried >= self.tries:
            return None
        at = now if tried == 0 else now + self.gap_s
        return at if at < started + self.window_s else None

    def deadline(self, started: float) -> float:
        return started + self.window_s


class PunchBudget:
    """How many punches a volunteer answers: in total and per target host, per minute."""

    def __init__(
        self,
        per_minute: float = PUNCHES_PER_MINUTE,
        per_target_per_minute: float = PUNCHES_PER_TARGET_PER_MINUTE,
    ) -> None:
        self._total = TokenBucket(per_minute / 60.0, per_minute)
        self._per_target: KeyedBuckets[str] = KeyedBuckets(
            per_target_per_minute / 60.0, per_target_per_minute, TRACKED_TARGETS
        )
        self.refused = 0  # for logs and tests

    def allow(self, target_host: str, now: float) -> bool:
        """Spend one punch at *target_host* if both budgets have one; False spends nothing."""
        self._total.refill(now)
        bucket = self._per_target.bucket(target_host)
        if bucket is not None:
            bucket.refill(now)
        if self._total.tokens < 1 or (bucket is not None and bucket.tokens < 1):
            self.refused += 1
            return False
        self._per_target.take(target_host, now)
        self._total.take(now)
        return True
