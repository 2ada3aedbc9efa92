"""Provider ranking: speed (claimed and measured), load, failures with backoff, stale records —
plain calls with a fake clock."""

from __future__ import annotations

import random

import attrs

from crypto.identity import Identity
from p2p.client.ranking import (
    BACKOFF_BASE_S,
    CLAIM_CAP_FACTOR,
    JITTER,
    Measured,
    Provider,
    ProviderRanker,
    measure_answer,
    prefer_first,
    prefer_same_class,
)
from p2p.dht.records import LoadEntry
from tests.p2p.dht.test_records import make_record


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def provider(decode: float, *, active: int = 0, free: int = 1, now: float, ttl: float = 600):
    ident = Identity.generate()
    record = make_record(ident, now=now, ttl=ttl)
    model = attrs.evolve(record.models[0], decode_tok_s=decode)
    record = attrs.evolve(
        record, models=(model,), load=LoadEntry(active_requests=active, free_slots=free)
    )
    return record, model


def test_faster_and_less_loaded_nodes_rank_first() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock, rng=random.Random(1))
    fast = provider(100, now=clock.now)
    slow = provider(20, now=clock.now)
    full = provider(100, active=9, free=0, now=clock.now)
    order = [c.record.peer_id for c in ranker.rank([slow, full, fast])]
    assert order == [fast[0].peer_id, slow[0].peer_id, full[0].peer_id]
    assert "100 tok/s" in ranker.rank([fast])[0].reason


def test_failed_node_goes_last_until_its_backoff_ends() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock, rng=random.Random(2))
    a, b = provider(100, now=clock.now), provider(50, now=clock.now)
    ranker.record_failure(a[0].peer_id)
    ranked = ranker.rank([a, b])
    assert ranked[0].record.peer_id == b[0].peer_id
    assert "recently failed" in ranked[1].reason
    clock.now += BACKOFF_BASE_S + 0.1
    assert ranker.rank([a, b])[0].record.peer_id == a[0].peer_id
    # failures in a row back off longer
    ranker.record_failure(a[0].peer_id)
    ranker.record_failure(a[0].peer_id)
    clock.now += BACKOFF_BASE_S + 0.1
    assert ranker.in_backoff(a[0].peer_id)
    ranker.record_success(a[0].peer_id)
    assert not ranker.in_backoff(a[0].peer_id)


def test_stale_records_are_skipped() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock)
    old = provider(100, now=clock.now - 500, ttl=400)
    assert ranker.rank([old]) == []


def test_jitter_lets_equal_nodes_share_the_work() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock, rng=random.Random(3))
    a, b = provider(50, now=clock.now), provider(50, now=clock.now)
    firsts = {ranker.rank([a, b])[0].record.peer_id for _ in range(50)}
    assert firsts == {a[0].peer_id, b[0].peer_id}


def test_prefer_puts_the_named_node_first_and_keeps_the_rest_ranked() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock, rng=random.Random(1))
    fast, mid, slow = (provider(d, now=clock.now) for d in (100, 50, 10))
    ranked = [Provider(c.record, c.model) for c in ranker.rank([slow, mid, fast])]
    prefix = slow[0].peer_id[:10].upper()  # a pasted prefix may come in either case
    order = [p.record.peer_id for p in prefer_first(ranked, prefix)]
    assert order == [slow[0].peer_id, fast[0].peer_id, mid[0].peer_id]
    assert prefer_first(ranked, "ffff" * 16 + "x") == ranked  # no match: ranking unchanged
    assert prefer_first(ranked, None) == ranked


H100 = ("llama-cpp-python 0.3.36 cuda+cpu", "NVIDIA H100 80GB HBM3 sm90")
A100 = ("llama-cpp-python 0.3.36 cuda+cpu", "NVIDIA A100-SXM4-80GB sm80")
CPU = ("llama-cpp-python 0.3.36 cpu", "cpu x86_64 avx2")


def of_class(build_and_class: tuple[str, str], decode: float, now: float) -> Provider:
    record, model = provider(decode, now=now)
    build, hardware = build_and_class
    return Provider(attrs.evolve(record, build=build, hardware_class=hardware), model)


def test_failover_prefers_the_failed_providers_build_and_hardware_class() -> None:
    now = 1_000_000.0
    failed = of_class(H100, 100, now)
    ranked = [
        of_class(CPU, 90, now),
        of_class(H100, 80, now),
        of_class(A100, 70, now),
        of_class(H100, 60, now),
        of_class(("llama-cpp-python 0.3.35 cuda+cpu", H100[1]), 50, now),  # another build
    ]
    order = prefer_same_class(ranked, failed.record)
    assert order == [ranked[1], ranked[3], ranked[0], ranked[2], ranked[4]]
    # no one of the same class: the ranking as it was
    assert prefer_same_class([ranked[0], ranked[2]], failed.record) == [ranked[0], ranked[2]]
    assert prefer_same_class([], failed.record) == []


def test_failover_order_is_unchanged_when_the_failed_node_publishes_no_class() -> None:
    now = 1_000_000.0
    older = Provider(*provider(100, now=now))  # a node from before build/hardware_class
    assert (older.record.build, older.record.hardware_class) == ("", "")
    ranked = [of_class(CPU, 90, now), Provider(*provider(80, now=now)), of_class(H100, 70, now)]
    assert prefer_same_class(ranked, older.record) == ranked


async def test_client_reuses_a_lookup_briefly_and_forgets_it_after_a_failure() -> None:
    from p2p.client.network import LOOKUP_CACHE_S, Client

    clock = Clock()
    record, _model = provider(50, now=clock.now)

    class CountingDht:  # the DHT's answer is not under test here, only how often it is asked
        calls = 0

        async def find_records(self, key: str) -> list[object]:
            self.calls += 1
            return [record]

    dht = CountingDht()
    client = Client(dht, Identity.generate(), pool=None, clock=clock)  # type: ignore[arg-type]
    assert (await client.find_records("k")) == ([record], False)
    assert (await client.find_records("k")) == ([record], True)
    assert dht.calls == 1
    clock.now += LOOKUP_CACHE_S
    assert (await client.find_records("k"))[1] is False  # expired: asked again
    client.forget_lookups()
    assert (await client.find_records("k"))[1] is False  # a provider failed: asked again
    assert (await client.find_records("k", fresh=True))[1] is False
    assert dht.calls == 4


# --- published speed is a claim (issue #14, attack 4) ---


def test_an_unmeasured_claim_counts_as_at_most_twice_the_best_measured_speed() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock, rng=random.Random(4))
    honest, other, liar = (provider(d, now=clock.now) for d in (40, 35, 1e5))
    ranker.record_success(honest[0].peer_id, ttft_s=0.0, decode_tok_s=40.0)
    ranker.record_success(other[0].peer_id, ttft_s=0.0, decode_tok_s=30.0)
    ranked = ranker.rank([honest, other, liar])
    assert ranked[0].record.peer_id == liar[0].peer_id  # a new node may be tried first...
    best = 40.0 * (1 + JITTER)
    assert ranked[0].score <= CLAIM_CAP_FACTOR * best  # ...but its lie buys at most 2x
    assert "claims 100000 tok/s, counted as 80" in ranked[0].reason
    assert "measured 40 tok/s" in ranker.rank([honest])[0].reason
    # once it failed (a handshake that never finished), it goes last
    ranker.record_failure(liar[0].peer_id)
    assert ranker.rank([honest, other, liar])[-1].record.peer_id == liar[0].peer_id


def test_with_nothing_measured_claims_rank_as_told() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock, rng=random.Random(5))
    fast, slow = provider(1e5, now=clock.now), provider(40, now=clock.now)
    assert ranker.rank([slow, fast])[0].record.peer_id == fast[0].peer_id
    assert ranker.rank([fast])[0].reason.startswith("claims 100000 tok/s")


def test_what_this_client_measured_replaces_the_claim() -> None:
    clock = Clock()
    ranker = ProviderRanker(clock=clock, rng=random.Random(6))
    boaster, modest = provider(1000, now=clock.now), provider(30, now=clock.now)
    ranker.record_success(boaster[0].peer_id, ttft_s=0.01, decode_tok_s=10.0)
    # measured 10; the unmeasured 30-tok/s claim is under the cap (2 x 10 = 20): counted as 20
    order = ranker.rank([boaster, modest])
    assert [c.record.peer_id for c in order] == [modest[0].peer_id, boaster[0].peer_id]
    assert "measured 10 tok/s" in order[1].reason and "first token 10 ms" in order[1].reason
    # measurements are smoothed: one fast answer moves the estimate halfway
    ranker.record_success(boaster[0].peer_id, decode_tok_s=30.0)
    assert ranker.measured[boaster[0].peer_id] == Measured(ttft_s=0.01, decode_tok_s=20.0)


def test_an_answer_is_measured_from_this_clients_own_clock() -> None:
    assert measure_answer(10.0, 10.5, 12.5, 41) == (0.5, 20.0)  # 40 tokens after the first in 2 s
    assert measure_answer(10.0, 10.5, 10.6, 2) == (0.5, None)  # too short to time the decode
    assert measure_answer(10.0, None, 11.0, 0) == (None, None)  # no text at all
