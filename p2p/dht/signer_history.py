"""Since when this node has known each signer, and the source network that first brought it.

A stranger can mint identities without end and choose every field of its records (expiry
included), but it cannot make an identity older than the first time we saw it, nor choose the
address its datagrams come from (a UDP source must receive the answer for a lookup to be worth
anything). The store and its answers prefer signers seen longer, shared fairly across source
networks, so a fresh crowd waits behind the nodes that were here first.

The network is the one that first stored the signer's record here, kept for as long as we
remember the signer: a stranger replaying an honest node's record from its own network cannot
move that node into the crowded network. (A record relayed by a hand-off counts for the
relayer's network; honest nodes hand off, so that is rarely the crowd's.)

Sans-IO: `now` is passed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import attrs

from p2p.bounded_lru import BoundedLRU

# A signer holding records is never forgotten (the store protects it); beyond those, this many
# recently gone signers are remembered, so an honest node whose record lapsed for a round keeps
# its seniority. One entry is ~200 bytes: 16384 entries, ~3 MiB. Matches MAX_TOTAL_RECORDS.
MAX_REMEMBERED_SIGNERS = 16384

# What one operator plausibly controls: an IPv4 /24, an IPv6 /48 (a typical site allocation).
IPV4_NETWORK_BITS = 24
IPV6_NETWORK_BITS = 48

# Our own records, and offers that name no source (local callers, older call sites).
OWN_NETWORK = "own"
UNKNOWN_NETWORK = "unknown"


def source_network(address: str | None) -> str:
    """The network a source address belongs to, as a string: '127.20.0.0/24', '2001:db8::/48'."""
    if address is None:
        return UNKNOWN_NETWORK
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return UNKNOWN_NETWORK
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = IPV4_NETWORK_BITS if ip.version == 4 else IPV6_NETWORK_BITS
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


@attrs.frozen
class SignerSeen:
    first_seen: float
    network: str


class SignerHistory:
    """peer_id -> `SignerSeen`, bounded; *keep(peer_id)* protects signers that hold records."""

    def __init__(
        self, capacity: int = MAX_REMEMBERED_SIGNERS, *, keep: Callable[[str], bool]
    ) -> None:
        self._seen: BoundedLRU[str, SignerSeen] = BoundedLRU(
            capacity, evictable=lambda peer, _seen: not keep(peer)
        )

    def lookup(self, peer_id: str, address: str | None, *, now: float) -> SignerSeen:
        """What we know of the signer, or what we would note if it is new (not remembered until
        `remember`: a refused record must not start an identity's seniority)."""
        seen = self._seen.peek(peer_id)
        return seen if seen is not None else SignerSeen(now, source_network(address))

    def remember(self, peer_id: str, seen: SignerSeen) -> None:
        self._seen.set(peer_id, seen)  # recently active: the last to be forgotten

    def own(self, peer_id: str) -> None:
        """Our own identity: older than anyone, in a network of its own."""
        self._seen.set(peer_id, SignerSeen(float("-inf"), OWN_NETWORK))

    def peek(self, peer_id: str) -> SignerSeen | None:
        return self._seen.peek(peer_id)

    def __len__(self) -> int:
        return len(self._seen)
