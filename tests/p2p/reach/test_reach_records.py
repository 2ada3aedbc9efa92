"""How a record says a node is reached: `reach` and `relays`, signed, bounded, absent from old
records; what the node publishes for each verdict; how `peers` shows it and ranking weighs it."""

from __future__ import annotations

import random

import attrs
import msgpack
import pytest

from crypto.identity import Identity
from p2p.cli.peers import describe
from p2p.client.ranking import ProviderRanker
from p2p.dht.records import (
    MAX_RELAYS,
    RecordError,
    RelayHint,
    open_record,
    record_to_json,
    sign_record,
)
from p2p.reach.reachability import ReachResult
from p2p.reach.state import ReachState
from tests.p2p.client.test_ranking import Clock, provider
from tests.p2p.dht.test_records import make_record

NOW = 1_000_000.0
RELAY = RelayHint(Identity.generate().peer_id, "127.0.1.1:8469")


def test_reach_and_relays_are_signed_and_round_trip() -> None:
    ident = Identity.generate()
    record = attrs.evolve(make_record(ident, now=NOW), reach="relayed", relays=(RELAY,))
    opened = open_record(sign_record(record, ident).blob, now=NOW).record
    assert opened.reach == "relayed" and opened.relays == (RELAY,)
    assert record_to_json(opened)["relays"] == [
        {"peer_id": RELAY.peer_id, "address": RELAY.address}
    ]


def test_a_record_without_the_fields_is_byte_for_byte_what_it_was() -> None:
    ident = Identity.generate()
    blob = sign_record(make_record(ident, now=NOW), ident).blob
    body = msgpack.unpackb(msgpack.unpackb(blob)[1])
    assert "reach" not in body and "relays" not in body  # old readers and old records agree
    opened = open_record(blob, now=NOW).record
    assert opened.reach == "unknown" and opened.relays == ()


@pytest.mark.parametrize(
    "change",
    [
        {"reach": "teleported"},
        {"relays": (RELAY,) * (MAX_RELAYS + 1)},
        {"relays": ("127.0.0.1:1",)},
    ],
)
def test_bad_reach_fields_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(RecordError):
        attrs.evolve(make_record(Identity.generate(), now=NOW), **change)


@pytest.mark.parametrize(
    "hint", [("not-a-peer-id", "127.0.0.1:1"), (RELAY.peer_id, "no port"), (RELAY.peer_id, 7)]
)
def test_bad_relay_hints_are_refused(hint: tuple[object, object]) -> None:
    with pytest.raises(RecordError):
        RelayHint(*hint)  # type: ignore[arg-type]


def test_published_addresses_follow_the_verdict() -> None:
    state = ReachState()
    bind = "10.0.0.5:8469"
    assert state.published_addresses(bind) == (bind,)
    state.set_result(ReachResult("direct", "198.18.0.5"))
    assert state.published_addresses(bind) == ("198.18.0.5:8469", bind)
    state.set_mapped("198.18.0.9", 40000)
    state.set_result(ReachResult("mapped", "198.18.0.9"))
    assert state.published_addresses(bind)[0] == "198.18.0.9:40000"
    state.set_relays([RELAY])
    assert state.published_relays() == ()  # a reachable node names no relays
    state.set_result(ReachResult("relayed", "198.18.0.9"))
    assert state.published_addresses(bind) == (bind,) and state.published_relays() == (RELAY,)
    version = state.version
    state.set_result(ReachResult("unknown"))  # nobody answered: keep the last verdict
    assert state.reach == "relayed" and state.version == version


def test_peers_shows_how_each_node_is_reached() -> None:
    ident = Identity.generate()
    record = make_record(ident, now=NOW)
    assert " unknown " in describe(record)[0]
    assert " direct " in describe(attrs.evolve(record, reach="direct"))[0]
    relayed = attrs.evolve(record, reach="relayed", relays=(RELAY,))
    assert f"relayed via {RELAY.peer_id[:8]}" in describe(relayed)[0]


def test_ranking_puts_a_direct_node_before_an_equal_relayed_one() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock, rng=random.Random(5))
    direct = provider(100, now=clock.now)
    record, model = provider(100, now=clock.now)
    relayed = (attrs.evolve(record, reach="relayed", relays=(RELAY,)), model)
    faster_relayed = (
        attrs.evolve(relayed[0], models=(attrs.evolve(model, decode_tok_s=200),)),
        attrs.evolve(model, decode_tok_s=200),
    )
    wins = sum(ranker.rank([relayed, direct])[0].record is direct[0] for _ in range(50))
    assert 40 <= wins < 50  # the hop costs 0.8x; the +-15 % jitter still shares some work
    assert "via relay" in ranker.rank([relayed])[0].reason
    assert ranker.rank([direct, faster_relayed])[0].record is faster_relayed[0]


def test_a_wildcard_bound_node_publishes_its_observed_address_not_loopback() -> None:
    # `--host 0.0.0.0` used to publish 127.0.0.1 (docs FACTS): the dial-back's address wins
    state = ReachState()
    state.set_result(ReachResult("direct", "198.18.0.5"))
    assert state.published_addresses("127.0.0.1:8469") == ("198.18.0.5:8469",)
