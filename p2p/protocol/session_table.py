"""The node's established sessions: how many, from where, and when each must go. Sans-IO.

A session that finished its Noise handshake is authenticated, but only as *some* key: keys cost
nothing, so an authenticated stranger is still a stranger. Without bounds, about a thousand
sessions that finish the handshake and then send nothing use up a node's 1,024 file descriptors,
and every legitimate client is refused until the attacker lets go (issue #14, attack 2). The
rules here bound what silent or idle sessions can hold:

- **Caps** in total, per source (an IPv4 address or an IPv6 /64, as `source_key` gives it) and
  per source network (an IPv4 /24 or an IPv6 /48: what one customer of a hosting provider or one
  home usually holds).
- **Deadlines.** A session must start a request within `first_request_s` of its handshake, and
  one whose requests have all finished goes `idle_s` after the last one ended. While a request is
  in flight a session has no deadline here (the node's per-request deadline bounds that).
- **Eviction instead of refusal.** A newcomer over a cap closes the idlest session of the group
  that is full (its source, its network, or for the total cap the most crowded network), so a
  crowd that fills the table cannot lock a client from another network out: the SYN-flood lesson
  of `HandshakeAdmission` again. A session with a request in flight is never evicted; when no
  session of the group is idle, the newcomer is refused. Sessions with requests in flight are
  bounded by the node's slots and queue (every other request is refused at once and ends), far
  below `max_sessions`, so the total cap always finds an idle session to evict.

The caller passes the time and, per session, a callback that closes it; the trio adapter is
`p2p/session/secure.py` (`serve_sessions`), fed by `p2p/node/connection.py`, which reports each
session's number of live requests.

Rejected alternatives: refusing newcomers when full (the table stays full of silent sessions and
honest clients are refused: what the issue measured); evicting the oldest session (a hoarder
refreshes by reconnecting, and an honest long-lived gateway session would go first); a deadline
on every session regardless of activity (a gateway's pooled session serving a stream for
minutes would be cut).
"""

from __future__ import annotations

import collections
import ipaddress
import math
from collections.abc import Callable

import attrs

# --- limits; every number is per node (see docs/security.md for the descriptor budget). ---
# Established sessions in total. Each holds one descriptor; with the handshake table's 256
# (p2p/session/secure.py MAX_HALF_OPEN_HANDSHAKES) and a few dozen for listeners, the DHT
# socket, model files and the runtime, the node stays under the usual soft limit of 1,024
# descriptors (p2p/session/secure.py NODE_DESCRIPTOR_BOUND). An honest client or gateway needs
# one session per node.
MAX_SESSIONS = 512
# Per source address: several users behind one NAT each keep one pooled session; a host holding
# a large share of the table does not get it.
MAX_SESSIONS_PER_SOURCE = 16
# Per source network (IPv4 /24, IPv6 /48): a few NATed hosts of one network; 8 such networks are
# needed to fill the table, and even then newcomers from elsewhere evict their idlest.
MAX_SESSIONS_PER_NETWORK = 64
# A session must start its first request this soon after its handshake. A client opens a session
# to send a request (p2p/session/pool.py opens on demand), so one round trip is all it needs;
# 10 s matches the handshake deadline (HANDSHAKE_TIMEOUT_S) for slow links.
FIRST_REQUEST_S = 10.0
# A session whose requests have all finished closes this long after the last one. Three times
# the client pool's IDLE_CLOSE_S (60 s, p2p/session/pool.py), so an honest pooled session is
# always closed by its client first, never cut under it by the node.
IDLE_S = 180.0
# The prefix lengths of a "source network" for the per-network cap.
IPV4_NETWORK_PREFIX = 24
IPV6_NETWORK_PREFIX = 48


def source_key(address: object) -> str:
    """The unit of per-source limits for a peer address as getpeername() returns it: the IPv4
    address, or the /64 of an IPv6 address (IPv4-mapped IPv6 counts as IPv4)."""
    host = address[0] if isinstance(address, tuple) and address else address
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def network_key(source: str) -> str:
    """The source network of a `source_key` (an address or an IPv6 /64): its /24 or /48."""
    try:
        net = ipaddress.ip_network(source, strict=False)
    except ValueError:
        return source
    prefix = IPV4_NETWORK_PREFIX if net.version == 4 else IPV6_NETWORK_PREFIX
    return str(net.supernet(new_prefix=prefix)) if net.prefixlen > prefix else str(net)


@attrs.frozen
class SessionTableLimits:
    max_sessions: int = MAX_SESSIONS
    max_per_source: int = MAX_SESSIONS_PER_SOURCE
    max_per_network: int = MAX_SESSIONS_PER_NETWORK
    first_request_s: float = FIRST_REQUEST_S
    idle_s: float = IDLE_S


@attrs.define
class _Session:
    source: str
    network: str
    close: Callable[[], None]
    live_requests: int = 0
    served: bool = False  # a request has started on it
    last_active: float = 0.0  # handshake done, or last request ended


class SessionTable:
    """Which established sessions may stay. ``admit`` returns a ticket, or None: close the
    newcomer. ``requests_changed`` reports a session's live requests; ``deadline`` says when it
    must be closed (inf while a request is in flight); ``release`` ends it, however it ended.
    Evicted sessions are closed through their callback and leave the table at once."""

    def __init__(self, limits: SessionTableLimits | None = None) -> None:
        self.limits = limits or SessionTableLimits()
        self._sessions: dict[int, _Session] = {}
        self._per_source: collections.Counter[str] = collections.Counter()
        self._per_network: collections.Counter[str] = collections.Counter()
        self._next_ticket = 0
        # Counters for logs, metrics and tests.
        self.admitted = 0
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions_from(self, source: str) -> int:
        return self._per_source[source]

    def admit(self, source: str, now: float, close: Callable[[], None]) -> int | None:
        network = network_key(source)
        lim = self.limits
        # Checked in turn, each after the eviction before it: a source over its share gives way
        # to itself first, so one eviction usually settles all three caps.
        caps: tuple[tuple[Callable[[], bool], Callable[[_Session], bool] | None], ...] = (
            (lambda: self._per_source[source] >= lim.max_per_source, lambda s: s.source == source),
            (
                lambda: self._per_network[network] >= lim.max_per_network,
                lambda s: s.network == network,
            ),
            (lambda: len(self._sessions) >= lim.max_sessions, None),
        )
        for over, group in caps:
            if over() and not self._evict_idlest(group):
                self.refused += 1
                return None
        ticket = self._next_ticket
        self._next_ticket += 1
        self._sessions[ticket] = _Session(source, network, close, last_active=now)
        self._per_source[source] += 1
        self._per_network[network] += 1
        self.admitted += 1
        return ticket

    def requests_changed(self, ticket: int, live: int, now: float) -> None:
        session = self._sessions.get(ticket)
        if session is None:
            return
        if live > 0:
            session.served = True
        elif session.live_requests > 0:
            session.last_active = now
        session.live_requests = live

    def deadline(self, ticket: int) -> float:
        """When the session must be closed unless a request starts; -inf once it left."""
        session = self._sessions.get(ticket)
        if session is None:
            return -math.inf
        if session.live_requests:
            return math.inf
        wait = self.limits.idle_s if session.served else self.limits.first_request_s
        return session.last_active + wait

    def release(self, ticket: int) -> None:
        session = self._sessions.pop(ticket, None)
        if session is not None:
            self._forget(session)

    def _forget(self, session: _Session) -> None:
        pairs = ((self._per_source, session.source), (self._per_network, session.network))
        for counter, key in pairs:
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def _evict_idlest(self, group: Callable[[_Session], bool] | None) -> bool:
        """Close the idlest session of *group* (None: of the most crowded network); False when
        every session there has a request in flight."""
        idle = [(t, s) for t, s in self._sessions.items() if not s.live_requests]
        if group is not None:
            idle = [(t, s) for t, s in idle if group(s)]
        if not idle:
            return False
        # The most crowded network first, the longest idle within it.
        ticket, session = min(
            idle, key=lambda ts: (-self._per_network[ts[1].network], ts[1].last_active)
        )
        del self._sessions[ticket]
        self._forget(session)
        self.evicted += 1
        session.close()
        return True
