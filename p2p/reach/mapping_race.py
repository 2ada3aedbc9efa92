"""The node's port mapping: UPnP-IGD (port_mapping.py) and NAT-PMP, then PCP where NAT-PMP is
not spoken (natpmp_client.py), at once, and whichever is ready first holds the router. NAT-PMP
and PCP answer in milliseconds where UPnP's discovery takes seconds, so a router that speaks
several is usually mapped by NAT-PMP; a router that speaks one of them is mapped by that one,
with nothing to configure.

Only one protocol maps (`MappingClaim`): the other finds the claim taken when it is ready and
keeps off the router, looking again after its rediscovery pause. The caller sees one holder:
`on_change` gets the mapping of whichever protocol holds it, `task_status.started` the first
mapping, or None once every protocol has said it maps nothing.

`ports_mapped_first` is how a node starts it: before its DHT socket sends anything, because a
router's connection tracking lets a mapping made later lose to datagrams that came first
(docs/reachability.md, "Map before joining").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import trio

from p2p.reach.natpmp_client import hold_natpmp_mappings, hold_pcp_mappings
from p2p.reach.port_mapping import (
    DEFAULT_LEASE_S,
    MappingClaim,
    OnChange,
    PortMapping,
    hold_upnp_mappings,
    is_loopback,
)

log = logging.getLogger(__name__)

# How long a starting node waits for the first outcome before it joins the DHT anyway: NAT-PMP
# and PCP answer in milliseconds on a LAN, UPnP's SSDP discovery takes 2 s (port_mapping.py).
FIRST_OUTCOME_WAIT_S = 3.0

# (udp_port, tcp_port, *, on_change, internal_host, lease_s, claim, task_status)
Holder = Callable[..., Awaitable[None]]
# Groups run at once; within a group each holder starts once the one before it reported that it
# maps nothing. PCP only where NAT-PMP is not spoken: on a gateway that speaks both (miniupnpd
# does) the older, simpler protocol maps, the same one every time; a PCP-only gateway answers
# NAT-PMP with "unsupported version" at once, so PCP loses no time there.
HOLDERS: tuple[tuple[Holder, ...], ...] = (
    (hold_natpmp_mappings, hold_pcp_mappings),
    (hold_upnp_mappings,),
)


async def hold_port_mappings(
    udp_port: int,
    tcp_port: int,
    *,
    on_change: OnChange = lambda _mapping: None,
    internal_host: str | None = None,
    lease_s: int = DEFAULT_LEASE_S,
    holders: Sequence[Sequence[Holder]] = HOLDERS,
    task_status: trio.TaskStatus[PortMapping | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Map *udp_port* and *tcp_port* on the home router by whichever protocol it speaks, and
    hold the mappings until cancelled (each holder removes its own on the way out)."""
    if is_loopback(internal_host):
        log.debug("port mapping: off, the node listens on loopback only")
        task_status.started(None)
        return
    claim = MappingClaim()
    count = sum(len(group) for group in holders)
    send, receive = trio.open_memory_channel[PortMapping | None](count)
    async with trio.open_nursery() as nursery:
        for group in holders:
            runs: list[Holder] = [
                partial(
                    holder,
                    udp_port,
                    tcp_port,
                    on_change=on_change,
                    internal_host=internal_host,
                    lease_s=lease_s,
                    claim=claim,
                )
                for holder in group
            ]
            nursery.start_soon(_in_turn, runs, send)
        first: PortMapping | None = None
        async with receive:
            for _ in range(count):  # a group that mapped sends no more
                first = await receive.receive()
                if first is not None:
                    break
        task_status.started(first)


async def _in_turn(runs: list[Holder], send: trio.MemorySendChannel[PortMapping | None]) -> None:
    """Run a group's holders one after the other until one maps; each outcome goes to *send*
    (every holder started keeps running: it looks again after its rediscovery pause)."""
    async with trio.open_nursery() as nursery:
        for run in runs:
            outcome = await nursery.start(run)
            with contextlib.suppress(trio.BrokenResourceError):  # the race was decided already
                send.send_nowait(outcome)
            if outcome is not None:
                return


async def map_ports_first(
    nursery: trio.Nursery,
    holder: Callable[..., Awaitable[None]],
    on_settled: Callable[[], None] = lambda: None,
    wait_s: float = FIRST_OUTCOME_WAIT_S,
) -> None:
    """Start *holder* (`hold_port_mappings` with its ports bound) in *nursery*, where it holds
    the mappings for the nursery's life, and return once its first outcome is in or *wait_s*
    passed, whichever is first; *on_settled* runs when that outcome comes, late ones included.

    A node calls it before its DHT socket sends its first datagram. Until then nobody knows
    the router's external address and port for that socket, so nobody can send to it before
    the mapping exists: a datagram that does (a peer that learned the address from the
    bootstrap) makes Linux conntrack on the router (miniupnpd's home) keep an entry to the
    router itself that the mapping never replaces while that peer keeps sending, and drop the
    node's own datagrams to that peer once the mapping pins its source port."""
    settled = trio.Event()

    async def run() -> None:
        await nursery.start(holder)
        on_settled()
        settled.set()

    nursery.start_soon(run)
    with trio.move_on_after(wait_s):
        await settled.wait()
    if not settled.is_set():
        log.debug("port mapping: no outcome in %.0f s; joining the DHT meanwhile", wait_s)


@contextlib.asynccontextmanager
async def ports_mapped_first(
    holder: Callable[..., Awaitable[None]] | None,
    on_settled: Callable[[], None] = lambda: None,
    wait_s: float = FIRST_OUTCOME_WAIT_S,
) -> AsyncIterator[None]:
    """`map_ports_first` for the body of an ``async with``: the node joins and serves in the
    body, *holder* holds the mappings until the body ends (then they are removed). None: no
    port mapping, the body just runs. An error of the body comes out as itself, not inside an
    exception group (a failed join's `NodeError` stays the one clear line it is)."""
    if holder is None:
        yield
        return
    failed: Exception | None = None
    async with trio.open_nursery() as nursery:
        await map_ports_first(nursery, holder, on_settled, wait_s)
        try:
            yield
        except Exception as exc:
            failed = exc
        nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
