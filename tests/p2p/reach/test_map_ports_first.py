"""`mapping_race.map_ports_first` and `ports_mapped_first`: a starting node waits for port
mapping's first outcome before its DHT sends anything (docs/reachability.md, "Map before
joining"), but never longer than its bound; the holder keeps holding while the node runs, and a
failed join still comes out as its own error."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from p2p.node.config import NodeError
from p2p.reach.mapping_race import FIRST_OUTCOME_WAIT_S, map_ports_first, ports_mapped_first
from p2p.reach.port_mapping import PortMapping

MAPPING = PortMapping("100.128.0.11", 8468, 8469, 3600, "nat-pmp://10.1.0.1")


def scripted_holder(answer_after_s: float, log: list[str]) -> Any:
    """A holder whose first outcome (a mapping) comes after *answer_after_s*; it then holds
    until cancelled, and says when it stopped."""

    async def hold(*, task_status: trio.TaskStatus[PortMapping | None]) -> None:
        await trio.sleep(answer_after_s)
        log.append("mapped")
        task_status.started(MAPPING)
        try:
            await trio.sleep_forever()
        finally:
            log.append("removed")

    return hold


async def test_returns_at_the_first_outcome_and_the_holder_keeps_holding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            holder = scripted_holder(0.05, log)
            await map_ports_first(nursery, holder, lambda: log.append("settled"))
            assert trio.current_time() - start == 0.05  # not its whole bound
            assert log == ["mapped", "settled"]
            log.append("joined")
            await trio.sleep(60)
            assert "removed" not in log  # still held while the node runs
            nursery.cancel_scope.cancel()
    assert log == ["mapped", "settled", "joined", "removed"]


async def test_a_slow_router_delays_the_join_by_the_bound_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            holder = scripted_holder(10.0, log)
            await map_ports_first(nursery, holder, lambda: log.append("settled"))
            assert trio.current_time() - start == FIRST_OUTCOME_WAIT_S
            log.append("joined")
            await trio.sleep(10.0)  # the late outcome still settles the reach state
            assert log == ["joined", "mapped", "settled"]
            nursery.cancel_scope.cancel()


async def test_the_body_runs_mapped_and_the_mappings_go_when_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(120):
        async with ports_mapped_first(scripted_holder(0.05, log), lambda: log.append("settled")):
            log.append("joined")
            await trio.sleep(60)
            log.append("stopping")
    assert log == ["mapped", "settled", "joined", "stopping", "removed"]


async def test_a_failed_join_is_its_own_error_and_removes_the_mappings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(120), pytest.raises(NodeError, match="no bootstrap"):
        async with ports_mapped_first(scripted_holder(0.05, log)):
            raise NodeError("no bootstrap peer answered")
    assert log == ["mapped", "removed"]


async def test_without_port_mapping_the_body_just_runs() -> None:
    ran: list[str] = []
    with trio.fail_after(5):
        async with ports_mapped_first(None):
            ran.append("joined")
    assert ran == ["joined"]
