"""Signed receipts: what a serving node returned for one request segment, under its own key.

A receipt binds the node's identity to the model file it claims (sha256), the request it answered
(a hash the p2p layer computes over its canonical encoding, replay tokens included), the sampler
settings and the seed the run actually used, how many prompt tokens it processed, how many tokens
were replayed into it and the token ids it generated. With failover a request has one receipt
per segment (per node).

The signature is domain-separated (`RECEIPT_DOMAIN`), so a receipt can never pass as a DHT record
or a handshake and vice versa. The signed bytes are the receipt's canonical msgpack array without
the signature; `encode` appends it. Everything a receipt carries is bounded (`decode` refuses the
rest with `ReceiptError`), because a receipt arrives from the network and is stored in evidence
files that other people re-check: it is data, never trusted before `verify`.

Logprob commitments (issue #16): a node may also sign, per output token, its own log-probability
of that token (the raw log-softmax, as OpenAI's `logprobs`), quantized to int16 in 1/1024 nats
(`LOGPROB_SCALE`; -32 nats and below read as -32; `UNCOMMITTED` where it has none, e.g. tokens of
a stop string). A verifier compares them with its own at the positions it scores
(inference/verification.py): another model, a coarser quantization or another prompt moves them
far beyond honest numerical noise, and made-up values do not match the verifier's. Two bytes a
token, so the vector fits the receipt itself (`MAX_RECEIPT_BYTES` counts it). It is the 11th
array element only when present, so receipts without it encode, sign and verify as before.

No I/O, no p2p imports: the encoding of requests is the caller's business (only its hash is here).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import attrs
import msgpack

from crypto.identity import (
    SIGNATURE_LEN,
    Identity,
    public_key_from_peer_id,
    verify_signature,
)

RECEIPT_DOMAIN = "gpunet-receipt"
RECEIPT_VERSION = 1
HASH_LEN = 32
# A segment cannot hold more tokens than a request may ask for (inference's MAX_TOKENS_LIMIT,
# 32768); the crypto package names its own bound so that it imports nothing of gpunet.
MAX_RECEIPT_TOKENS = 32768
# Prompt probes a receipt commits to (inference/prompt_probes.py MAX_PROBES; crypto imports
# nothing of inference, so the bound is repeated here).
MAX_RECEIPT_PROBES = 16
MAX_TOKEN_ID = 2**31 - 1
MAX_SEED = 2**64 - 1
MAX_SAMPLER_ENTRIES = 32
MAX_SAMPLER_NAME = 32
# Logprob commitments: int16 per token in 1/LOGPROB_SCALE nats, from MIN_COMMITTED_LOGPROB to 0;
# UNCOMMITTED (positive, so never a log-probability) marks a token without one.
LOGPROB_SCALE = 1024
MIN_COMMITTED_LOGPROB = -32768 / LOGPROB_SCALE
UNCOMMITTED = 1
# 32768 token ids of up to 5 msgpack bytes each, their 2-byte commitments, plus the fixed fields:
# the largest valid receipt.
MAX_RECEIPT_BYTES = MAX_RECEIPT_TOKENS * (5 + 2) + 4096
_SHA256_HEX = frozenset("0123456789abcdef")


class ReceiptError(ValueError):
    """The bytes are not a well-formed receipt (the message says which part)."""


def _sampler_ok(_: object, __: object, value: tuple[tuple[str, float], ...]) -> None:
    if len(value) > MAX_SAMPLER_ENTRIES:
        raise ValueError(f"sampler: at most {MAX_SAMPLER_ENTRIES} settings")
    names = [name for name, _v in value]
    if names != sorted(set(names)):
        raise ValueError("sampler: distinct names in sorted order")
    for name, v in value:
        if not (isinstance(name, str) and 0 < len(name) <= MAX_SAMPLER_NAME and name.isascii()):
            raise ValueError("sampler: names are short ASCII strings")
        if not (isinstance(v, float) and math.isfinite(v)):
            raise ValueError(f"sampler: {name} must be a finite float")


def _tokens_ok(_: object, __: object, value: tuple[int, ...]) -> None:
    if len(value) > MAX_RECEIPT_TOKENS:
        raise ValueError(f"output_tokens: at most {MAX_RECEIPT_TOKENS}")
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_TOKEN_ID:
            raise ValueError("output_tokens: token ids are integers from 0 to 2**31-1")


def _sha256_ok(_: object, __: object, value: str) -> None:
    if not (isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256_HEX):
        raise ValueError("model_sha256: 64 lower-case hex digits")


def _hash_ok(_: object, __: object, value: bytes) -> None:
    if not (isinstance(value, bytes) and len(value) == HASH_LEN):
        raise ValueError(f"request_hash: {HASH_LEN} bytes")


def _seed_ok(_: object, __: object, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError("seed: an integer or None")
    if value is not None and not 0 <= value <= MAX_SEED:
        raise ValueError("seed: from 0 to 2**64-1")


def _peer_ok(_: object, __: object, value: str) -> None:
    try:
        public_key_from_peer_id(value)
    except ValueError as exc:
        raise ValueError(f"peer_id: {exc}") from exc


def pack_logprobs(values: Sequence[float | None]) -> bytes:
    """The commitment bytes of *values* (natural-log probabilities; None: not committed)."""
    quantized = [
        UNCOMMITTED if v is None or math.isnan(v) else max(-32768, min(0, round(v * LOGPROB_SCALE)))
        for v in values
    ]
    return struct.pack(f"<{len(quantized)}h", *quantized)


def unpack_logprobs(data: bytes) -> tuple[float | None, ...]:
    """The committed log-probabilities in *data* (None where a token has none)."""
    values = struct.unpack(f"<{len(data) // 2}h", data)
    return tuple(None if v > 0 else v / LOGPROB_SCALE for v in values)


def _as_sampler(value: object) -> tuple[tuple[str, float], ...]:
    if isinstance(value, dict):
        value = value.items()
    return tuple(sorted((str(k), float(v)) for k, v in value))  # type: ignore[attr-defined]


def _as_tokens(value: object) -> tuple[int, ...]:
    return tuple(value)  # type: ignore[arg-type]


@attrs.frozen
class Receipt:
    """What one node says it returned for one request segment (see the module docstring)."""

    peer_id: str = attrs.field(validator=_peer_ok)
    model_sha256: str = attrs.field(validator=_sha256_ok)
    request_hash: bytes = attrs.field(validator=_hash_ok)
    # (name, value) pairs sorted by name; a dict is accepted. Flags are 0.0 / 1.0.
    sampler: tuple[tuple[str, float], ...] = attrs.field(
        converter=_as_sampler, validator=_sampler_ok
    )
    seed: int | None = attrs.field(validator=_seed_ok)
    replayed: int = attrs.field(
        validator=[attrs.validators.ge(0), attrs.validators.le(MAX_RECEIPT_TOKENS)]
    )
    # The prompt as the node tokenised it (the rendered chat, BOS included): any honest node of
    # the same file counts the same, so a node that processed another prompt says so here.
    prompt_tokens: int = attrs.field(
        validator=[attrs.validators.ge(0), attrs.validators.le(2**31 - 1)]
    )
    output_tokens: tuple[int, ...] = attrs.field(converter=_as_tokens, validator=_tokens_ok)
    issued_at: float = attrs.field(validator=attrs.validators.instance_of(float))
    # int16 little-endian per output token (`pack_logprobs`), or empty: the node commits none.
    logprobs: bytes = attrs.field(default=b"", validator=attrs.validators.instance_of(bytes))

    @logprobs.validator
    def _logprobs_ok(self, _: object, value: bytes) -> None:
        if value and len(value) != 2 * len(self.output_tokens):
            raise ValueError("logprobs: two bytes per output token, or none")

    # int16 little-endian per prompt probe (`pack_logprobs`; inference/prompt_probes.py): the
    # node's log-probability at each prompt position the request's draws named, in their order.
    probe_logprobs: bytes = attrs.field(default=b"", validator=attrs.validators.instance_of(bytes))

    @probe_logprobs.validator
    def _probes_ok(self, _: object, value: bytes) -> None:
        if len(value) % 2 or len(value) > 2 * MAX_RECEIPT_PROBES:
            raise ValueError(f"probe_logprobs: two bytes per probe, at most {MAX_RECEIPT_PROBES}")

    def probes(self) -> tuple[float | None, ...]:
        """Per probe draw, the node's committed log-probability; () when it committed none."""
        return unpack_logprobs(self.probe_logprobs)

    def committed(self) -> tuple[float | None, ...]:
        """Per output token, the node's committed log-probability (None: none); () when the
        receipt carries no commitments."""
        return unpack_logprobs(self.logprobs)

    def signed_bytes(self) -> bytes:
        """The canonical encoding the signature covers."""
        packed: bytes = msgpack.packb(self._fields(), use_bin_type=True)
        return packed

    def _fields(self) -> list[Any]:
        return [
            RECEIPT_VERSION,
            self.peer_id,
            self.model_sha256,
            self.request_hash,
            [[name, value] for name, value in self.sampler],
            self.seed,
            self.replayed,
            self.prompt_tokens,
            list(self.output_tokens),
            self.issued_at,
            # older receipts (no probes) keep their 11 or 12 fields, byte for byte
            *([self.logprobs] if self.logprobs or self.probe_logprobs else []),
            *([self.probe_logprobs] if self.probe_logprobs else []),
        ]

    def sampler_value(self, name: str, default: float) -> float:
        return dict(self.sampler).get(name, default)


@attrs.frozen
class SignedReceipt:
    receipt: Receipt
    signature: bytes

    def verify(self) -> bool:
        """Whether the signature is the receipt's own peer id's over exactly these fields."""
        try:
            public_key = public_key_from_peer_id(self.receipt.peer_id)
        except ValueError:
            return False
        return verify_signature(
            public_key, RECEIPT_DOMAIN, self.receipt.signed_bytes(), self.signature
        )


def sign_receipt(receipt: Receipt, identity: Identity) -> SignedReceipt:
    if receipt.peer_id != identity.peer_id:
        raise ValueError("a receipt is signed by the peer it names")
    return SignedReceipt(receipt, identity.sign(RECEIPT_DOMAIN, receipt.signed_bytes()))


def encode(signed: SignedReceipt) -> bytes:
    packed: bytes = msgpack.packb([*signed.receipt._fields(), signed.signature], use_bin_type=True)
    return packed


def decode(data: bytes) -> SignedReceipt:
    """The receipt in *data*, well-formed (the signature is not checked: call `verify`)."""
    if not isinstance(data, bytes) or len(data) > MAX_RECEIPT_BYTES:
        raise ReceiptError(f"a receipt is at most {MAX_RECEIPT_BYTES} bytes")
    try:
        fields = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_array_len=MAX_RECEIPT_TOKENS
        )
    except Exception as exc:
        raise ReceiptError("receipt is not valid msgpack") from exc
    if not isinstance(fields, list) or len(fields) not in (11, 12, 13):
        raise ReceiptError(
            "receipt: an array of 11 fields (12 with logprob commitments, 13 with probes)"
        )
    version, peer, sha, rhash, sampler, seed, replayed, prompt, tokens, issued = fields[:10]
    extra, sig = fields[10:-1], fields[-1]
    logprobs = extra[0] if extra else b""
    probes = extra[1] if len(extra) == 2 else b""
    if not isinstance(logprobs, bytes) or not isinstance(probes, bytes):
        raise ReceiptError("receipt logprobs and probes: bytes")
    if version != RECEIPT_VERSION:
        raise ReceiptError(f"receipt version {version!r:.20} is not supported")
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_LEN:
        raise ReceiptError(f"receipt signature: {SIGNATURE_LEN} bytes")
    if not isinstance(sampler, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[1], float) for p in sampler
    ):
        raise ReceiptError("receipt sampler: [name, float] pairs")
    if not isinstance(tokens, list) or not isinstance(issued, float) or not math.isfinite(issued):
        raise ReceiptError("receipt: output tokens must be a list and issued_at a finite float")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (replayed, prompt)):
        raise ReceiptError("receipt: replayed and prompt_tokens must be integers")
    try:
        receipt = Receipt(
            peer_id=peer,
            model_sha256=sha,
            request_hash=rhash,
            sampler=tuple((name, value) for name, value in sampler),
            seed=seed,
            replayed=replayed,
            prompt_tokens=prompt,
            output_tokens=tuple(tokens),
            issued_at=issued,
            logprobs=logprobs,
            probe_logprobs=probes,
        )
    except (ValueError, TypeError) as exc:
        raise ReceiptError(f"receipt: {exc}") from exc
    if receipt.signed_bytes() != msgpack.packb(fields[:-1], use_bin_type=True):
        # One receipt, one encoding: re-encoding must give the same bytes the signer signed.
        raise ReceiptError("receipt is not in canonical form")
    return SignedReceipt(receipt, sig)
