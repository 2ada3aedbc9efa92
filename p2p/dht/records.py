"""Capability records: what a node offers, signed by its identity key, stored in the DHT.

A record is validated once, when it becomes a `CapabilityRecord` (from the network or from our own
node); inside the program nobody checks it again. The wire form is a msgpack envelope
``[ENVELOPE_VERSION, body, signature]`` where *body* is the msgpack map of the record and the
signature covers ``signing_input(RECORD_DOMAIN, body)`` — so a signature made for anything else
(a handshake, another record version) never verifies as a record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import msgpack

from crypto.identity import (
    Identity,
    peer_id_from_public_key,
    verify_signature,
)
from p2p.dht.record_entries import (  # re-exported: importers take every record name from here
    CHAT_FORMATS,
    MAX_ADDRESS_LEN,
    MAX_BUILD,
    MAX_HARDWARE_CLASS,
    MAX_RELAYS,
    MAX_SIMD_FLAGS,
    MAX_STRING,
    MODEL_CAPABILITIES,
    REACH_KINDS,
    CpuEntry,
    GpuEntry,
    LoadEntry,
    ModelEntry,
    RecordError,
    RelayHint,
    _address,
    _bool,
    _bounded_str,
    _non_negative_float,
    _non_negative_int,
    _reach,
    _short_str,
    _tuple_of,
    is_model_name,
    is_peer_id,
    is_sha256,
)
from p2p.errors import RecordRefusal
from p2p.model_match import model_matches

__all__ = [
    "CHAT_FORMATS",
    "MAX_ADDRESS_LEN",
    "MAX_BUILD",
    "MAX_HARDWARE_CLASS",
    "MAX_NODE_NAME",
    "MAX_RELAYS",
    "MAX_SIMD_FLAGS",
    "MAX_STRING",
    "MODEL_CAPABILITIES",
    "REACH_KINDS",
    "CapabilityRecord",
    "CpuEntry",
    "GpuEntry",
    "LoadEntry",
    "ModelEntry",
    "RecordError",
    "RelayHint",
    "SignedRecord",
    "is_model_name",
    "is_node_name",
    "is_peer_id",
    "is_sha256",
]


SCHEMA_VERSION = 1
ENVELOPE_VERSION = 1
RECORD_DOMAIN = "capability-record/1"

# rpcudp refuses outgoing requests over 8192 bytes, and a store request carries the record plus
# the sender's id, the key and msgpack framing (~100 bytes). 7 KiB leaves room for all of that.
MAX_RECORD_BYTES = 7 * 1024
# Records live one minute. TTL 60 s, republished every TTL/3 = 20 s (issue #18, "live state"):
# - a killed node is gone from every lookup at most 60 s after its last publish (the store drops
#   expired records, and readers check expiry again); a stopped one (Ctrl-C, SIGTERM) at once: its
#   last publish is a signed withdrawal (`withdrawn`, p2p/node/withdrawal.py), which supersedes
#   the live record under every key by its higher seq and which readers drop;
# - republishing at TTL/3 lets two consecutive rounds be lost (a slow lookup, a burst of packet
#   loss) before the record lapses while its node lives;
# - the load a client ranks by is republished when it changes, at most every
#   `LOAD_REPUBLISH_MIN_S` (p2p/node/load_refresh.py), so what a lookup finds is at most that
#   plus a publish (~1 s) plus the client's lookup cache (5 s) old: ~10 s;
# - the price, measured (`tools/bench_publish.py --nodes 40` and `--nodes 100`, alike within 3 %;
#   a 665-byte record of one model, 4 keys): a publish is one closest-nodes crawl per key and
#   k = 20 stores per key, ~86 find_node + 80 store + a few proof requests = ~170 requests,
#   ~340 datagrams with their answers, ~67 KB sent (59 KB of it the stores, so it grows with
#   the record). Every 20 s: ~17 datagrams/s and ~3.4 KB/s sent per node (a fifth of that at
#   100 s, the figure before issue 18). A busy node whose load changes all the time republishes
#   every 5 s instead (the 20 s period restarts after each publish), and a load republish reuses
#   the closest nodes found by the last crawl (`Dht.publish(..., reuse_closest_s=...)`): 80
#   stores, ~160 datagrams, ~59 KB. Measured on the node's real republisher with its load
#   changing every 0.2 s for 60 s (`--busy 60`): 11 publishes, ~35 datagrams/s, ~12 KB/s sent
#   (the answers to stores are a few bytes). Each of a key's 20 closest nodes receives
#   one store per busy provider per 5 s (one Ed25519 check each, ~0.1 ms): 64 busy providers
#   of one model (the per-key bound) cost it ~13 checks/s per key. An idle node sends nothing
#   extra. Rejected: a load query over the session (`Pong` carrying load) helps only a client
#   that holds a session to the node, and needs a ping loop in every client; the DHT path
#   reaches every lookup, `gpunet peers` and the dashboard alike.
DEFAULT_TTL_S = 60.0
REPUBLISH_INTERVAL_S = DEFAULT_TTL_S / 3
MAX_NODE_NAME = 64


def is_node_name(value: object) -> bool:
    """A node name a record may carry: printable text (no control or line-break characters)."""
    return isinstance(value, str) and len(value) <= MAX_NODE_NAME and value.isprintable()


# Records are republished, never long-lived. A longer cap gave a stranger's record a longer stay
# than an honest one's (issue #14: 1 h against 300 s), so "latest expiry" was the attacker's to
# win; since then nothing in a store or an answer is decided by expiry (record_store.py). The cap
# stayed at 600 s when the default TTL fell from 300 s to 60 s (issue #18): nodes of the versions
# before publish 300 s records, which must still verify, and a stranger gains nothing it did not
# have before (it may republish as often as it likes anyway; see record_store.py on updates).
MAX_TTL_S = 600.0
# Clocks of volunteers drift; refuse records from further in the future than this.
MAX_CLOCK_SKEW_S = 120.0

MAX_ADDRESSES = 8
MAX_GPUS = 16
MAX_MODELS = 32

NAMESPACE = "gpunet/1"
# A private network's id (16 bytes from crypto.network_key; up to 32 accepted) prefixes every key
# and is a signed field of the record, so a record never verifies for another network's keys.
MAX_NETWORK_ID = 32


def namespace(network_id: bytes | None = None) -> str:
    """`gpunet/1` for the public network, `gpunet/1/net/<hex id>` for a private one."""
    return NAMESPACE if network_id is None else f"{NAMESPACE}/net/{network_id.hex()}"


def node_key(peer_id: str, network_id: bytes | None = None) -> str:
    return f"{namespace(network_id)}/node/{peer_id}"


def model_key(sha256: str, network_id: bytes | None = None) -> str:
    return f"{namespace(network_id)}/model/{sha256}"


def directory_key(network_id: bytes | None = None) -> str:
    """Every node's record is also stored here, so `peers` can list a small network.

    One key for everyone is a hot spot: the storage bound (64 signers per key) caps it, and the
    crawler of a large network replaces it. Lookups by model never use it.
    """
    return f"{namespace(network_id)}/directory"


def model_name_key(name: str, network_id: bytes | None = None) -> str:
    return f"{namespace(network_id)}/model-name/{name.lower()}"


def dht_digest(key: str) -> bytes:
    """The 160-bit DHT key for a namespaced string key (kademlia's routing needs sha1 width)."""
    return hashlib.sha1(key.encode()).digest()


def _addresses(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
    if (
        not isinstance(value, tuple)
        or not 0 < len(value) <= MAX_ADDRESSES
        or not all(isinstance(a, str) and _address(a) for a in value)
    ):
        raise RecordError(f"addresses: expected 1..{MAX_ADDRESSES} 'host:port' strings")


@attrs.frozen
class CapabilityRecord:
    """Everything a client needs to choose this node and open a session to it."""

    peer_id: str = attrs.field(validator=_bounded_str)
    public_key: bytes = attrs.field()
    addresses: tuple[str, ...] = attrs.field(validator=_addresses)
    software_version: str = attrs.field(validator=_bounded_str)
    seq: int = attrs.field(validator=_non_negative_int)
    issued_at: float = attrs.field(validator=_non_negative_float)
    expires_at: float = attrs.field(validator=_non_negative_float)
    gpus: tuple[GpuEntry, ...] = attrs.field(validator=_tuple_of(GpuEntry, MAX_GPUS))
    cpu: CpuEntry
    models: tuple[ModelEntry, ...] = attrs.field(validator=_tuple_of(ModelEntry, MAX_MODELS))
    load: LoadEntry = attrs.field(factory=LoadEntry)
    schema: int = SCHEMA_VERSION
    # None: the public network, and the field is left out of the signed body, so public records
    # are byte-for-byte what they were before private networks existed.
    network_id: bytes | None = attrs.field(default=None)
    # "llama-cpp-python 0.3.36 cuda+cpu" and "NVIDIA H100 80GB HBM3 sm90" / "cpu x86_64 avx2";
    # "" from nodes older than these fields.
    build: str = attrs.field(default="", validator=_short_str(MAX_BUILD))
    hardware_class: str = attrs.field(default="", validator=_short_str(MAX_HARDWARE_CLASS))
    # How the node is reached and the relays it holds reservations at (p2p/reach/); like
    # network_id, left out of the signed body at their defaults, so older records still verify.
    reach: str = attrs.field(default="unknown", validator=_reach)
    relays: tuple[RelayHint, ...] = attrs.field(
        default=(), validator=_tuple_of(RelayHint, MAX_RELAYS)
    )
    # The node's owner-chosen name (`--name`, shown by `peers` and the dashboard; "" for none):
    # printable, at most MAX_NODE_NAME characters, never trusted to be unique.
    name: str = attrs.field(default="")
    # A signed goodbye: the node stopped (Ctrl-C, SIGTERM). It keeps the record's keys so it
    # supersedes the node's live record (higher seq) wherever that is stored, and lookups drop it.
    withdrawn: bool = attrs.field(default=False, validator=_bool)

    @name.validator
    def _check_name(self, _attr: attrs.Attribute[Any], value: object) -> None:
        if not is_node_name(value):
            raise RecordError(
                f"name: expected at most {MAX_NODE_NAME} printable characters, no line breaks"
            )

    @network_id.validator
    def _check_network(self, _attr: attrs.Attribute[Any], value: object) -> None:
        if value is not None and not (
            isinstance(value, bytes) and 0 < len(value) <= MAX_NETWORK_ID
        ):
            raise RecordError(f"network_id: expected 1..{MAX_NETWORK_ID} bytes")

    @public_key.validator
    def _check_key(self, _attr: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, bytes) or len(value) != 32:
            raise RecordError("public_key: expected 32 bytes")
        if peer_id_from_public_key(value) != self.peer_id:
            raise RecordError("peer_id does not match public_key")

    def dht_keys(self) -> tuple[str, ...]:
        """Every string key this record may be stored under (its key binding)."""
        net = self.network_id
        keys = [node_key(self.peer_id, net), directory_key(net)]
        for m in self.models:
            keys += [model_key(m.sha256, net), model_name_key(m.name, net)]
        return tuple(dict.fromkeys(keys))

    def serves(self, model: str) -> ModelEntry | None:
        for m in self.models:
            if model_matches(model, m.sha256, m.name):
                return m
        return None


@attrs.frozen
class SignedRecord:
    record: CapabilityRecord
    blob: bytes  # the exact envelope bytes, re-sent as they are so signatures stay valid


# Fields newer than the first records: absent from the signed body while they hold their default.
_LEFT_OUT_AT_DEFAULT: tuple[tuple[str, object], ...] = (
    ("network_id", None),
    ("reach", "unknown"),
    ("relays", ()),
    ("name", ""),
    ("withdrawn", False),
)
_MODEL_LEFT_OUT_AT_DEFAULT: tuple[tuple[str, object], ...] = (
    ("chat_format", ""),
    ("capabilities", ()),
)


def _to_plain(value: object) -> object:
    if attrs.has(type(value)):
        fields = attrs.asdict(value, recurse=False)  # type: ignore[arg-type]
        left_out = (
            _LEFT_OUT_AT_DEFAULT
            if isinstance(value, CapabilityRecord)
            else _MODEL_LEFT_OUT_AT_DEFAULT
            if isinstance(value, ModelEntry)
            else ()
        )
        for name, default in left_out:
            if fields[name] == default:
                del fields[name]
        return {k: _to_plain(v) for k, v in fields.items()}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


T = TypeVar("T")


def _build(cls: type[T], data: object) -> T:
    if not isinstance(data, Mapping):
        raise RecordError(f"{cls.__name__}: expected a map")
    names = {f.name for f in attrs.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise RecordError(f"{cls.__name__}: unknown fields {sorted(map(str, unknown))[:5]}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise RecordError(f"{cls.__name__}: missing or wrong fields") from exc


def record_from_plain(data: object) -> CapabilityRecord:
    if not isinstance(data, Mapping):
        raise RecordError("record: expected a map")
    if data.get("schema") != SCHEMA_VERSION:
        raise RecordError(f"record: unsupported schema {data.get('schema')!r}")
    fields = dict(data)
    try:
        fields["addresses"] = tuple(fields.get("addresses") or ())
        fields["gpus"] = tuple(_build(GpuEntry, g) for g in _as_list(fields.get("gpus"), MAX_GPUS))
        fields["models"] = tuple(
            _build(ModelEntry, m) for m in _as_list(fields.get("models"), MAX_MODELS)
        )
        fields["cpu"] = _build(CpuEntry, _with_tuple(fields.get("cpu"), "simd", MAX_SIMD_FLAGS))
        fields["load"] = _build(LoadEntry, fields.get("load"))
        if "relays" in fields:
            fields["relays"] = tuple(
                _build(RelayHint, h) for h in _as_list(fields["relays"], MAX_RELAYS)
            )
    except TypeError as exc:
        raise RecordError("record: wrong field types") from exc
    return _build(CapabilityRecord, fields)


def _as_list(value: object, limit: int) -> list[object]:
    if not isinstance(value, list) or len(value) > limit:
        raise RecordError(f"expected a list of at most {limit} entries")
    return value


def _with_tuple(data: object, name: str, limit: int) -> object:
    """*data* with its msgpack list *name* as a tuple (attrs fields hold tuples)."""
    if not isinstance(data, Mapping) or name not in data:
        return data
    return {**data, name: tuple(_as_list(data[name], limit))}


def sign_record(record: CapabilityRecord, identity: Identity) -> SignedRecord:
    if identity.public_key != record.public_key:
        raise RecordError("record is for another identity")
    body = msgpack.packb(_to_plain(record), use_bin_type=True)
    blob = msgpack.packb(
        [ENVELOPE_VERSION, body, identity.sign(RECORD_DOMAIN, body)], use_bin_type=True
    )
    if len(blob) > MAX_RECORD_BYTES:
        raise RecordError(
            f"record is {len(blob)} bytes, over the {MAX_RECORD_BYTES}-byte limit",
            RecordRefusal.TOO_LARGE,
        )
    return SignedRecord(record, blob)


def open_record(blob: object, *, now: float) -> SignedRecord:
    """Parse and check a record from the network: size, schema, signature, lifetime."""
    if not isinstance(blob, bytes) or len(blob) > MAX_RECORD_BYTES:
        raise RecordError("record: not bytes or too large", RecordRefusal.TOO_LARGE)
    try:
        envelope = msgpack.unpackb(blob, raw=False, max_bin_len=MAX_RECORD_BYTES)
        if not (isinstance(envelope, list) and len(envelope) == 3):
            raise RecordError("record: bad envelope")
        version, body, signature = envelope
        if version != ENVELOPE_VERSION or not isinstance(body, bytes):
            raise RecordError("record: unknown envelope version")
        if not isinstance(signature, bytes):
            raise RecordError("record: bad signature field")
        plain = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError("record: not valid msgpack") from exc
    record = record_from_plain(plain)
    if not verify_signature(record.public_key, RECORD_DOMAIN, body, signature):
        raise RecordError("record: bad signature", RecordRefusal.BAD_SIGNATURE)
    check_lifetime(record, now=now)
    return SignedRecord(record, blob)


def check_lifetime(record: CapabilityRecord, *, now: float) -> None:
    if record.expires_at <= now:
        raise RecordError("record: expired", RecordRefusal.EXPIRED)
    if record.issued_at > now + MAX_CLOCK_SKEW_S:
        raise RecordError("record: issued in the future", RecordRefusal.FUTURE)
    if record.expires_at - record.issued_at > MAX_TTL_S:
        raise RecordError("record: lifetime too long", RecordRefusal.LIFETIME)


def newest_per_peer(records: list[SignedRecord]) -> list[CapabilityRecord]:
    """One record per signer, the highest sequence number winning (withdrawals included: a
    withdrawal must win over the older live record some holder still has; `live` drops it)."""
    best: dict[str, CapabilityRecord] = {}
    for s in records:
        r = s.record
        if r.peer_id not in best or r.seq > best[r.peer_id].seq:
            best[r.peer_id] = r
    return list(best.values())


def live(records: list[CapabilityRecord]) -> list[CapabilityRecord]:
    """*records* without the withdrawn ones (a node that said it stopped). Apply it after
    `newest_per_peer`, never before: filtered first, an older live record would win again."""
    return [r for r in records if not r.withdrawn]


def record_to_json(record: CapabilityRecord) -> dict[str, Any]:
    """The JSON shape `gpunet peers --json` prints (public key as hex)."""
    plain = _to_plain(record)
    assert isinstance(plain, dict)
    plain["public_key"] = record.public_key.hex()
    plain["reach"] = record.reach
    plain["relays"] = [{"peer_id": h.peer_id, "address": h.address} for h in record.relays]
    if record.network_id is not None:
        plain["network_id"] = record.network_id.hex()
    return plain
