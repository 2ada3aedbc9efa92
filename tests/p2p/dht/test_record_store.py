"""RecordStore bounds and merge rules, plain calls with an explicit `now`."""

from __future__ import annotations

import time

from crypto.identity import Identity
from p2p.dht.record_store import RecordStore
from p2p.dht.records import (
    ModelEntry,
    dht_digest,
    directory_key,
    model_key,
    model_name_key,
    node_key,
    sign_record,
)
from p2p.errors import RecordRefusal
from tests.p2p.dht.test_records import SHA, make_record


def _model(i: int) -> ModelEntry:
    return ModelEntry(f"{i:064x}", f"m{i}", "llama", 1, "F32", 512, 0, 2)


def test_restoring_the_same_blob_is_idempotent_and_an_older_replay_is_refused() -> None:
    store = RecordStore()
    now = time.time()
    a = Identity.generate()
    key = dht_digest(model_key(SHA))
    old = sign_record(make_record(a, seq=1, now=now), a).blob
    new = sign_record(make_record(a, seq=2, now=now), a).blob
    assert store.offer(key, old, now=now)[:2] == (True, "stored")
    assert store.offer(key, old, now=now)[:2] == (True, "already stored")
    assert store.offer(key, new, now=now)[0]
    assert store.offer(key, old, now=now)[:2] == (False, "not newer than the stored record")
    assert store.total() == 1


def test_a_newer_record_drops_its_signers_slots_under_keys_it_left() -> None:
    store = RecordStore()
    now = time.time()
    a = Identity.generate()
    first = sign_record(make_record(a, seq=1, now=now, models=(_model(1),)), a)
    for k in first.record.dht_keys():
        assert store.offer(dht_digest(k), first.blob, now=now)[0]
    assert len(store.keys_of(a.peer_id)) == 4
    second = sign_record(make_record(a, seq=2, now=now, models=(_model(2),)), a)
    assert store.offer(dht_digest(node_key(a.peer_id)), second.blob, now=now)[0]
    # the model-1 keys are gone (a stale offer); the directory slot stays until replaced
    left = store.keys_of(a.peer_id)
    assert dht_digest(model_key(_model(1).sha256)) not in left
    assert dht_digest(model_name_key("m1")) not in left
    assert dht_digest(directory_key()) in left


def test_one_signer_is_bounded_across_keys() -> None:
    store = RecordStore(max_keys_per_signer=5)
    now = time.time()
    a = Identity.generate()
    models = tuple(_model(i) for i in range(8))
    signed = sign_record(make_record(a, now=now, models=models), a)
    for k in signed.record.dht_keys():
        assert store.offer(dht_digest(k), signed.blob, now=now)[0]
    assert len(store.keys_of(a.peer_id)) == 5
    assert store.total() == 5


def test_total_and_key_bounds_evict_the_soonest_expiring() -> None:
    store = RecordStore(max_total=10, max_keys=1000)
    now = time.time()
    signers = [Identity.generate() for _ in range(12)]
    for i, s in enumerate(signers):
        blob = sign_record(make_record(s, now=now, ttl=100 + i), s).blob
        assert store.offer(dht_digest(node_key(s.peer_id)), blob, now=now)[0]
    assert store.total() == 10
    kept = {rec.record.peer_id for _, rec in store.items(now=now)}
    assert kept == {s.peer_id for s in signers[2:]}

    store = RecordStore(max_keys=3)
    for i, s in enumerate(signers[:5]):
        blob = sign_record(make_record(s, now=now, ttl=100 + i), s).blob
        assert store.offer(dht_digest(node_key(s.peer_id)), blob, now=now)[0]
    assert len(store.slots) == 3
    assert store.total() == 3


def test_bookkeeping_survives_expiry() -> None:
    store = RecordStore()
    now = time.time()
    a = Identity.generate()
    signed = sign_record(make_record(a, now=now, ttl=10), a)
    for k in signed.record.dht_keys():
        store.offer(dht_digest(k), signed.blob, now=now)
    store.cull(now=now + 11)
    assert store.total() == 0 and store.keys_of(a.peer_id) == set() and not store.slots


def test_each_refusal_names_the_rule_it_broke() -> None:
    """What /metrics counts by: the rule, given by the record rules, never read from the text."""
    store = RecordStore()
    now = time.time()
    a, b = Identity.generate(), Identity.generate()
    key = dht_digest(model_key(SHA))
    good = sign_record(make_record(a, seq=5, now=now), a).blob
    assert store.offer(key, good, now=now).refusal is None
    stale = sign_record(make_record(a, seq=4, now=now), a).blob
    assert store.offer(key, stale, now=now).refusal is RecordRefusal.STALE
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    assert store.offer(key, tampered, now=now).refusal is RecordRefusal.BAD_SIGNATURE
    assert store.offer(key, good, now=now + 86400).refusal is RecordRefusal.EXPIRED
    other = sign_record(make_record(b, seq=1, now=now), b).blob
    unbound = dht_digest(model_key("f" * 64))
    assert store.offer(unbound, other, now=now).refusal is RecordRefusal.UNBOUND_KEY
    assert store.offer(key, b"\xc1junk", now=now).refusal is RecordRefusal.MALFORMED
    assert store.offer(key, b"x" * 10_000, now=now).refusal is RecordRefusal.TOO_LARGE
