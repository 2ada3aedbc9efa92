"""Admission control: per-peer concurrency and rate, answered at once — plain calls."""

from __future__ import annotations

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
    assert ac.try_admit("a") == "busy"
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
    assert results == [None, None, None, "rate_limited", "rate_limited"]
    clock.now += 1.0
    assert ac.try_admit("a") is None
