"""Record rules: signature, key binding, lifetime, merge per signer — plain calls, no sockets."""

from __future__ import annotations

import time
from typing import Any

import attrs
import msgpack
import pytest

from crypto.identity import Identity
from p2p.dht.record_store import MAX_SIGNERS_PER_KEY, RecordStore
from p2p.dht.records import (
    MAX_BUILD,
    MAX_GPUS,
    MAX_HARDWARE_CLASS,
    MAX_RECORD_BYTES,
    MAX_SIMD_FLAGS,
    CapabilityRecord,
    CpuEntry,
    GpuEntry,
    ModelEntry,
    RecordError,
    dht_digest,
    model_key,
    model_name_key,
    node_key,
    open_record,
    record_from_plain,
    record_to_json,
    sign_record,
)

SHA = "ab" * 32


def make_record(
    identity: Identity,
    *,
    seq: int = 1,
    now: float | None = None,
    ttl: float = 600,
    models: tuple[ModelEntry, ...] | None = None,
) -> CapabilityRecord:
    now = time.time() if now is None else now
    return CapabilityRecord(
        peer_id=identity.peer_id,
        public_key=identity.public_key,
        addresses=("127.0.0.1:9000",),
        software_version="gpunet/test",
        seq=seq,
        issued_at=now,
        expires_at=now + ttl,
        gpus=(),
        cpu=CpuEntry(cores=2, ram_bytes=1 << 30),
        models=models
        if models is not None
        else (ModelEntry(SHA, "tiny-llama", "llama", 1000, "F32", 512, 0, 2),),
    )


def test_round_trip_verifies_and_keeps_fields() -> None:
    ident = Identity.generate()
    signed = sign_record(make_record(ident), ident)
    opened = open_record(signed.blob, now=time.time())
    assert opened.record == signed.record
    assert opened.record.serves("tiny-llama") is not None
    assert opened.record.serves(SHA) is not None
    assert opened.record.serves("other") is None


def test_serves_matches_a_name_or_sha256_in_any_case() -> None:
    record = make_record(Identity.generate())
    assert record.serves("Tiny-Llama") is not None
    assert record.serves(SHA.upper()) is not None
    assert record.serves(SHA[:-1]) is None


@pytest.mark.parametrize("address", ["127.0.0.1:9000", "node.example:1", "[::1]:9000"])
def test_session_addresses_are_host_port(address: str) -> None:
    assert attrs.evolve(make_record(Identity.generate()), addresses=(address,))


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.0.0.1:0", "host:65536", "::1:9000", "a b:80", ":9000", "x" * 99 + ":1"],
)
def test_addresses_that_are_not_host_port_are_refused(address: str) -> None:
    with pytest.raises(RecordError):
        attrs.evolve(make_record(Identity.generate()), addresses=(address,))


def test_any_byte_flip_is_refused() -> None:
    ident = Identity.generate()
    blob = sign_record(make_record(ident), ident).blob
    for i in range(0, len(blob), 7):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(RecordError):
            open_record(bytes(bad), now=time.time())


def test_record_signed_by_another_key_is_refused() -> None:
    ident, other = Identity.generate(), Identity.generate()
    record = make_record(ident)
    body = msgpack.packb({"x": 1})
    forged = msgpack.packb([1, body, other.sign("capability-record/1", body)])
    with pytest.raises(RecordError):
        open_record(forged, now=time.time())
    with pytest.raises(RecordError):
        sign_record(record, other)


def test_expired_future_and_too_long_records_are_refused() -> None:
    ident = Identity.generate()
    now = time.time()
    expired = sign_record(make_record(ident, now=now - 1000), ident).blob
    future = sign_record(make_record(ident, now=now + 3600), ident).blob
    too_long = sign_record(make_record(ident, ttl=86400), ident).blob
    for blob in (expired, future, too_long):
        with pytest.raises(RecordError):
            open_record(blob, now=now)


def test_bad_schema_values_are_refused() -> None:
    ident = Identity.generate()
    with pytest.raises(RecordError):
        make_record(ident, models=(ModelEntry("nothex", "x", "llama", 1, "F32", 1, 0, 1),))
    with pytest.raises(RecordError):
        attrs.evolve(make_record(ident), peer_id=Identity.generate().peer_id)
    for junk in (b"", b"\xc1", msgpack.packb([1, 2, 3]), b"x" * (MAX_RECORD_BYTES + 1), 5, None):
        with pytest.raises(RecordError):
            open_record(junk, now=time.time())


def test_store_keeps_one_slot_per_signer_and_newer_wins() -> None:
    store = RecordStore()
    now = time.time()
    a, b = Identity.generate(), Identity.generate()
    key = dht_digest(model_key(SHA))
    assert store.offer(key, sign_record(make_record(a, seq=5), a).blob, now=now)[0]
    assert store.offer(key, sign_record(make_record(b, seq=1), b).blob, now=now)[0]
    assert {s.record.peer_id for s in store.get(key, now=now)} == {a.peer_id, b.peer_id}
    # older sequence from a: refused, the stored one stays
    assert not store.offer(key, sign_record(make_record(a, seq=4), a).blob, now=now)[0]
    assert store.offer(key, sign_record(make_record(a, seq=6), a).blob, now=now)[0]
    seqs = {s.record.peer_id: s.record.seq for s in store.get(key, now=now)}
    assert seqs == {a.peer_id: 6, b.peer_id: 1}


def test_store_refuses_records_not_bound_to_the_key() -> None:
    store = RecordStore()
    a = Identity.generate()
    blob = sign_record(make_record(a), a).blob
    assert store.offer(dht_digest(model_name_key("tiny-llama")), blob, now=time.time())[0]
    assert store.offer(dht_digest(node_key(a.peer_id)), blob, now=time.time())[0]
    ok, reason, _ = store.offer(dht_digest(model_key("cd" * 32)), blob, now=time.time())
    assert not ok and "bound" in reason


def test_store_is_bounded_per_key_and_expires() -> None:
    store = RecordStore()
    now = time.time()
    key = dht_digest(model_key(SHA))
    for i in range(MAX_SIGNERS_PER_KEY + 5):
        ident = Identity.generate()
        store.offer(key, sign_record(make_record(ident, now=now, ttl=100 + i), ident).blob, now=now)
    assert len(store.get(key, now=now)) == MAX_SIGNERS_PER_KEY
    assert store.get(key, now=now + 10_000) == []


SIMD = ("AVX", "AVX2", "AVX512", "AVX512_BF16", "AVX512_VNNI", "F16C", "FMA", "SSE3")


def with_hardware(record: CapabilityRecord) -> CapabilityRecord:
    return attrs.evolve(
        record,
        cpu=CpuEntry(cores=16, ram_bytes=64 << 30, simd=SIMD, gpu_offload=True),
        build="llama-cpp-python 0.3.36 cuda+cpu",
        hardware_class="NVIDIA H100 80GB HBM3 sm90",
    )


def test_build_hardware_class_and_simd_round_trip() -> None:
    ident = Identity.generate()
    record = with_hardware(make_record(ident))
    opened = open_record(sign_record(record, ident).blob, now=time.time()).record
    assert opened == record
    assert opened.cpu.simd == SIMD and opened.cpu.gpu_offload is True
    assert opened.build == "llama-cpp-python 0.3.36 cuda+cpu"
    assert opened.hardware_class == "NVIDIA H100 80GB HBM3 sm90"
    shown = record_to_json(opened)  # what `gpunet peers --json` and the dashboard get
    assert shown["build"] == record.build and shown["hardware_class"] == record.hardware_class
    assert shown["cpu"]["simd"] == list(SIMD) and shown["cpu"]["gpu_offload"] is True


IDENT = Identity.generate()


def plain(record: CapabilityRecord) -> dict[str, Any]:
    """The record's body as a reader sees it before validation (msgpack lists, not tuples)."""
    body = msgpack.unpackb(sign_record(record, IDENT).blob, raw=False)[1]
    result: dict[str, Any] = msgpack.unpackb(body, raw=False)
    return result


def test_record_of_an_older_node_without_the_new_fields_is_accepted() -> None:
    old = plain(make_record(IDENT))
    for name in ("build", "hardware_class"):
        del old[name]
    del old["cpu"]["simd"], old["cpu"]["gpu_offload"]
    record = record_from_plain(old)
    assert (record.build, record.hardware_class) == ("", "")
    assert record.cpu == CpuEntry(cores=2, ram_bytes=1 << 30)


def test_hostile_build_class_and_simd_are_refused() -> None:
    good = plain(with_hardware(make_record(IDENT)))
    assert record_from_plain(good).cpu.simd == SIMD
    bad_cpu: list[object] = [
        "AVX2",  # not a list
        [1, 2],
        [None],
        [["AVX"]],
        [{"a": 1}],
        ["avx2"],  # not a flag as llama.cpp writes them
        ["AVX2\n"],
        ["A" * 25],
        [""],
        [f"F{i}" for i in range(MAX_SIMD_FLAGS + 1)],
        [b"AVX2"],
    ]
    for simd in bad_cpu:
        data = {**good, "cpu": {**good["cpu"], "simd": simd}}
        with pytest.raises(RecordError):
            record_from_plain(data)
    for offload in (1, 0, "true", None, [], 2.5):
        data = {**good, "cpu": {**good["cpu"], "gpu_offload": offload}}
        with pytest.raises(RecordError):
            record_from_plain(data)
    for name, limit in (("build", MAX_BUILD), ("hardware_class", MAX_HARDWARE_CLASS)):
        for value in (None, 5, b"cpu", ["cpu"], {"a": 1}, True, "x" * (limit + 1)):
            with pytest.raises(RecordError):
                record_from_plain({**good, name: value})
    for cpu in (None, [], "cpu", {**good["cpu"], "extra": 1}, {1: 2}, {**good["cpu"], 3: "x"}):
        with pytest.raises(RecordError):
            record_from_plain({**good, "cpu": cpu})


def test_largest_record_a_node_publishes_fits() -> None:
    """Every new field at its bound, with a node's worth of GPUs and models: still signable."""
    gpus = tuple(
        GpuEntry(
            "NVIDIA GeForce RTX 4090 Laptop GPU", 1 << 40, 1 << 40, "8.9", "550.54.15", "12.4", 100
        )
        for _ in range(8)
    )
    models = tuple(
        ModelEntry(
            f"{i:064x}",
            f"qwen2.5-coder-32b-instruct-{i}",
            "qwen2",
            32_000_000_000,
            "Q4_K_M",
            131072,
            65,
            65,
            123.4,
            5678.9,
        )
        for i in range(16)
    )
    record = attrs.evolve(
        make_record(IDENT, models=models),
        gpus=gpus,
        cpu=CpuEntry(
            cores=256,
            ram_bytes=1 << 42,
            simd=tuple(f"AVX512_FLAG_{i:02d}" for i in range(MAX_SIMD_FLAGS)),
            gpu_offload=True,
        ),
        build="b" * MAX_BUILD,
        hardware_class="h" * MAX_HARDWARE_CLASS,
    )
    assert len(gpus) <= MAX_GPUS
    assert len(sign_record(record, IDENT).blob) <= MAX_RECORD_BYTES


def test_names_and_hashes_with_a_trailing_newline_are_refused() -> None:
    from p2p.dht.records import is_model_name, is_sha256

    assert is_sha256("a" * 64) and not is_sha256("a" * 64 + "\n")
    assert is_model_name("tiny-llama") and not is_model_name("tiny-llama\n")
