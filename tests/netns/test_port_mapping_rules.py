"""Port mapping's rules, without root: what `hold_upnp_mappings` does with each answer a router
may give (UPnP's error texts as miniupnpc raises them), against a scripted router in this
process. The real router (miniupnpd in a namespace) is tests/netns/test_port_mapping.py's.
"""

from __future__ import annotations

import trio

from p2p.reach.port_mapping import (
    CONFLICT,
    PERMANENT_ONLY,
    PortMapping,
    PortMappingError,
    checked_external_ip,
    hold_upnp_mappings,
    renew_after,
)


class ScriptedRouter:
    """A router that keeps its mappings in a dict and refuses what it is told to refuse."""

    control_url = "http://10.9.0.1:5000/ctl"
    lan_address = "10.9.0.2"

    def __init__(
        self,
        external_ip: str = "203.0.113.7",
        taken: set[tuple[str, int]] | None = None,
        permanent_only: bool = False,
        refuse_tcp: bool = False,
    ) -> None:
        self.external = external_ip
        self.taken = taken or set()
        self.permanent_only = permanent_only
        self.refuse_tcp = refuse_tcp
        self.mappings: dict[tuple[str, int], tuple[str, int, int]] = {}
        self.adds = 0

    def external_ip(self) -> str:
        return self.external

    def add(
        self, proto: str, external: int, internal_host: str, internal: int, lease_s: int
    ) -> None:
        self.adds += 1
        if (proto, external) in self.taken:
            raise PortMappingError(CONFLICT)
        if self.permanent_only and lease_s:
            raise PortMappingError(PERMANENT_ONLY)
        if proto == "TCP" and self.refuse_tcp:
            raise PortMappingError("ActionFailed")
        self.mappings[(proto, external)] = (internal_host, internal, lease_s)

    def delete(self, proto: str, external: int) -> None:
        self.mappings.pop((proto, external), None)


async def hold(
    router: ScriptedRouter | None, seen: list[PortMapping | None], **more: object
) -> object:
    async with trio.open_nursery() as nursery:
        first = await nursery.start(
            lambda task_status: hold_upnp_mappings(
                8468,
                8469,
                on_change=seen.append,
                discover=lambda: router,
                task_status=task_status,
                **more,  # type: ignore[arg-type]
            )
        )
        nursery.cancel_scope.cancel()
    return first


async def test_maps_both_ports_reports_and_removes_them_when_cancelled() -> None:
    router, seen = ScriptedRouter(), []
    with trio.fail_after(10):
        first = await hold(router, seen)
    assert first == PortMapping("203.0.113.7", 8468, 8469, 3600, router.control_url)
    assert seen == [first]
    assert router.mappings == {}  # removed by the shielded cleanup after the cancel


async def test_a_port_another_host_holds_gets_another_external_port() -> None:
    router, seen = ScriptedRouter(taken={("TCP", 8469)}), []
    with trio.fail_after(10):
        first = await hold(router, seen)
    assert isinstance(first, PortMapping)
    assert first.udp_port == 8468 and first.tcp_port != 8469
    assert 1024 <= first.tcp_port <= 65535


async def test_a_router_with_permanent_leases_only_gets_a_permanent_mapping() -> None:
    router, seen = ScriptedRouter(permanent_only=True), []
    with trio.fail_after(10):
        first = await hold(router, seen)
    assert isinstance(first, PortMapping) and first.lease_s == 0


async def test_half_a_mapping_is_not_left_behind() -> None:
    router, seen = ScriptedRouter(refuse_tcp=True), []
    with trio.fail_after(10):
        first = await hold(router, seen)
    assert first is None and seen == []
    assert router.mappings == {}  # the UDP mapping made before TCP failed was removed


class Watch:
    """A callback that records what it gets and wakes a waiter once it has *n* calls."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self._wanted = (0, trio.Event())

    def __call__(self, value: object = None) -> None:
        self.calls.append(value)
        if len(self.calls) >= self._wanted[0]:
            self._wanted[1].set()

    async def until(self, n: int) -> None:
        self._wanted = (n, trio.Event())
        if len(self.calls) >= n:
            return
        await self._wanted[1].wait()


async def test_no_router_reports_none_and_keeps_looking() -> None:
    looks, seen = Watch(), Watch()

    def discover() -> None:
        trio.from_thread.run_sync(looks)
        return None

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            first = await nursery.start(
                lambda task_status: hold_upnp_mappings(
                    1,
                    2,
                    on_change=seen,
                    discover=discover,
                    rediscover_s=0.01,
                    task_status=task_status,
                )
            )
            await looks.until(3)
            nursery.cancel_scope.cancel()
    assert first is None and seen.calls == []


async def test_renewed_before_the_lease_ends_then_lost() -> None:
    router, seen = ScriptedRouter(), Watch()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: hold_upnp_mappings(
                    8468,
                    8469,
                    on_change=seen,
                    discover=lambda: router,
                    lease_s=2,
                    rediscover_s=3600,
                    task_status=task_status,
                )
            )
            await seen.until(3)  # granted, then renewed twice (every second: half the lease)
            assert seen.calls[0] == seen.calls[1] == seen.calls[2]
            assert router.adds == 6
            router.external = "0.0.0.0"  # the router lost its uplink: no usable address
            await seen.until(4)
            assert seen.calls[3] is None
            nursery.cancel_scope.cancel()
    assert router.mappings == {}


def test_the_routers_answers_are_checked() -> None:
    assert checked_external_ip("203.0.113.7") == "203.0.113.7"
    for bad in ("", "0.0.0.0", "127.0.0.1", "224.0.0.1", "not an address", None, "::1"):
        try:
            checked_external_ip(bad)
        except PortMappingError:
            continue
        raise AssertionError(f"{bad!r} accepted")
    assert renew_after(3600) == 1800 and renew_after(0) > 0 and renew_after(1) >= 1
