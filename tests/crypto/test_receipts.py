"""Signed receipts: sign and verify, every field covered by the signature, bounds on decode."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import msgpack
import pytest

from crypto.identity import Identity
from crypto.receipts import (
    MAX_RECEIPT_BYTES,
    MAX_RECEIPT_TOKENS,
    MIN_COMMITTED_LOGPROB,
    Receipt,
    ReceiptError,
    SignedReceipt,
    decode,
    encode,
    pack_logprobs,
    sign_receipt,
)

SHA = hashlib.sha256(b"model").hexdigest()


def _receipt(identity: Identity, **changes: Any) -> Receipt:
    fields: dict[str, object] = {
        "peer_id": identity.peer_id,
        "model_sha256": SHA,
        "request_hash": hashlib.sha256(b"request").digest(),
        "sampler": {"temperature": 0.7, "top_k": 40.0, "top_p": 0.9},
        "seed": 1234,
        "replayed": 3,
        "prompt_tokens": 17,
        "output_tokens": (5, 6, 7, 2**31 - 1),
        "issued_at": 1_700_000_000.5,
    }
    fields.update(changes)
    return Receipt(**fields)  # type: ignore[arg-type]


def test_a_signed_receipt_round_trips_and_verifies() -> None:
    identity = Identity.generate()
    signed = sign_receipt(_receipt(identity), identity)
    assert signed.verify()
    again = decode(encode(signed))
    assert again == signed
    assert again.verify()
    assert again.receipt.sampler_value("temperature", 0.0) == 0.7
    assert again.receipt.sampler_value("min_p", 0.05) == 0.05


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": hashlib.sha256(b"other").hexdigest()},
        {"request_hash": hashlib.sha256(b"other").digest()},
        {"sampler": {"temperature": 0.8, "top_k": 40.0, "top_p": 0.9}},
        {"seed": 1235},
        {"seed": None},
        {"replayed": 2},
        {"prompt_tokens": 16},
        {"output_tokens": (5, 6, 7)},
        {"output_tokens": (5, 6, 8, 2**31 - 1)},
        {"issued_at": 1_700_000_001.5},
    ],
)
def test_changing_any_field_breaks_the_signature(change: dict[str, Any]) -> None:
    identity = Identity.generate()
    signed = sign_receipt(_receipt(identity), identity)
    tampered = SignedReceipt(attrs.evolve(signed.receipt, **change), signed.signature)
    assert not tampered.verify()
    assert not decode(encode(tampered)).verify()


def test_another_peer_cannot_sign_for_a_peer_id() -> None:
    honest, other = Identity.generate(), Identity.generate()
    with pytest.raises(ValueError):
        sign_receipt(_receipt(honest), other)
    forged = SignedReceipt(_receipt(honest), other.sign("gpunet-receipt", b"x"))
    assert not forged.verify()
    # A valid signature of the right key, made for another purpose, does not pass either.
    signed = sign_receipt(_receipt(honest), honest)
    other_domain = honest.sign("capability-record", signed.receipt.signed_bytes())
    assert not SignedReceipt(signed.receipt, other_domain).verify()


def _fields(identity: Identity) -> list[object]:
    encoded = encode(sign_receipt(_receipt(identity), identity))
    fields = msgpack.unpackb(encoded, raw=False)
    assert isinstance(fields, list)
    return fields


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, 2),  # version
        (1, "not a peer id"),
        (2, "ABC"),
        (3, b"short"),
        (4, [["temperature", "hot"]]),
        (4, [["b", 1.0], ["a", 1.0]]),  # not sorted: not canonical
        (4, [["x" * 40, 1.0]]),
        (5, -1),
        (6, -1),
        (6, True),
        (7, -1),
        (7, 1.5),
        (8, [-1]),
        (8, "tokens"),
        (9, float("nan")),
        (9, 12),
        (10, b"\x00" * 10),
    ],
)
def test_malformed_fields_are_refused_by_name(index: int, value: object) -> None:
    fields = _fields(Identity.generate())
    fields[index] = value
    with pytest.raises(ReceiptError):
        decode(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb({"a": 1}),
        msgpack.packb([1, 2, 3]),
        b"\x00" * (MAX_RECEIPT_BYTES + 1),
        msgpack.packb(list(range(MAX_RECEIPT_TOKENS + 5))),
    ],
)
def test_garbage_is_a_receipt_error(data: bytes) -> None:
    with pytest.raises(ReceiptError):
        decode(data)


def test_the_longest_receipt_fits_the_bound() -> None:
    identity = Identity.generate()
    tokens = (2**31 - 1,) * MAX_RECEIPT_TOKENS
    signed = sign_receipt(_receipt(identity, output_tokens=tokens), identity)
    data = encode(signed)
    assert len(data) <= MAX_RECEIPT_BYTES
    assert decode(data).verify()
    with pytest.raises(ValueError):
        _receipt(identity, output_tokens=(*tokens, 1))
    committed = pack_logprobs([-40.0] * MAX_RECEIPT_TOKENS)
    signed = sign_receipt(_receipt(identity, output_tokens=tokens, logprobs=committed), identity)
    data = encode(signed)
    assert len(data) <= MAX_RECEIPT_BYTES
    assert decode(data).verify()


def test_logprob_commitments_are_signed_and_round_trip() -> None:
    identity = Identity.generate()
    values = [-0.25, None, -40.0, 0.0]
    committed = pack_logprobs(values)
    signed = sign_receipt(_receipt(identity, logprobs=committed), identity)
    again = decode(encode(signed))
    assert again == signed and again.verify()
    # 1/1024 nats; below -32 nats reads as -32; None stays "not committed".
    assert again.receipt.committed() == (-0.25, None, MIN_COMMITTED_LOGPROB, 0.0)
    forged = SignedReceipt(
        attrs.evolve(signed.receipt, logprobs=pack_logprobs([-0.5, None, -40.0, 0.0])),
        signed.signature,
    )
    assert not forged.verify()
    # Stripping the commitments breaks the signature too.
    assert not SignedReceipt(attrs.evolve(signed.receipt, logprobs=b""), signed.signature).verify()


def test_a_receipt_without_commitments_encodes_as_before() -> None:
    identity = Identity.generate()
    signed = sign_receipt(_receipt(identity), identity)
    fields = msgpack.unpackb(encode(signed), raw=False)
    assert len(fields) == 11  # what nodes signed before commitments existed
    assert decode(encode(signed)).receipt.committed() == ()


@pytest.mark.parametrize("logprobs", [b"\x00", b"\x00\x00" * 3, b"\x00\x00" * 5])
def test_commitments_of_another_length_are_refused(logprobs: bytes) -> None:
    identity = Identity.generate()
    with pytest.raises(ValueError, match="logprobs"):
        _receipt(identity, logprobs=logprobs)
    # and on decode: a 12-field array whose 11th is not one commitment per token
    good = encode(sign_receipt(_receipt(identity), identity))
    fields = msgpack.unpackb(good, raw=False)
    bad = msgpack.packb([*fields[:10], logprobs, fields[10]], use_bin_type=True)
    with pytest.raises(ReceiptError):
        decode(bad)
    empty = msgpack.packb([*fields[:10], b"", fields[10]], use_bin_type=True)
    with pytest.raises(ReceiptError):  # one receipt, one encoding
        decode(empty)


def test_probe_commitments_are_signed_and_round_trip_with_or_without_logprobs() -> None:
    identity = Identity.generate()
    probes = pack_logprobs([-1.5, -0.125, -7.0])
    for logprobs in (b"", pack_logprobs([-0.5, -0.25, -1.0, -2.0])):
        signed = sign_receipt(
            _receipt(identity, logprobs=logprobs, probe_logprobs=probes), identity
        )
        data = encode(signed)
        assert len(msgpack.unpackb(data, raw=False)) == 13
        again = decode(data)
        assert again == signed and again.verify()
        assert again.receipt.probes() == (-1.5, -0.125, -7.0)
        # Changing or stripping the probes breaks the signature.
        other = attrs.evolve(signed.receipt, probe_logprobs=pack_logprobs([-1.5, -0.125, -6.0]))
        assert not SignedReceipt(other, signed.signature).verify()
        stripped = attrs.evolve(signed.receipt, probe_logprobs=b"")
        assert not SignedReceipt(stripped, signed.signature).verify()


@pytest.mark.parametrize("probes", [b"\x00", b"\x00\x00" * 17])
def test_probe_commitments_out_of_bounds_are_refused(probes: bytes) -> None:
    identity = Identity.generate()
    with pytest.raises(ValueError, match="probe_logprobs"):
        _receipt(identity, probe_logprobs=probes)
    fields = msgpack.unpackb(encode(sign_receipt(_receipt(identity), identity)), raw=False)
    bad = msgpack.packb([*fields[:10], b"", probes, fields[10]], use_bin_type=True)
    with pytest.raises(ReceiptError):
        decode(bad)
