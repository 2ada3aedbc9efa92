"""Admission control: per-peer concurrency and rate, answered at once — plain calls."""

from __future__ import annotations

from p2p.errors import ErrorCode
from p2p.protocol.admission import AdmissionControl


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_per_peer_concurrency_cap() -> None:
    ac = AdmissionControl(clock=Clock(), per_peer_concurrency=2)
    assert ac.try_admit("a") is None
    assert ac.try_admit("a") is None
    assert ac.try_admit("a") is ErrorCode.BUSY
    assert ac.try_admit("b") is None  # other peers are not affected
    ac.release("a")
    assert ac.try_admit("a") is None


def test_rate_limit_refills_with_time() -> None:
    clock = Clock()
    ac = AdmissionControl(clock=clock, per_peer_concurrency=100, rate=1.0, burst=3.0)
    results = []
    for _ in range(5):
        results.append(ac.try_admit("a"))
        ac.release("a")
    assert results == [None, None, None, ErrorCode.RATE_LIMITED, ErrorCode.RATE_LIMITED]
    clock.now += 1.0
    assert ac.try_admit("a") is None


def test_the_peer_table_is_bounded_and_keeps_peers_with_requests_in_flight() -> None:
    ac = AdmissionControl(clock=Clock(), rate=0.0, burst=1.0, max_tracked_peers=3)
    assert ac.try_admit("busy") is None  # in flight: must not be forgotten
    for i in range(10):
        assert ac.try_admit(f"p{i}") is None
        ac.release(f"p{i}")
    assert ac.tracked_peers <= 3
    assert ac.try_admit("busy") is ErrorCode.RATE_LIMITED  # its empty bucket is remembered
    assert ac.try_admit("p0") is None  # forgotten: a fresh, full bucket
