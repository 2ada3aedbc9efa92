"""What this node knows about how others reach it: the last reachability result, the observed
external host, a port-mapped address (from p2p/reach/port_mapping.py), whether a stranger has
reached it (p2p/reach/strangers.py), and the relays it holds reservations at. Every change wakes
the record's republisher (`changed`), so the record says what is true within a round trip of the
DHT.

Which addresses the record lists (`published_addresses`): the mapped address when the router
maps a port; the observed host with the node's own port when dial-backs got through directly;
else the bind address (a relayed node still lists it: clients on its LAN dial it directly,
everyone else through the relays that follow). A node bound to 0.0.0.0 whose hostname resolves
to loopback lists its LAN address instead, once a connection of its own showed it: 127.0.0.1
in a record sends others to their own machine.

Whether it holds relays (`wants_relays`): while it is "relayed", and while no stranger has
reached it with only weak proof (a dial-back from a helper it had sent to, which an
address-filtering router lets in), or before its first verdict when its own address is a
private one (RFC 1918, CGNAT, ULA: almost surely behind a NAT), so that it is served through
relays seconds after its start. Clients race its addresses first, then its relays, so a
reachable node loses nothing by the fallback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import trio

from p2p.dht.records import MAX_RELAYS, RelayHint
from p2p.host_port import format_host_port, parse_host_port
from p2p.reach.reachability import ReachResult
from p2p.reach.strangers import behind_nat_range


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(parse_host_port(address)[0]).is_loopback
    except ValueError:
        return False


class ReachState:
    def __init__(self) -> None:
        self.reach = "unknown"
        self.observed_host: str | None = None
        self.mapped: tuple[str, int] | None = None
        self.relays: tuple[RelayHint, ...] = ()
        self.weak = False  # the verdict rests on dial-backs from contacted hosts only
        self.strangers_reach = False  # an inbound connection from a stranger arrived
        self.local_host: str | None = None  # where its own connections leave from
        self._mapping_reported = trio.Event()
        self._changed = trio.Event()
        self._checked = trio.Event()
        self.version = 0  # counts changes: a republisher compares it instead of racing events
        self.checks = 0  # reachability checks finished (logs, tests)

    async def wait_changed(self, since: int | None = None) -> None:
        """Until the next change, or at once if *since* (a `version` read before) is stale."""
        if since is not None and since != self.version:
            return
        await self._changed.wait()

    def _touch(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    def set_mapped(self, host: str, port: int) -> None:
        """Port mapping's report: the router maps *host*:*port* to this node's session port."""
        self.mapping_settled()
        if self.mapped != (host, port):
            self.mapped = (host, port)
            self._touch()

    def clear_mapped(self) -> None:
        """Port mapping's report: nothing is mapped (no router, refused, or lost)."""
        self.mapping_settled()
        if self.mapped is not None:
            self.mapped = None
            self._touch()

    def set_result(self, result: ReachResult) -> None:
        """A reachability check's verdict; "unknown" (nobody answered) keeps the last one."""
        self.checks += 1
        if result.local_host is not None and result.local_host != self.local_host:
            self.local_host = result.local_host
            self._touch()
        if result.kind != "unknown":
            if self.observed_host is not None and result.observed_host != self.observed_host:
                self.strangers_reach = False  # another network: what strangers did says nothing
            now = (result.kind, result.observed_host, result.weak)
            if now != (self.reach, self.observed_host, self.weak):
                self.reach, self.observed_host, self.weak = now
                self._touch()
        self._checked.set()
        self._checked = trio.Event()

    def learn_local_host(self, host: str) -> None:
        """The address the node publishes before any check (its bind or LAN address)."""
        try:
            usable = not ipaddress.ip_address(host).is_loopback
        except ValueError:
            usable = False
        if usable and self.local_host is None:
            self.local_host = host
            self._touch()

    def note_stranger(self) -> None:
        """A host this node never sent to reached it from outside its network: strong proof."""
        if not self.strangers_reach:
            self.strangers_reach = True
            self._touch()

    @property
    def client_only(self) -> bool:
        """Whether the node takes part in the DHT as a client-only member: while "relayed"
        (others would add a contact they cannot reach and wait on it in their lookups). Not
        before the first verdict nor with weak proof: when most nodes start behind NATs, the
        few full members left would hold everyone's records and be everyone's only contacts
        (tried: in the NAT lab, nodes then lost their last contact and published nowhere)."""
        return self.reach == "relayed"

    @property
    def wants_relays(self) -> bool:
        if self.reach == "relayed":
            return True
        if self.strangers_reach:
            return False
        return self.weak if self.reach != "unknown" else behind_nat_range(self.local_host)

    def mapping_settled(self) -> None:
        """Port mapping's first outcome is in (a mapping, or none: no router, refused)."""
        self._mapping_reported.set()

    async def wait_mapping_reported(self) -> None:
        """Until port mapping reported its first outcome (a mapping, or none)."""
        await self._mapping_reported.wait()

    async def wait_checked(self) -> None:
        """Until the next reachability check ends (logs, tests)."""
        await self._checked.wait()

    def set_relays(self, relays: Sequence[RelayHint]) -> None:
        hints = tuple(dict.fromkeys(relays))[:MAX_RELAYS]
        if hints != self.relays:
            self.relays = hints
            self._touch()

    def published_addresses(self, bind_address: str) -> tuple[str, ...]:
        """The record's addresses, given the one the node would publish on its own."""
        if _is_loopback(bind_address) and self.local_host and not _is_loopback(self.local_host):
            bind_address = format_host_port(self.local_host, parse_host_port(bind_address)[1])
        if self.reach == "mapped" and self.mapped is not None:
            return tuple(dict.fromkeys((format_host_port(*self.mapped), bind_address)))
        if self.reach == "direct" and self.observed_host is not None:
            observed = format_host_port(self.observed_host, parse_host_port(bind_address)[1])
            if _is_loopback(bind_address) and not _is_loopback(observed):
                return (observed,)  # 127.0.0.1 in a record sends others to their own host
            return tuple(dict.fromkeys((observed, bind_address)))
        return (bind_address,)

    def published_relays(self) -> tuple[RelayHint, ...]:
        return self.relays if self.wants_relays else ()
