"""SessionTable with plain calls: caps, deadlines and eviction, the clock passed in."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from p2p.protocol.session_table import (
    SessionTable,
    SessionTableLimits,
    network_key,
    source_key,
)


class Closed:
    """Records which sessions the table closed."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> Callable[[], None]:
        return lambda: self.names.append(name)


def test_a_silent_session_has_the_first_request_deadline_then_the_idle_one() -> None:
    table = SessionTable(SessionTableLimits(first_request_s=10, idle_s=180))
    t = table.admit("127.50.0.1", 100.0, lambda: None)
    assert t is not None
    assert table.deadline(t) == 110.0  # silent since its handshake
    table.requests_changed(t, 1, 105.0)
    assert table.deadline(t) == math.inf  # a request in flight: no session deadline
    table.requests_changed(t, 2, 106.0)
    table.requests_changed(t, 1, 107.0)
    assert table.deadline(t) == math.inf
    table.requests_changed(t, 0, 120.0)
    assert table.deadline(t) == 300.0  # idle since its last request ended
    table.release(t)
    assert table.deadline(t) == -math.inf and len(table) == 0


def test_over_the_total_cap_the_idlest_of_the_most_crowded_network_goes() -> None:
    closed = Closed()
    table = SessionTable(SessionTableLimits(max_sessions=4, max_per_source=4, max_per_network=4))
    a1 = table.admit("127.50.1.1", 1.0, closed("a1"))
    table.admit("127.50.1.2", 2.0, closed("a2"))
    table.admit("127.50.1.3", 3.0, closed("a3"))
    table.admit("127.50.2.1", 0.5, closed("b1"))  # idler, but alone in its network
    assert a1 is not None
    assert table.admit("127.50.9.9", 4.0, closed("new")) is not None
    assert closed.names == ["a1"] and len(table) == 4 and table.evicted == 1
    assert table.deadline(a1) == -math.inf  # gone from the table at once


def test_a_session_with_a_request_in_flight_is_never_evicted() -> None:
    closed = Closed()
    table = SessionTable(SessionTableLimits(max_sessions=2))
    busy = table.admit("127.50.1.1", 0.0, closed("busy"))
    idle = table.admit("127.50.1.2", 5.0, closed("idle"))
    assert busy is not None and idle is not None
    table.requests_changed(busy, 1, 1.0)
    new = table.admit("127.50.2.1", 6.0, closed("new"))
    assert new is not None and closed.names == ["idle"]
    # every session in use: the newcomer is refused, nobody is cut
    table.requests_changed(new, 1, 7.0)
    assert table.admit("127.50.4.1", 9.0, closed("late")) is None
    assert table.refused == 1 and closed.names == ["idle"] and len(table) == 2


def test_a_source_over_its_share_gives_way_to_itself_not_to_others() -> None:
    closed = Closed()
    table = SessionTable(SessionTableLimits(max_sessions=100, max_per_source=2))
    table.admit("127.50.1.1", 0.0, closed("other"))
    table.admit("127.50.2.1", 1.0, closed("mine-old"))
    table.admit("127.50.2.1", 2.0, closed("mine-new"))
    assert table.admit("127.50.2.1", 3.0, closed("mine-3")) is not None
    assert closed.names == ["mine-old"] and table.sessions_from("127.50.2.1") == 2
    # with both of its sessions in use, a third from that source is refused
    for t in range(1, 4):
        table.requests_changed(t, 1, 4.0)
    assert table.admit("127.50.2.1", 5.0, closed("mine-4")) is None
    assert table.sessions_from("127.50.2.1") == 2 and len(table) == 3


def test_a_network_over_its_share_gives_way_within_itself() -> None:
    closed = Closed()
    table = SessionTable(SessionTableLimits(max_per_source=10, max_per_network=2))
    table.admit("127.50.5.1", 0.0, closed("five-a"))
    table.admit("127.50.6.1", 0.5, closed("six"))
    table.admit("127.50.5.2", 1.0, closed("five-b"))
    assert table.admit("127.50.5.3", 2.0, closed("five-c")) is not None
    assert closed.names == ["five-a"]


def test_a_crowd_of_silent_sessions_never_locks_out_a_newcomer() -> None:
    """The attack's shape (2,000 silent sessions from 50 networks) against the default limits."""
    table = SessionTable()
    now = 0.0
    for i in range(2000):
        now += 0.001
        assert table.admit(f"127.30.{i % 50}.1", now, lambda: None) is not None
    assert len(table) == table.limits.max_sessions
    assert max(table.sessions_from(f"127.30.{i}.1") for i in range(50)) <= 16
    assert table.admit("127.31.0.1", now, lambda: None) is not None


@pytest.mark.parametrize(
    ("address", "source", "network"),
    [
        (("192.0.2.7", 5000), "192.0.2.7", "192.0.2.0/24"),
        (("2001:db8:1:2:3::4", 1, 0, 0), "2001:db8:1:2::/64", "2001:db8:1::/48"),
        (("::ffff:192.0.2.7", 1, 0, 0), "192.0.2.7", "192.0.2.0/24"),
        ("not-an-address", "not-an-address", "not-an-address"),
    ],
)
def test_source_and_network_keys(address: object, source: str, network: str) -> None:
    assert source_key(address) == source
    assert network_key(source) == network
