"""Which hosts this node has sent something to, and what an inbound connection proves.

A home router that filters by address (an "address-restricted" NAT) lets in anyone the host
behind it has sent a packet to, and nobody else. A dial-back from a helper the node just asked
therefore proves only that *contacted* hosts reach it (weak proof); strangers may still be
filtered. An inbound TCP connection from a host the node never sent anything to, from outside
its own network, proves that strangers get through (strong proof). docs/reachability.md has the
rule; `ReachState` (state.py) holds the verdict.

`ContactedHosts` is fed by every outbound path of the node: the DHT's requests
(`Dht.observe_requests`) and every TCP dial (`p2p.session.secure.DIAL_OBSERVER`: sessions,
dial-backs, relay connections, probes). The DHT calls it from its asyncio thread, hence the
lock. It is bounded; when it must forget a host it still remembers, it says "contacted" for
every host until that memory would have ended, so an overflow never turns into false proof.
"""

from __future__ import annotations

import collections
import ipaddress
import threading
import time
from collections.abc import Callable

# A NAT's filter forgets a contacted host after minutes (UDP) to hours (a TCP connection still
# open is "established", not filtered); an hour covers what a home router remembers of a host
# that is no longer talked to. The bound holds a busy DHT node's hour of contacts.
CONTACT_MEMORY_S = 3600.0
MAX_CONTACTED_HOSTS = 8192


def canonical_host(host: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 as IPv4, no zone, lower case."""
    text = host.strip().strip("[]").split("%", 1)[0].lower()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return text  # a name: kept as given (records carry addresses, not names)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class ContactedHosts:
    def __init__(
        self,
        *,
        max_hosts: int = MAX_CONTACTED_HOSTS,
        memory_s: float = CONTACT_MEMORY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_hosts = max_hosts
        self.memory_s = memory_s
        self._clock = clock
        self._hosts: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._blind_until = float("-inf")
        self.overflows = 0  # hosts forgotten before their memory ended (logs, tests)

    def sent(self, host: str) -> None:
        """This node sent something to *host* (any thread)."""
        key = canonical_host(host)
        now = self._clock()
        with self._lock:
            self._hosts.pop(key, None)
            self._hosts[key] = now
            while len(self._hosts) > self.max_hosts:
                _old, at = self._hosts.popitem(last=False)
                if now - at < self.memory_s:
                    self.overflows += 1
                    self._blind_until = max(self._blind_until, at + self.memory_s)

    def is_stranger(self, host: str) -> bool:
        """Whether this node has sent nothing to *host* within the memory (never True while a
        forgotten host could still be remembered by the router)."""
        key = canonical_host(host)
        now = self._clock()
        with self._lock:
            if now < self._blind_until:
                return False
            at = self._hosts.get(key)
            return at is None or now - at >= self.memory_s

    def __len__(self) -> int:
        return len(self._hosts)


# Addresses a home or carrier NAT hands out (RFC 1918, RFC 6598, RFC 4193).
_NAT_RANGES = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def behind_nat_range(host: str | None) -> bool:
    """Whether *host* is an address that routers hand out behind a NAT."""
    try:
        addr = ipaddress.ip_address(canonical_host(host or ""))
    except ValueError:
        return False
    return any(addr.version == net.version and addr in net for net in _NAT_RANGES)


def _network(host: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The /24 (IPv4) or /64 (IPv6) around *host*: a home LAN is no larger."""
    try:
        addr = ipaddress.ip_address(canonical_host(host))
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 64
    return ipaddress.ip_network(f"{addr}/{prefix}", strict=False)


def proves_strangers_reach(
    peer: str, local: str, contacted: ContactedHosts, observed_host: str | None = None
) -> bool:
    """Whether an inbound TCP connection from *peer* to this node's *local* address shows
    that strangers reach the node through whatever lies between: *peer* is a host the node
    never sent to, not on the node's own network (a neighbour on the LAN crosses no NAT; nor,
    from one private address to another, one in another subnet of a site or a carrier that
    shares the NAT), and not the node's own external address (a neighbour whose router
    hairpins)."""
    peer_net, local_net = _network(peer), _network(local)
    if peer_net is None or local_net is None:
        return False
    if peer_net == local_net or (behind_nat_range(peer) and behind_nat_range(local)):
        return False
    peer_ip = ipaddress.ip_address(canonical_host(peer))
    if peer_ip.is_loopback and not ipaddress.ip_address(canonical_host(local)).is_loopback:
        return False  # a process on this machine
    if observed_host is not None and canonical_host(observed_host) == canonical_host(peer):
        return False
    return contacted.is_stranger(peer)
