"""The node's port mapping: UPnP-IGD (port_mapping.py) and NAT-PMP, then PCP where NAT-PMP is
not spoken (natpmp_client.py), at once, and whichever is ready first holds the router. NAT-PMP
and PCP answer in milliseconds where UPnP's discovery takes seconds, so a router that speaks
several is usually mapped by NAT-PMP; a router that speaks one of them is mapped by that one,
with nothing to configure.

Only one protocol maps (`MappingClaim`): the other finds the claim taken when it is ready and
keeps off the router, looking again after its rediscovery pause. The caller sees one holder:
`on_change` gets the mapping of whichever protocol holds it, `task_status.started` the first
mapping, or None once every protocol has said it maps nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
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
