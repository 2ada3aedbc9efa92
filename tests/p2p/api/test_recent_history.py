"""The dashboard's two memories as plain calls: the gateway's recent requests (recent_history.py)
and the nodes it saw leave (network_view.py `SeenNodes`). Both are bounded; both are pure."""

from __future__ import annotations

import json

import attrs

from crypto.identity import Identity
from p2p.api.network_view import SeenNodes, network_json
from p2p.api.recent_history import RecentHistory, Sample, measured_rate, request_sample
from tests.p2p.dht.test_records import make_record

NOW = 1_000_000.0


def sample(at: float, provider: str = "p1", tokens: int = 10, outcome: str = "ok") -> Sample:
    return Sample(at, provider, "tiny", tokens, 0.05, 20.0, outcome)


def test_a_request_sample_is_measured_at_the_gateway() -> None:
    s = request_sample("p1", "tiny", 11, "ok", (100.0, 100.25, 101.25), wall_now=NOW)
    assert s.ttft_s == 0.25 and s.tok_s == 10.0  # 10 tokens after the first, in 1 s
    assert s.at == NOW
    failed = request_sample("", "-", 0, "busy", (100.0, None, 103.0), wall_now=NOW)
    assert failed.ttft_s is None and failed.tok_s == 0.0 and failed.model == ""
    assert measured_rate(1, 100.0, 101.0) == 0.0  # one token has no rate


def test_history_keeps_the_window_and_a_bounded_ring() -> None:
    history = RecentHistory(capacity=5, window_s=600)
    for i in range(8):
        history.add(sample(NOW - 700 + 100 * i))
    data = history.to_json(NOW)
    assert len(data["requests"]) == 5  # the ring's capacity, then the window cut the oldest
    assert all(NOW - 600 <= r["at"] <= NOW for r in data["requests"])
    assert [r["at"] for r in data["requests"]] == sorted(r["at"] for r in data["requests"])
    assert history.tokens_served("p1") == 80  # the totals outlive the ring
    json.dumps(data)


def test_tokens_and_requests_are_counted_per_node_and_the_last_minute() -> None:
    history = RecentHistory()
    history.add(sample(NOW - 5, "a", tokens=8))
    history.add(sample(NOW - 4, "b", tokens=4))
    history.add(sample(NOW - 3, "a", tokens=0, outcome="busy"))
    history.add(sample(NOW - 300, "a", tokens=6))
    assert (history.tokens_served("a"), history.requests_served("a")) == (14, 2)
    assert history.tokens_served("stranger") == 0
    minute = history.to_json(NOW)["last_minute"]
    assert minute["requests"] == 3 and minute["ok"] == 2 and minute["tokens"] == 12
    assert minute["tok_s"] == 0.2 and minute["ttft_ms_median"] == 50.0


def test_a_node_that_leaves_is_offline_then_forgotten() -> None:
    a, b = (make_record(Identity.generate(), now=NOW) for _ in range(2))
    seen = SeenNodes(memory_s=600)
    assert seen.update([a, b], NOW) == [a, b]
    assert seen.offline(NOW) == []
    seen.update([a], NOW + 10)  # b's record lapsed
    [gone] = seen.offline(NOW + 10)
    assert gone.record == b and gone.last_seen == NOW
    seen.update([a, attrs.evolve(b, withdrawn=True, seq=2)], NOW + 20)  # a late withdrawal
    assert [g.record for g in seen.offline(NOW + 20)] == [b]  # still its last live record
    assert seen.offline(NOW + 601) == []  # forgotten after the memory
    seen.update([b], NOW + 610)  # b back: online again; a last seen at NOW + 20
    assert [g.record.peer_id for g in seen.offline(NOW + 610)] == [a.peer_id]


def test_a_withdrawn_record_is_offline_at_once_and_not_on_offer() -> None:
    a = make_record(Identity.generate(), now=NOW)
    seen = SeenNodes()
    live = seen.update([attrs.evolve(a, withdrawn=True)], NOW)
    assert live == []
    [gone] = seen.offline(NOW)
    data = network_json(live, NOW, seen.offline(NOW))
    assert [n["state"] for n in data["nodes"]] == ["offline"]
    assert data["models"] == []  # the model table counts live nodes only
    assert gone.record.peer_id == a.peer_id


def test_the_memory_is_bounded() -> None:
    seen = SeenNodes(capacity=3)
    records = [make_record(Identity.generate(), now=NOW) for _ in range(5)]
    seen.update(records, NOW)
    seen.update([], NOW + 1)
    assert len(seen.offline(NOW + 1)) == 3


def test_network_json_marks_state_name_and_tokens() -> None:
    a = attrs.evolve(make_record(Identity.generate(), now=NOW - 30), name="rack 7")
    b = make_record(Identity.generate(), now=NOW - 400)
    seen = SeenNodes()
    seen.update([a, b], NOW - 100)
    live = seen.update([a], NOW)
    history = RecentHistory()
    history.add(sample(NOW - 1, a.peer_id, tokens=9))
    data = network_json(live, NOW, seen.offline(NOW), history)
    nodes = {n["peer_id"]: n for n in data["nodes"]}
    assert nodes[a.peer_id]["state"] == "online" and nodes[a.peer_id]["name"] == "rack 7"
    assert nodes[a.peer_id]["tokens_served"] == 9 and nodes[a.peer_id]["last_seen_s"] == 0
    assert nodes[b.peer_id]["state"] == "offline" and nodes[b.peer_id]["name"] == ""
    assert nodes[b.peer_id]["last_seen_s"] == 100
    assert [m["providers"] for m in data["models"]] == [1]
    assert len(data["history"]["requests"]) == 1
