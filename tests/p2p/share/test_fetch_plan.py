"""The pull's sans-IO plan: who is asked which chunk, strikes, dropped peers, the end game,
and the state a resume restores."""

from __future__ import annotations

import pytest

from p2p.protocol.share_wire import CHUNK_SIZE, chunk_digest
from p2p.share.fetch_plan import MAX_FAILURES, FetchPlan, PlanError

SIZE = 5 * CHUNK_SIZE + 100  # six chunks, the last short
HASHES = [chunk_digest(bytes([i])) for i in range(6)]


def drain(plan: FetchPlan, peer: str) -> list[int]:
    """Every chunk *peer* is handed now (up to its depth)."""
    out = []
    while (index := plan.next_chunk(peer)) is not None:
        out.append(index)
    return out


def test_chunks_are_handed_out_in_order_up_to_each_peers_depth() -> None:
    plan = FetchPlan(SIZE, HASHES)
    plan.add_peer("a", depth=2)
    plan.add_peer("b", depth=3)
    assert drain(plan, "a") == [0, 1]
    assert drain(plan, "b") == [2, 3, 4]
    assert plan.expected(5) == (HASHES[5], 100)
    assert plan.received("a", 0, True).accepted
    assert drain(plan, "a") == [5]  # a slot freed: the next chunk nobody holds
    assert not plan.done and plan.verified == {0}
    assert plan.verified_bytes == CHUNK_SIZE


def test_a_bad_chunk_goes_to_another_peer_and_two_strikes_drop_the_sender() -> None:
    plan = FetchPlan(SIZE, HASHES)
    plan.add_peer("liar", depth=2)
    plan.add_peer("honest", depth=1)
    assert drain(plan, "liar") == [0, 1]
    first = plan.received("liar", 0, False)
    assert not first.accepted and not first.dropped
    assert plan.next_chunk("liar") == 2  # chunk 0 is never asked of it again
    assert plan.next_chunk("honest") == 0
    second = plan.received("liar", 1, False)
    assert second.dropped and not plan.usable("liar")
    assert plan.peers["liar"].in_flight == set()
    assert plan.strikes_total == 2
    # what the liar held (1 and 2) is back in the pool, for the honest peer
    assert plan.received("honest", 0, True).accepted
    got = []
    while not plan.done:
        index = plan.next_chunk("honest")
        assert index is not None
        got.append(index)
        assert plan.received("honest", index, True).accepted
    assert got == [1, 2, 3, 4, 5]
    assert plan.peers["honest"].chunks == 6


def test_a_broken_session_returns_its_chunks_and_the_pull_is_stuck_without_peers() -> None:
    plan = FetchPlan(SIZE, HASHES)
    plan.add_peer("a", depth=4)
    assert drain(plan, "a") == [0, 1, 2, 3]
    plan.drop_peer("a", "session broke")
    assert plan.next_chunk("a") is None
    assert plan.stuck()
    plan.add_peer("b", depth=8)
    assert not plan.stuck()
    assert drain(plan, "b") == [0, 1, 2, 3, 4, 5]


def test_a_chunk_every_usable_peer_sent_bad_leaves_the_pull_stuck() -> None:
    plan = FetchPlan(SIZE, HASHES)
    plan.add_peer("a", depth=1)
    plan.add_peer("b", depth=1)
    assert plan.next_chunk("a") == 0
    plan.received("a", 0, False)
    assert not plan.stuck()
    assert plan.next_chunk("b") == 0
    plan.received("b", 0, False)
    assert plan.stuck()  # nobody left who may be asked for chunk 0


def test_errors_in_a_row_drop_a_peer_but_a_success_resets_the_count() -> None:
    plan = FetchPlan(SIZE, HASHES)
    plan.add_peer("busy", depth=1)
    for _ in range(MAX_FAILURES - 1):
        index = plan.next_chunk("busy")
        assert index == 0  # the failed chunk is asked again first
        assert not plan.failed("busy", index, "busy")
    assert plan.received("busy", plan.next_chunk("busy") or 0, True).accepted
    for _ in range(MAX_FAILURES - 1):
        assert not plan.failed("busy", plan.next_chunk("busy") or 0, "busy")
    assert plan.failed("busy", plan.next_chunk("busy") or 0, "busy")
    assert not plan.usable("busy")


def test_the_end_game_asks_an_idle_peer_for_a_chunk_another_still_holds() -> None:
    plan = FetchPlan(SIZE, HASHES)
    plan.add_peer("slow", depth=1)
    plan.add_peer("fast", depth=8)
    assert plan.next_chunk("slow") == 0
    assert drain(plan, "fast") == [1, 2, 3, 4, 5]  # more than half its depth busy: no copies
    for index in range(1, 6):
        assert plan.received("fast", index, True).accepted
    assert plan.next_chunk("fast") == 0  # the slow peer's chunk, a second copy
    assert plan.next_chunk("fast") is None  # one extra copy per chunk, no more
    assert plan.received("fast", 0, True).accepted
    assert plan.done
    late = plan.received("slow", 0, True)  # the slow copy arrives: dropped on arrival
    assert not late.accepted
    assert plan.peers["slow"].in_flight == set()


def test_a_late_answer_of_a_dropped_peer_is_not_counted() -> None:
    plan = FetchPlan(SIZE, HASHES)
    plan.add_peer("a", depth=1)
    assert plan.next_chunk("a") == 0
    plan.drop_peer("a", "gone")
    assert not plan.received("a", 0, True).accepted
    assert plan.verified == set()


def test_state_round_trips_and_refuses_a_bitmap_of_another_size() -> None:
    plan = FetchPlan(SIZE, HASHES, verified={0, 3, 5})
    text = plan.to_state()
    assert FetchPlan.from_state(text, 6) == {0, 3, 5}
    resumed = FetchPlan(SIZE, HASHES, FetchPlan.from_state(text, 6))
    resumed.add_peer("a", depth=8)
    assert drain(resumed, "a") == [1, 2, 4]
    assert resumed.verified_bytes == 2 * CHUNK_SIZE + 100
    with pytest.raises(PlanError):
        FetchPlan.from_state(text, 20)
    with pytest.raises(PlanError):
        FetchPlan.from_state("not base64!", 6)


def test_a_manifest_that_does_not_fit_the_size_is_refused() -> None:
    with pytest.raises(PlanError):
        FetchPlan(SIZE, HASHES[:5])
    with pytest.raises(PlanError):
        FetchPlan(SIZE, [*HASHES[:5], b"short"])
