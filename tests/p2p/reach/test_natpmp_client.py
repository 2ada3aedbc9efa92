"""The NAT-PMP and PCP holder (p2p/reach/natpmp_client.py) against a scripted gateway: a real UDP
socket on 127.0.0.1 that speaks RFC 6886 (and RFC 6887 when asked to) and misbehaves on demand.
And the race of the protocols (p2p/reach/mapping_race.py): only one of them maps the router."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
import trio.testing

from p2p.reach.mapping_race import hold_port_mappings
from p2p.reach.natpmp_client import hold_natpmp_mappings, hold_pcp_mappings
from p2p.reach.port_mapping import PortMapping, hold_upnp_mappings
from tests.netns.test_port_mapping_rules import ScriptedRouter, Watch


class Gateway:
    """A NAT-PMP gateway on a loopback port: keeps mappings by (proto, internal port)."""

    def __init__(
        self,
        *,
        refuse: int = 0,
        refuse_tcp: int = 0,
        garbage_first: bool = False,
        pcp: bool = False,
        natpmp: bool = True,
    ):
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.refuse = refuse
        self.refuse_tcp = refuse_tcp
        self.garbage_first = garbage_first
        self.pcp, self.natpmp = pcp, natpmp
        self.epoch = 5000
        self.external_ports: dict[str, int] = {}  # an external port other than the one asked for
        self.mappings: dict[tuple[str, int], tuple[int, int]] = {}
        self.requests: list[bytes] = []
        self.nonces: dict[tuple[str, int], bytes] = {}

    async def bind(self) -> int:
        await self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    async def serve(self) -> None:
        while True:
            data, peer = await self.sock.recvfrom(64)
            self.requests.append(data)
            if self.garbage_first:
                await self.sock.sendto(b"\x00\x80\x00", peer)  # short: must be skipped
                await self.sock.sendto(bytes([0, 0xFF]) + bytes(10), peer)  # no such opcode
            await self.sock.sendto(self.answer(data), peer)

    def answer(self, data: bytes) -> bytes:
        if data[0] == 2 and self.pcp:
            return self.pcp_answer(data)
        if data[0] != 0 or not self.natpmp:  # "unsupported version", in the version it speaks
            if self.pcp:
                return bytes([2, 0x80 | data[1], 0, 1]) + bytes(20)
            return struct.pack("!BBHI", 0, 128 + (data[1] & 0x7F), 1, self.epoch)
        op = data[1]
        result = self.refuse
        if op == 0:
            return struct.pack("!BBHI", 0, 128, result, self.epoch) + bytes([198, 51, 100, 9])
        _, _, _, internal, external, lifetime = struct.unpack("!BBHHHI", data)
        proto = "UDP" if op == 1 else "TCP"
        if proto == "TCP" and self.refuse_tcp:
            result = self.refuse_tcp
        if result == 0 and lifetime == 0:
            self.mappings.pop((proto, internal), None)
        elif result == 0:
            external = self.external_ports.get(proto, external)
            self.mappings[(proto, internal)] = (external, lifetime)
        return struct.pack(
            "!BBHIHHI", 0, 128 + op, result, self.epoch, internal, external, lifetime
        )

    def pcp_answer(self, data: bytes) -> bytes:
        op, lifetime = data[1], struct.unpack_from("!I", data, 4)[0]
        head = struct.pack("!BBBBII", 2, 0x80 | op, 0, self.refuse, lifetime, self.epoch)
        if op == 0:
            return head + bytes(12)
        nonce, body = data[24:36], data[36:44]
        number, internal, external = struct.unpack("!B3xHH", body)
        proto = "UDP" if number == 17 else "TCP"
        if self.refuse == 0 and lifetime == 0:
            self.mappings.pop((proto, internal), None)
        elif self.refuse == 0:
            external = self.external_ports.get(proto, external)
            self.mappings[(proto, internal)] = (external, lifetime)
            self.nonces[(proto, internal)] = nonce
        ip = bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 9])
        return head + bytes(12) + nonce + struct.pack("!B3xHH", number, internal, external) + ip


async def holding(
    gw: Gateway, port: int, body: Callable[[Any], Awaitable[None]], **more: Any
) -> PortMapping | None:
    async with trio.open_nursery() as serving:  # outlives the holder: it answers the deletes
        serving.start_soon(gw.serve)
        async with trio.open_nursery() as nursery:
            first: PortMapping | None = await nursery.start(
                partial(
                    hold_natpmp_mappings,
                    8468,
                    8469,
                    find_gateway=lambda: "127.0.0.1",
                    gateway_port=port,
                    rediscover_s=3600,
                    **more,
                )
            )
            await body(first)
            nursery.cancel_scope.cancel()
        serving.cancel_scope.cancel()
    return first


async def nothing(_first: object) -> None:
    pass


async def test_maps_both_ports_and_removes_them_when_cancelled() -> None:
    gw, seen = Gateway(), Watch()
    with trio.fail_after(10):
        port = await gw.bind()

        async def check(first: object) -> None:
            assert gw.mappings == {("UDP", 8468): (8468, 3600), ("TCP", 8469): (8469, 3600)}

        first = await holding(gw, port, check, on_change=seen)
    assert first == PortMapping("198.51.100.9", 8468, 8469, 3600, "nat-pmp://127.0.0.1")
    assert seen.calls == [first]
    assert gw.mappings == {}  # deleted by the shielded cleanup after the cancel


async def test_the_gateways_choice_of_port_is_taken_and_garbage_skipped() -> None:
    gw = Gateway(garbage_first=True)
    gw.external_ports["TCP"] = 40123
    with trio.fail_after(10):
        first = await holding(gw, await gw.bind(), nothing)
    assert isinstance(first, PortMapping) and (first.udp_port, first.tcp_port) == (8468, 40123)


async def test_a_refusal_maps_nothing_and_half_a_mapping_is_not_left() -> None:
    for gw in (Gateway(refuse=2), Gateway(refuse_tcp=4)):
        seen = Watch()
        with trio.fail_after(10):
            first = await holding(gw, await gw.bind(), nothing, on_change=seen)
        assert first is None and seen.calls == []
        assert gw.mappings == {}


async def test_no_gateway_or_a_closed_port_is_none_at_once() -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # ICMP port unreachable from here on
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            for find in (lambda: None, lambda: "127.0.0.1"):
                first = await nursery.start(
                    partial(hold_natpmp_mappings, 1, 2, find_gateway=find, gateway_port=port)
                )
                assert first is None
            nursery.cancel_scope.cancel()


async def test_renewed_at_half_the_lifetime_and_remapped_after_a_restart() -> None:
    gw, seen = Gateway(), Watch()

    async def body(first: object) -> None:
        await seen.until(2)  # renewed after 1 s (half of 2)
        maps = sum(1 for r in gw.requests if r[1] == 2)
        gw.epoch = 1  # the gateway rebooted: its epoch went back
        gw.mappings.clear()
        await seen.until(3)  # noticed at the next epoch check (0.2 s), not at the renewal
        assert sum(1 for r in gw.requests if r[1] == 2) == maps + 1
        assert ("TCP", 8469) in gw.mappings

    with trio.fail_after(10):
        await holding(gw, await gw.bind(), body, on_change=seen, lease_s=2, epoch_check_s=0.2)
    assert seen.calls[0] == seen.calls[1] == seen.calls[2]


async def race(gw: Gateway | None, router: ScriptedRouter | None) -> tuple[Any, list[Any]]:
    """Both protocols against *gw* and *router*; UPnP's discovery ends after NAT-PMP's first
    answer (in a real LAN it takes 2 s, NAT-PMP milliseconds)."""
    seen: list[PortMapping | None] = []
    port = await gw.bind() if gw is not None else 9  # discard: nobody listens
    discovered = trio.Event()
    answered = trio.Event() if gw is not None and router is not None else None

    def discover() -> ScriptedRouter | None:
        if answered is not None:
            trio.from_thread.run(answered.wait)
        trio.from_thread.run_sync(discovered.set)
        return router

    at_gateway: dict[str, Any] = {
        "find_gateway": lambda: "127.0.0.1",
        "gateway_port": port,
        "rediscover_s": 3600,
    }
    holders = (  # the node's order (mapping_race.HOLDERS), at the scripted gateway and router
        (partial(hold_natpmp_mappings, **at_gateway), partial(hold_pcp_mappings, **at_gateway)),
        (partial(hold_upnp_mappings, discover=discover, rediscover_s=3600),),
    )
    async with trio.open_nursery() as serving:
        if gw is not None:
            serving.start_soon(gw.serve)
        async with trio.open_nursery() as nursery:
            first = await nursery.start(
                partial(hold_port_mappings, 8468, 8469, on_change=seen.append, holders=holders)
            )
            if answered is not None:
                answered.set()
            await discovered.wait()
            await trio.testing.wait_all_tasks_blocked()  # UPnP looked at the claim
            nursery.cancel_scope.cancel()
        serving.cancel_scope.cancel()
    return first, seen


async def test_the_race_maps_by_one_protocol_only() -> None:
    with trio.fail_after(10):
        gw, router = Gateway(), ScriptedRouter()
        first, seen = await race(gw, router)
        assert first.igd.startswith("nat-pmp://") and seen == [first]
        assert router.adds == 0  # UPnP kept off the router NAT-PMP holds
        router = ScriptedRouter()
        first, seen = await race(None, router)  # a router with UPnP only
        assert first.igd == router.control_url and seen == [first]
        first, seen = await race(Gateway(refuse=2), None)
        assert first is None and seen == []
        both = Gateway(pcp=True)  # speaks NAT-PMP and PCP: NAT-PMP maps, PCP is not asked
        first, seen = await race(both, None)
        assert first.igd.startswith("nat-pmp://") and seen == [first]
        assert not any(r[0] == 2 for r in both.requests)
        pcp_only = Gateway(pcp=True, natpmp=False)  # NAT-PMP told "unsupported": PCP maps
        first, seen = await race(pcp_only, None)
        assert first.igd.startswith("pcp://") and seen == [first]


async def test_pcp_maps_both_ports_under_one_nonce_each_and_removes_them() -> None:
    gw, seen = Gateway(pcp=True, natpmp=False), Watch()
    gw.external_ports["UDP"] = 40002

    async def check(first: object) -> None:
        assert gw.mappings == {("UDP", 8468): (40002, 3600), ("TCP", 8469): (8469, 3600)}
        assert gw.nonces[("UDP", 8468)] != gw.nonces[("TCP", 8469)]

    with trio.fail_after(10):
        first = await holding(gw, await gw.bind(), check, on_change=seen, use_pcp=True)
    assert first == PortMapping("198.51.100.9", 40002, 8469, 3600, "pcp://127.0.0.1")
    assert seen.calls == [first] and gw.mappings == {}  # deleted with the same nonces
    deletes = [r for r in gw.requests if r[0] == 2 and r[1] == 1 and r[4:8] == bytes(4)]
    assert {r[24:36] for r in deletes} == set(gw.nonces.values())


async def test_a_gateway_without_pcp_or_without_natpmp_says_so_at_once() -> None:
    with trio.fail_after(1.0):  # well within the first 250 ms wait of each
        natpmp_only = Gateway()
        assert await holding(natpmp_only, await natpmp_only.bind(), nothing, use_pcp=True) is None
        pcp_only = Gateway(pcp=True, natpmp=False)
        assert await holding(pcp_only, await pcp_only.bind(), nothing) is None
    assert natpmp_only.mappings == {} and pcp_only.mappings == {}
