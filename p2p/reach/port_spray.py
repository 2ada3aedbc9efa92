"""The port spray's plan, sans-IO: a hole punch between a symmetric NAT and a port-restricted one
by the birthday paradox. `spray.py` is the trio code that follows it; `hole_punch.py` calls it.

Why: a symmetric NAT (Linux MASQUERADE --random-fully) gives each new destination a random
external port, so the port the relay observed for its side is wrong for the peer; a
port-restricted NAT lets in only the exact host:port its side sent to. The ordinary punch
(punch_rules.py) cannot meet there. Instead:

- the symmetric side, the *opener*, connects `opener_sockets` times (N) to the peer's observed
  address: each connection gets a random external port from its NAT and sits in SYN_SENT (the
  peer's router drops the unsolicited SYNs silently, as most home routers and the lab's do), so
  its NAT keeps N mappings towards exactly that address;
- the port-preserving side, the *sprayer*, waits `lead_s` (the opener's SYNs go out first), then
  connects from the port of its relay connection (which its NAT keeps: that is what the peer's
  mappings point at) to `sprayer_ports` (M) random ports of the peer's observed host, in waves
  of `wave_sockets` sockets that live `wave_s` each. It also listens on that port, so where its
  own NAT lets the opener's SYNs in (no NAT, full cone, address-restricted) the first one wins.

A sprayer port equal to one of the opener's external ports is a TCP simultaneous open that comes
up. P(hit) = 1 - (1 - N/R)^M ~ 1 - exp(-N*M/R) with R = `PORT_RANGE` (Linux's NAT picks from
1024..65535 for ports above 1023): N = 256, M = 1024 gives 98.3 %.

Who is which comes from the relay (relay_protocol.py's spray line): each side's observed address
against its local port says whether its NAT keeps ports, and the peer's local port (as the peer
told the relay) against the peer's observed one says the same about the peer. A spray runs only
when exactly one side keeps its port; two port-keeping sides punch the ordinary way, two
symmetric ones stay relayed (N*M would have to be ~R^2).

Bounds (this must never become a scanner): the only target host is the peer's observed host of
an authenticated relayed circuit (`SprayPlan.targets` asserts it), at most `sprayer_ports` SYNs
to it (and one to its observed address: spray.py) and `opener_sockets` to its one address,
`AT_ONCE` sprays at a time per node, one per peer host every `PER_HOST_INTERVAL_S`, `PER_HOUR`
in all;
sockets at once within the descriptors left (`sockets_for`); every socket closed at the end.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence

import attrs

from p2p.bounded_lru import BoundedLRU

PORT_LOW = 1024  # Linux NAT: a source port >= 1024 is mapped into 1024..65535
PORT_RANGE = 65536 - PORT_LOW
OPENER_SOCKETS = 256
SPRAYER_PORTS = 1024
WAVE_SOCKETS = 256
WAVE_S = 0.4  # a hit answers within one round trip of the SYN that made it
LEAD_S = 0.25  # the opener's SYNs first: they make the mappings the sprayer's SYNs hit
SETTLE_S = 1.0  # after the last wave: a late SYN-ACK, the kernel's retransmission at 1 s
MIN_SOCKETS = 32  # fewer sockets than this is not worth the SYNs
# A client asking again soon (a one-shot `ask` keeps no punched session) sprays again; one
# host still gets at most M + 1 SYNs per interval, and PER_HOUR bounds the node in all.
PER_HOST_INTERVAL_S = 15.0
PER_HOUR = 30
# Two clients asking a symmetric volunteer at once both get their spray (measured: with one at
# a time the second fell back to the ordinary punch, which cannot join those NATs).
AT_ONCE = 2
TRACKED_HOSTS = 256


class Role(enum.Enum):
    OPENER = "opener"  # behind the symmetric NAT: N connections to the peer's observed address
    SPRAYER = "sprayer"  # behind the port-keeping one: M ports of the peer's host


def keeps_port(local_port: int, observed_port: int) -> bool:
    """Whether a NAT kept the port of a connection: its local port is the one the relay saw."""
    return local_port == observed_port


def role_for(
    local_port: int, observed_port: int, peer_local_port: int, peer_observed_port: int
) -> Role | None:
    """This side's role for one circuit, from its relay connection's local port and the port the
    relay saw for it, and the same two for the peer (its local port as it told the relay; 0 when
    it did not: an older peer, which sprays nothing). None: no spray (the ordinary punch)."""
    if not (0 < local_port < 65536 and 0 < peer_local_port < 65536):
        return None
    mine = keeps_port(local_port, observed_port)
    theirs = keeps_port(peer_local_port, peer_observed_port)
    if mine == theirs:
        return None  # both keep ports: the ordinary punch; neither: out of reach
    return Role.SPRAYER if mine else Role.OPENER


def hit_probability(opener: int, sprayer: int, port_range: int = PORT_RANGE) -> float:
    """P(one of *sprayer* random ports is one of *opener* random external ports)."""
    if opener <= 0 or sprayer <= 0:
        return 0.0
    if opener >= port_range:
        return 1.0
    return 1.0 - math.exp(sprayer * math.log1p(-opener / port_range))


@attrs.frozen
class SprayPlan:
    """The numbers of one spray; the defaults are what a node uses."""

    opener_sockets: int = OPENER_SOCKETS
    sprayer_ports: int = SPRAYER_PORTS
    wave_sockets: int = WAVE_SOCKETS
    wave_s: float = WAVE_S
    lead_s: float = LEAD_S
    settle_s: float = SETTLE_S

    def __attrs_post_init__(self) -> None:
        if not 0 < self.opener_sockets <= 4096 or not 0 < self.sprayer_ports <= PORT_RANGE:
            raise ValueError("spray: opener sockets 1..4096, sprayer ports 1..64512")
        if not 0 < self.wave_sockets <= 4096 or self.wave_s <= 0 or self.lead_s < 0:
            raise ValueError("spray: wave sockets 1..4096, a positive wave, no negative lead")

    @property
    def waves(self) -> int:
        return -(-self.sprayer_ports // self.wave_sockets)

    @property
    def window_s(self) -> float:
        """How long either side keeps its sockets: the sprayer's lead and waves, then settling."""
        return self.lead_s + self.waves * self.wave_s + self.settle_s

    def odds(self) -> float:
        return hit_probability(self.opener_sockets, self.sprayer_ports)

    def sockets_for(self, role: Role, room: int) -> int:
        """Sockets at once for *role* within *room* free descriptors (half of them at most:
        the node's sessions need the rest); 0 when that is below `MIN_SOCKETS`."""
        want = self.opener_sockets if role is Role.OPENER else self.wave_sockets
        got = min(want, max(0, room) // 2)
        return got if got >= MIN_SOCKETS else 0

    def ports(self, rng: random.Random) -> list[int]:
        """The sprayer's target ports: distinct, uniform over the NAT's range."""
        return rng.sample(range(PORT_LOW, 65536), self.sprayer_ports)

    def waves_of(self, ports: Sequence[int], per_wave: int) -> list[list[int]]:
        """*ports* cut into waves of *per_wave* (the sockets the descriptors allow)."""
        step = max(1, per_wave)
        return [list(ports[i : i + step]) for i in range(0, len(ports), step)]

    @staticmethod
    def targets(peer_host: str, ports: Sequence[int]) -> list[tuple[str, int]]:
        """The sprayer's (host, port) targets: the peer's observed host and nothing else."""
        if not peer_host:
            raise ValueError("spray: no peer host")
        return [(peer_host, int(p)) for p in ports if PORT_LOW <= int(p) < 65536]


class SprayBudget:
    """How often a node sprays: `at_once` at a time (each takes at most half the free
    descriptors, spray.py), one per peer host every `per_host_s`, `per_hour` in all (a sliding
    hour). Sans-IO: the caller passes `now`."""

    def __init__(
        self,
        per_host_s: float = PER_HOST_INTERVAL_S,
        per_hour: int = PER_HOUR,
        tracked: int = TRACKED_HOSTS,
        at_once: int = AT_ONCE,
    ) -> None:
        self.per_host_s = per_host_s
        self.at_once = at_once
        self.per_hour = per_hour
        self._last: BoundedLRU[str, float] = BoundedLRU(tracked)
        self._recent: list[float] = []
        self.running = 0
        self.refused = 0  # for logs and tests

    def begin(self, host: str, now: float) -> bool:
        """Start a spray at *host* if every bound allows (then `end()` when done); False spends
        nothing."""
        self._recent = [t for t in self._recent if now - t < 3600.0]
        last = self._last.peek(host)
        if (
            self.running >= self.at_once
            or len(self._recent) >= self.per_hour
            or (last is not None and now - last < self.per_host_s)
        ):
            self.refused += 1
            return False
        self.running += 1
        self._recent.append(now)
        self._last.set(host, now)
        return True

    def end(self) -> None:
        self.running = max(0, self.running - 1)

    @property
    def active(self) -> bool:
        return self.running > 0
