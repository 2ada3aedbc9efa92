"""Signed withdrawals on real UDP nodes and in the store: a withdrawn node is gone from lookups at
once, an older live record never comes back over the withdrawal (stored later, handed off, or
held by a node the withdrawal missed), and no live record follows a withdrawal. Frequent honest
updates are never refused; a load republish reuses the closest nodes instead of crawling."""

from __future__ import annotations

from typing import Any

import attrs
import msgpack
import pytest
import trio

from crypto.identity import Identity
from p2p.client.ranking import ProviderRanker, rank_providers
from p2p.dht.node import open_dht
from p2p.dht.record_store import RecordStore
from p2p.dht.records import (
    DEFAULT_TTL_S,
    CapabilityRecord,
    LoadEntry,
    RecordError,
    SignedRecord,
    dht_digest,
    directory_key,
    live,
    model_key,
    newest_per_peer,
    node_key,
    open_record,
    sign_record,
)
from p2p.errors import RecordRefusal
from tests.p2p.dht.test_lifetimes import LOCAL, FakeClock, network
from tests.p2p.dht.test_records import SHA, make_record

TIMEOUT_S = 60
DIRECTORY = dht_digest(directory_key())


def _signed(ident: Identity, *, seq: int, now: float, withdrawn: bool = False) -> SignedRecord:
    record = attrs.evolve(
        make_record(ident, seq=seq, now=now, ttl=DEFAULT_TTL_S), withdrawn=withdrawn
    )
    return sign_record(record, ident)


def test_the_withdrawal_is_signed_and_readers_drop_it_only_after_merging() -> None:
    ident = Identity.generate()
    now = 1_800_000_000.0
    alive = _signed(ident, seq=1, now=now)
    gone = _signed(ident, seq=2, now=now + 1, withdrawn=True)
    assert open_record(gone.blob, now=now + 2).record.withdrawn  # survives the wire
    assert b"withdrawn" not in alive.blob  # left out at its default: older records verify
    # the field is signed: nobody can take a node's goodbye back (or forge one) for it
    version, body, signature = msgpack.unpackb(gone.blob)
    revived = body.replace(b"\xa9withdrawn\xc3", b"\xa9withdrawn\xc2")
    assert revived != body
    with pytest.raises(RecordError) as refused:
        open_record(msgpack.packb([version, revived, signature]), now=now + 2)
    assert refused.value.refusal is RecordRefusal.BAD_SIGNATURE
    # the newest per signer first, then the live ones: in either order of arrival, nothing
    for order in ([alive, gone], [gone, alive]):
        assert live(newest_per_peer(order)) == []
    # filtered before merging, the older live record would have come back
    assert [
        r.seq for r in newest_per_peer([s for s in [alive, gone] if not s.record.withdrawn])
    ] == [1]


def test_an_older_live_record_cannot_replace_a_withdrawal_in_a_store() -> None:
    ident = Identity.generate()
    now = 1_800_000_000.0
    store = RecordStore()
    alive = _signed(ident, seq=1, now=now)
    gone = _signed(ident, seq=2, now=now + 1, withdrawn=True)
    for dkey in map(dht_digest, alive.record.dht_keys()):
        assert store.offer(dkey, alive.blob, now=now + 1, source="127.0.0.9").accepted
        assert store.offer(dkey, gone.blob, now=now + 2, source="127.0.0.9").accepted
        # replayed by anyone, handed off by a holder that missed the withdrawal: refused
        stale = store.offer(dkey, alive.blob, now=now + 3, source="127.0.5.5")
        assert stale.refusal is RecordRefusal.STALE
        assert [s.record.withdrawn for s in store.get(dkey, now=now + 3)] == [True]
    # the withdrawal outlives the record it replaced: culled only once that one expired too
    assert gone.record.expires_at > alive.record.expires_at
    later = alive.record.expires_at + 0.5
    assert store.offer(DIRECTORY, alive.blob, now=later).refusal is RecordRefusal.EXPIRED
    assert store.get(DIRECTORY, now=later)[0].record.withdrawn


def test_frequent_honest_updates_are_never_refused() -> None:
    """A busy node republishes every few seconds; beside a full key, each update replaces its
    own slot and is accepted, and evicts nobody."""
    store = RecordStore(max_signers_per_key=8)
    now = 1_800_000_000.0
    others = [Identity.generate() for _ in range(7)]
    for n, other in enumerate(others):
        blob = _signed(other, seq=1, now=now).blob
        assert store.offer(DIRECTORY, blob, now=now, source=f"127.0.{n}.1").accepted
    busy = Identity.generate()
    for step in range(120):  # ten minutes, one update every 5 s
        t = now + 5 * step
        record = attrs.evolve(
            make_record(busy, seq=step + 1, now=t, ttl=DEFAULT_TTL_S),
            load=LoadEntry(active_requests=step % 4, free_slots=4 - step % 4),
        )
        offer = store.offer(DIRECTORY, sign_record(record, busy).blob, now=t, source="127.9.9.9")
        assert offer.accepted, (step, offer)
        if step * 5 < DEFAULT_TTL_S:  # the others were published once: they lapse after a TTL
            assert len(store.get(DIRECTORY, now=t)) == 8
    assert [s.record.peer_id for s in store.get(DIRECTORY, now=now + 600)] == [busy.peer_id]


async def test_a_withdrawn_node_is_gone_from_every_lookup_at_once() -> None:
    clock = FakeClock()
    with trio.fail_after(TIMEOUT_S):
        async with network(4, clock) as nodes:
            ident = Identity.generate()
            async with open_dht(ident, LOCAL, 0, rpc_timeout=0.5, clock=clock) as provider:
                await provider.bootstrap([(LOCAL, nodes[0].port)])
                await provider.publish(_signed(ident, seq=1, now=clock.now))
                keys = (model_key(SHA), directory_key(), node_key(ident.peer_id))
                for key in keys:
                    assert [r.peer_id for r in await nodes[3].find_records(key)] == [ident.peer_id]
                # a holder that will miss the withdrawal (it stays with the live record)
                missed = nodes[1]
                withdrawal = _signed(ident, seq=2, now=clock.now, withdrawn=True)
                held = {k: list(missed.store.slots.get(dht_digest(k), {}).items()) for k in keys}
                assert await provider.publish(withdrawal) > 0
                for key in keys:  # put the live record back where it was
                    missed.store.slots.setdefault(dht_digest(key), {}).update(held[key])
                # no live record may follow the withdrawal (a publish still under way)
                assert await provider.publish(_signed(ident, seq=3, now=clock.now)) == 0
                for reader in nodes:
                    for key in keys:
                        assert await reader.find_records(key) == [], (reader.port, key)
                        found = await reader.find_records(key, withdrawn=True)
                        assert [(r.seq, r.withdrawn) for r in found] == [(2, True)]
                # a node joining later may be handed the live record by the holder that missed
                # the withdrawal; its lookups merge the holders' answers and still drop the node
                async with open_dht(
                    Identity.generate(), LOCAL, 0, rpc_timeout=0.5, clock=clock
                ) as late:
                    await late.bootstrap([(LOCAL, nodes[1].port)])
                    for dht in [*nodes, late]:
                        await dht.run(dht.protocol.settle)
                    assert await late.find_records(directory_key()) == []


async def test_a_load_republish_reuses_the_closest_nodes() -> None:
    clock = FakeClock()
    with trio.fail_after(TIMEOUT_S):
        async with network(6, clock) as nodes:
            ident = Identity.generate()
            async with open_dht(ident, LOCAL, 0, rpc_timeout=0.5, clock=clock) as provider:
                await provider.bootstrap([(LOCAL, nodes[0].port)])
                calls: list[str] = []
                proto: Any = provider.protocol
                find_node, store = proto.call_find_node, proto.call_store

                async def counted_find(*args: object) -> object:
                    calls.append("find_node")
                    return await find_node(*args)

                async def counted_store(*args: object) -> object:
                    calls.append("store")
                    return await store(*args)

                proto.call_find_node, proto.call_store = counted_find, counted_store
                record: CapabilityRecord = make_record(
                    ident, seq=1, now=clock.now, ttl=DEFAULT_TTL_S
                )
                first = await provider.publish(sign_record(record, ident))
                assert calls.count("find_node") > 0 and first > 0
                calls.clear()
                busier = attrs.evolve(record, seq=2, load=LoadEntry(active_requests=3))
                again = await provider.publish(sign_record(busier, ident), reuse_closest_s=20.0)
                assert calls.count("find_node") == 0 and calls.count("store") == again == first
                for key in (model_key(SHA), directory_key()):
                    (found,) = await nodes[5].find_records(key)
                    assert found.load.active_requests == 3
                calls.clear()  # past the reuse window: a crawl again
                await provider.publish(
                    sign_record(attrs.evolve(busier, seq=3), ident), reuse_closest_s=1e-9
                )
                assert calls.count("find_node") > 0


def test_a_client_never_ranks_a_withdrawn_provider() -> None:
    """Records handed to the ranker from elsewhere (a cache, a test) are checked again."""
    now = 1_800_000_000.0
    alive, gone = Identity.generate(), Identity.generate()
    records = [
        make_record(alive, now=now, ttl=DEFAULT_TTL_S),
        attrs.evolve(make_record(gone, now=now, ttl=DEFAULT_TTL_S), withdrawn=True),
    ]
    ranked = rank_providers(ProviderRanker(clock=lambda: now + 1), records, SHA)
    assert [p.record.peer_id for p in ranked] == [alive.peer_id]
