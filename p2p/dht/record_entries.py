"""The parts of a capability record below the record itself: its entries (GPU, CPU, model, load,
relay hint), the field validators they share and `RecordError`.

Split from `records.py` (which keeps the record, its keys, signing and opening) so both files stay
small; `records.py` re-exports every name here, so importers keep one place to import from.
Sans-IO like the rest of the record rules: no event loop, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from p2p.dht.record_bounds import (
    MAX_ACTIVE_REQUESTS,
    MAX_CONTEXT_TOKENS,
    MAX_CPU_CORES,
    MAX_DECODE_TOK_S,
    MAX_FREE_SLOTS,
    MAX_GPU_VRAM_BYTES,
    MAX_LAYERS,
    MAX_PARAMETERS,
    MAX_PREFILL_TOK_S,
    MAX_QUEUE_DEPTH,
    MAX_RAM_BYTES,
    MAX_UTILIZATION_PCT,
)
from p2p.errors import RecordRefusal
from p2p.host_port import AddressError, parse_host_port

MAX_STRING = 256
MAX_ADDRESS_LEN = 100  # "[IPv6]:port" needs at most 47 characters; a usual DNS name fits
# The build and hardware class (failover prefers a node with the same pair: see
# p2p/client/failover.py) and the CPU's SIMD flags as llama.cpp names them (AVX2, NEON,
# ...; ~20 exist today).
MAX_BUILD = 64
MAX_HARDWARE_CLASS = 128
MAX_SIMD_FLAGS = 32
_SIMD_FLAG_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,23}$")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class RecordError(ValueError):
    """A record from the network (or about to be published) breaks the schema or its signature.

    `refusal` names the rule it broke, for `/metrics` (the message is for people)."""

    def __init__(self, message: str, refusal: RecordRefusal = RecordRefusal.MALFORMED) -> None:
        super().__init__(message)
        self.refusal = refusal


def is_sha256(text: str) -> bool:
    return bool(_SHA256_RE.fullmatch(text))


def is_model_name(text: str) -> bool:
    return bool(_NAME_RE.fullmatch(text))


def _bounded_str(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or len(value) > MAX_STRING:
        raise RecordError(f"{attr.name}: expected a string of at most {MAX_STRING} characters")


def _short_str(limit: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str) or len(value) > limit:
            raise RecordError(f"{attr.name}: expected a string of at most {limit} characters")

    return check


def _bool(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise RecordError(f"{attr.name}: expected true or false")


def _simd_flags(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) > MAX_SIMD_FLAGS
        or not all(isinstance(f, str) and _SIMD_FLAG_RE.fullmatch(f) for f in value)
    ):
        raise RecordError(f"{attr.name}: expected at most {MAX_SIMD_FLAGS} flags like 'AVX2'")


def _non_negative_int(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 1 << 63:
        raise RecordError(f"{attr.name}: expected a non-negative integer")


def _non_negative_float(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1e12:
        raise RecordError(f"{attr.name}: expected a non-negative number")


def _at_most(limit: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        _non_negative_int(inst, attr, value)
        assert isinstance(value, int)
        if value > limit:
            raise RecordError(f"{attr.name}: {value} is over the sane bound {limit}")

    return check


def _rate(limit: float) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        _non_negative_float(inst, attr, value)
        assert isinstance(value, (int, float))
        if value > limit:
            raise RecordError(f"{attr.name}: {value} is over the sane bound {limit:g}")

    return check


def _not_above(name: str, value: int, limit_name: str, limit: int) -> None:
    if value > limit:
        raise RecordError(f"{name}: {value} is more than {limit_name} ({limit})")


def _sha256(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not is_sha256(value):
        raise RecordError(f"{attr.name}: expected 64 lower-case hex digits")


def _model_name(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not is_model_name(value):
        raise RecordError(f"{attr.name}: not a valid model name")


def _address(text: str) -> bool:
    if len(text) >= MAX_ADDRESS_LEN:
        return False
    try:
        parse_host_port(text)
    except AddressError:
        return False
    return True


# Cross-field rules (free <= total, offloaded <= layers) run in `__attrs_post_init__`, after every
# field passed its own validator: a record that does not make sense never becomes an object.


@attrs.frozen
class GpuEntry:
    name: str = attrs.field(validator=_bounded_str)
    vram_total: int = attrs.field(validator=_at_most(MAX_GPU_VRAM_BYTES))
    vram_free: int = attrs.field(validator=_at_most(MAX_GPU_VRAM_BYTES))
    compute_capability: str = attrs.field(validator=_bounded_str)
    driver_version: str = attrs.field(validator=_bounded_str)
    cuda_version: str = attrs.field(validator=_bounded_str)
    utilization_pct: int = attrs.field(validator=_at_most(MAX_UTILIZATION_PCT))

    def __attrs_post_init__(self) -> None:
        _not_above("vram_free", self.vram_free, "vram_total", self.vram_total)


@attrs.frozen
class CpuEntry:
    cores: int = attrs.field(validator=_at_most(MAX_CPU_CORES))
    ram_bytes: int = attrs.field(validator=_at_most(MAX_RAM_BYTES))
    # llama.cpp's CPU features of this build (`llama_print_system_info`), sorted
    simd: tuple[str, ...] = attrs.field(default=(), validator=_simd_flags)
    gpu_offload: bool = attrs.field(default=False, validator=_bool)  # llama_supports_gpu_offload


# How a node turns chat messages into a prompt for this model (inference/chat.py `chat_format`):
# "template" (the GGUF's own chat template), "gemma" (Gemma's turn markers: the GGUF has no
# template, or one that cannot be rendered), "generic" ("### User:" turns), "" (a node older
# than the field). What the model can do beyond text generation: "tools" (its template renders
# tool definitions: function calling), "embedding" (an embedding model: /v1/embeddings, no text).
CHAT_FORMATS = ("", "template", "gemma", "generic")
MODEL_CAPABILITIES = ("tools", "embedding")


def _chat_format(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value not in CHAT_FORMATS:
        raise RecordError(f"{attr.name}: expected one of {', '.join(map(repr, CHAT_FORMATS))}")


def _capabilities(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if (
        not isinstance(value, tuple)
        or len(set(value)) != len(value)
        or not all(v in MODEL_CAPABILITIES for v in value)
    ):
        raise RecordError(f"{attr.name}: distinct values among {', '.join(MODEL_CAPABILITIES)}")


def _as_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class ModelEntry:
    sha256: str = attrs.field(validator=_sha256)
    name: str = attrs.field(validator=_model_name)
    architecture: str = attrs.field(validator=_bounded_str)
    parameter_count: int = attrs.field(validator=_at_most(MAX_PARAMETERS))
    quantization: str = attrs.field(validator=_bounded_str)
    context_length: int = attrs.field(validator=_at_most(MAX_CONTEXT_TOKENS))
    layers_offloaded: int = attrs.field(validator=_at_most(MAX_LAYERS))
    layers_total: int = attrs.field(validator=_at_most(MAX_LAYERS))
    decode_tok_s: float = attrs.field(default=0.0, validator=_rate(MAX_DECODE_TOK_S))
    prefill_tok_s: float = attrs.field(default=0.0, validator=_rate(MAX_PREFILL_TOK_S))
    # Left out of the signed body at their defaults (records.py), so older records verify.
    chat_format: str = attrs.field(default="", validator=_chat_format)
    capabilities: tuple[str, ...] = attrs.field(
        default=(), converter=_as_tuple, validator=_capabilities
    )

    def __attrs_post_init__(self) -> None:
        _not_above("layers_offloaded", self.layers_offloaded, "layers_total", self.layers_total)


@attrs.frozen
class LoadEntry:
    active_requests: int = attrs.field(default=0, validator=_at_most(MAX_ACTIVE_REQUESTS))
    free_slots: int = attrs.field(default=1, validator=_at_most(MAX_FREE_SLOTS))
    queue_depth: int = attrs.field(default=0, validator=_at_most(MAX_QUEUE_DEPTH))


def _tuple_of(kind: type, limit: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if (
            not isinstance(value, tuple)
            or len(value) > limit
            or not all(isinstance(v, kind) for v in value)
        ):
            raise RecordError(f"{attr.name}: expected at most {limit} {kind.__name__} entries")

    return check


# How a node is reached (p2p/reach/): "direct" (dialled back on its own address), "mapped"
# (dialled back on a port its router maps to it), "relayed" (neither: dial one of its relays),
# "unknown" (not checked yet, or a node older than the field).
REACH_KINDS = ("direct", "mapped", "relayed", "unknown")
# Relays a record names: V holds reservations at one or two; four leaves room for a change of
# relay while an older record is still cached, and bounds what a client may be sent to dial.
MAX_RELAYS = 4
PEER_ID_LEN = 52  # base32 of a 32-byte Ed25519 key, unpadded
_PEER_ID_RE = re.compile(r"^[a-z2-7]{52}$")


def is_peer_id(text: object) -> bool:
    return isinstance(text, str) and bool(_PEER_ID_RE.fullmatch(text))


def _peer_id(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not is_peer_id(value):
        raise RecordError(f"{attr.name}: expected a peer id ({PEER_ID_LEN} base32 characters)")


def _host_port(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _address(value):
        raise RecordError(f"{attr.name}: expected a 'host:port' string")


def _reach(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value not in REACH_KINDS:
        raise RecordError(f"{attr.name}: expected one of {', '.join(REACH_KINDS)}")


@attrs.frozen
class RelayHint:
    """A relay at which the node holds a reservation: dial *address*, expect *peer_id* there."""

    peer_id: str = attrs.field(validator=_peer_id)
    address: str = attrs.field(validator=_host_port)
