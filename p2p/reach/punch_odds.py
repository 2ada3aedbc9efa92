"""Whether a hole punch to a relayed volunteer can work, sans-IO: how long a fresh relayed
session waits for its punch before its first request goes out (p2p/session/pool.py).

A one-shot `gpunet ask` sends its request as soon as its session is up. A punch that works
lands within about a second of the relayed handshake (12 ms on a quiet lab, up to a SYN
retransmit later on a loaded one), so a request that waits for it goes direct; a punch that
cannot work would cost the same wait in TTFT on every ask. So the pool waits long
(`LIKELY_WAIT_S`) only when the punch is predicted to work, and briefly otherwise.

What the client knows at the relay's "ok" (relay_protocol.py's observed line, `RelaySeen`):

- **Its own NAT's mapping.** The relay saw the client's connection at `you`; the socket's own
  address is `local`. The same host: no NAT at all (nothing filters either). The same port:
  the NAT keeps a connection's local port for a new destination (Linux MASQUERADE does; full
  cone, address- and port-restricted NATs), so the punch SYN leaves from the port the
  volunteer aims at. Another port: a new port per destination (a symmetric NAT, MASQUERADE
  `--random-fully`), so the volunteer aims at the wrong one.
- **The volunteer's filter, from its record.** A record that lists the host the relay saw the
  volunteer at has the verdict `direct` or `mapped` (p2p/reach/state.py publishes the observed
  host only after a dial-back got in): its router lets in a host it has sent to, from any port.
  One that does not (`relayed`, or `unknown` before its first check) filters by port as far as
  the client can tell.
- **The volunteer's mapping**, when it told the relay its socket's local port (a spray line,
  relay_protocol.py: `RelaySeen.peer_keeps_port`); unknown (None) from a volunteer that did
  not (an older one, or one with `--no-hole-punch`).
- **Earlier punches** to the same volunteer from the same address (`PunchHistory`; only a
  long-lived pool has one: a gateway, a node's `--api`).

The rule, as the lab's matrix (docs/benchmarks.md) shows it: where both mappings are known and
exactly one NAT keeps the port, the punch is a port spray (port_spray.py, 98 % of sprays come
up, within 1.7 s in the lab): expected to work. Where both change the port, nothing works.
Otherwise the ordinary punch fails where the client's NAT changes the port and the volunteer
filters by port, and works in every other pair once the wait is long enough. Rejected: always
waiting long (1.5 s more TTFT for every ask that cannot punch), and learning only from history
(a one-shot ask has none).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

from p2p.bounded_lru import BoundedLRU
from p2p.host_port import AddressError, parse_host_port

# The wait for a punch predicted to work: every punch of the lab's matrix that worked had
# landed by then on a loaded 2-core machine (docs/benchmarks.md, "Direct share").
LIKELY_WAIT_S = 1.5
# Earlier outcomes are kept this long: about as long as a home router keeps a NAT mapping and
# the addresses behind it, and a bounded number of volunteers.
HISTORY_TTL_S = 600.0
HISTORY_PEERS = 1024


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _split(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, int]:
    try:
        host, port = parse_host_port(address)
    except AddressError:
        return None, 0
    return _ip(host), port


@attrs.frozen
class RelaySeen:
    """One relayed dial's addresses: the client's socket (`local`), the client's and the
    volunteer's connections as the relay saw them (`you`, `peer`), all `ip:port`; the hosts the
    volunteer's record lists (`listed_hosts`); what the volunteer's mapping is known to do
    (`peer_keeps_port`, None: unknown)."""

    local: str
    you: str
    peer: str
    listed_hosts: frozenset[str] = frozenset()
    peer_keeps_port: bool | None = None

    @property
    def own_nat(self) -> bool:
        """Whether a NAT stands between the client and the relay (the relay saw another host)."""
        local, you = _split(self.local)[0], _split(self.you)[0]
        return local is None or local != you

    @property
    def own_keeps_port(self) -> bool:
        """Whether the client's NAT (if any) kept the socket's port."""
        return _split(self.local)[1] == _split(self.you)[1] != 0

    @property
    def peer_listed(self) -> bool:
        """Whether the volunteer's record lists the host the relay saw it at."""
        peer = _split(self.peer)[0]
        return peer is not None and peer in {_ip(h) for h in self.listed_hosts}


def listed_hosts(addresses: Iterable[str]) -> frozenset[str]:
    """The hosts of a record's addresses (unreadable ones left out)."""
    hosts = set()
    for address in addresses:
        try:
            hosts.add(parse_host_port(address)[0])
        except AddressError:
            continue
    return frozenset(hosts)


@attrs.frozen
class PunchOdds:
    """The prediction: `likely` to work or not, and why (for logs and tests)."""

    likely: bool
    reason: str


def predict(seen: RelaySeen, *, earlier: bool | None = None) -> PunchOdds:
    """Whether the punch of the relayed dial *seen* is expected to work. *earlier*: whether the
    last punch to this volunteer from this address worked (None: none known), which decides
    when given."""
    if earlier is not None:
        return PunchOdds(
            earlier, f"the last punch to this peer {'worked' if earlier else 'failed'}"
        )
    own_keeps = not seen.own_nat or seen.own_keeps_port
    if seen.peer_keeps_port is not None and own_keeps != seen.peer_keeps_port:
        return PunchOdds(True, "a port spray: one NAT keeps the port, the other does not")
    if seen.peer_keeps_port is False:
        return PunchOdds(False, "both NATs change the port")
    if not own_keeps and not seen.peer_listed:
        return PunchOdds(False, "our NAT changes the port and the peer's filters by port")
    if not seen.own_nat:
        return PunchOdds(True, "no NAT on our side")
    if not own_keeps:
        return PunchOdds(True, "our NAT changes the port; the peer's filters by address only")
    return PunchOdds(True, "our NAT keeps the port")


def wait_bound(odds: PunchOdds, short_s: float, long_s: float = LIKELY_WAIT_S) -> float:
    """How long a fresh relayed session waits for its punch: *long_s* when it is expected to
    work, *short_s* otherwise (the pool's brief wait), never less than zero."""
    return max(0.0, long_s if odds.likely else short_s)


@attrs.frozen
class _Outcome:
    worked: bool
    at: float


class PunchHistory:
    """How the last punch to each volunteer went, per the client's own observed host (another
    network is another NAT), for `HISTORY_TTL_S`; at most `HISTORY_PEERS` entries."""

    def __init__(self, ttl_s: float = HISTORY_TTL_S, capacity: int = HISTORY_PEERS) -> None:
        self._ttl_s = ttl_s
        self._outcomes: BoundedLRU[tuple[str, str], _Outcome] = BoundedLRU(capacity)

    @staticmethod
    def _key(peer_id: str, seen: RelaySeen) -> tuple[str, str]:
        host = _split(seen.you)[0]
        return peer_id, str(host) if host is not None else ""

    def note(self, peer_id: str, seen: RelaySeen, worked: bool, now: float) -> None:
        self._outcomes.set(self._key(peer_id, seen), _Outcome(worked, now))

    def earlier(self, peer_id: str, seen: RelaySeen, now: float) -> bool | None:
        """The last outcome to *peer_id* from *seen*'s client address, None when none is
        known or it is older than the TTL."""
        outcome = self._outcomes.get(self._key(peer_id, seen))
        if outcome is None or now - outcome.at > self._ttl_s:
            return None
        return outcome.worked
