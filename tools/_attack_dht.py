"""DHT attacks of the drill (issue #14: crowd-out, tarpit records, amplification, in-range lies).

A hostile peer speaks rpcudp by hand from a bare UDP socket bound to a chosen 127.x.y.z source
(many sources stand in for many networks), and signs records itself: the record is built as a
plain map and signed with this tree's identity code and record domain, not through
`CapabilityRecord`, so that a lie this tree's validators refuse can still be sent to an older
node (the wire format is the same).
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack
import trio
import umsgpack

from crypto.identity import Identity
from p2p.dht import records

CALL_TIMEOUT_S = 3.0
# rpcudp refuses outgoing requests over 8 KiB; answers are read up to a full datagram.
MAX_DATAGRAM = 65536
ATTACKER_LIFETIME_S = 3600.0  # the longest lifetime today's (daa14b5) nodes accept
HONEST_TTL_S = records.DEFAULT_TTL_S


class RawPeer:
    """A bare UDP socket on *source* speaking rpcudp framing by hand."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.node_id = os.urandom(20)
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.last_request = 0
        self.last_answer = 0

    async def __aenter__(self) -> RawPeer:
        await self.sock.bind((self.source, 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def call(self, to: tuple[str, int], name: str, *args: object) -> object:
        """The answer, or TimeoutError after CALL_TIMEOUT_S; sizes of the last exchange kept."""
        msg_id = os.urandom(20)
        datagram = b"\x00" + msg_id + umsgpack.packb([name, [self.node_id, *args]])
        self.last_request = len(datagram)
        self.last_answer = 0
        await self.sock.sendto(datagram, to)
        with trio.fail_after(CALL_TIMEOUT_S):
            while True:  # the node's own requests to us (challenges) are skipped
                data, _ = await self.sock.recvfrom(MAX_DATAGRAM)
                if data[:21] == b"\x01" + msg_id:
                    self.last_answer = len(data)
                    return umsgpack.unpackb(data[21:])

    async def store(self, to: tuple[str, int], key: str, blob: bytes) -> bool:
        try:
            return await self.call(to, "store", records.dht_digest(key), blob) is True
        except (TimeoutError, trio.TooSlowError, OSError, umsgpack.UnpackException):
            return False


# --- records, built by hand ---------------------------------------------------------------------


def model_entry(sha: str, name: str, **over: Any) -> dict[str, Any]:
    entry = {
        "sha256": sha,
        "name": name,
        "architecture": "llama",
        "parameter_count": 1000,
        "quantization": "F32",
        "context_length": 512,
        "layers_offloaded": 0,
        "layers_total": 2,
        "decode_tok_s": 30.0,
        "prefill_tok_s": 300.0,
    }
    return {**entry, **over}


def plain_record(
    identity: Identity,
    addresses: list[str],
    models: list[dict[str, Any]],
    *,
    lifetime: float = HONEST_TTL_S,
    gpus: list[dict[str, Any]] | None = None,
    cpu: dict[str, Any] | None = None,
    load: dict[str, Any] | None = None,
) -> dict[str, Any]:
    now = time.time()
    return {
        "peer_id": identity.peer_id,
        "public_key": identity.public_key,
        "addresses": addresses,
        "software_version": "gpunet/drill",
        "seq": int(now * 1000),
        "issued_at": now,
        "expires_at": now + lifetime,
        "gpus": gpus or [],
        "cpu": cpu or {"cores": 2, "ram_bytes": 1 << 30, "simd": [], "gpu_offload": False},
        "models": models,
        "load": load or {"active_requests": 0, "free_slots": 4, "queue_depth": 0},
        "schema": records.SCHEMA_VERSION,
        "build": "",
        "hardware_class": "",
    }


def sign_plain(plain: dict[str, Any], identity: Identity) -> bytes:
    body = msgpack.packb(plain, use_bin_type=True)
    signature = identity.sign(records.RECORD_DOMAIN, body)
    blob: bytes = msgpack.packb([records.ENVELOPE_VERSION, body, signature], use_bin_type=True)
    return blob


def gpu(name: str, **over: Any) -> dict[str, Any]:
    entry = {
        "name": name,
        "vram_total": 24 << 30,
        "vram_free": 20 << 30,
        "compute_capability": "8.9",
        "driver_version": "550.0",
        "cuda_version": "12.4",
        "utilization_pct": 5,
    }
    return {**entry, **over}


def max_size_record(identity: Identity, addresses: list[str], models: list[dict[str, Any]],
                    lifetime: float) -> bytes:  # fmt: skip
    """A valid record padded with GPUs to just under the record size limit."""

    def signed(gpus: list[dict[str, Any]], version: str) -> bytes:
        plain = plain_record(identity, addresses, models, lifetime=lifetime, gpus=gpus)
        return sign_plain({**plain, "software_version": version}, identity)

    name_room = records.MAX_STRING - len("GPU 99 ")
    gpus: list[dict[str, Any]] = []
    best = signed(gpus, "gpunet/drill")
    while len(gpus) < records.MAX_GPUS:  # GPUs with the longest names that fit...
        trial = [*gpus, gpu(f"GPU {len(gpus)} " + "x" * name_room)]
        blob = signed(trial, "gpunet/drill")
        if len(blob) > records.MAX_RECORD_BYTES:
            break
        gpus, best = trial, blob
    lo, hi = 0, records.MAX_STRING - len("gpunet/drill ")  # ...then the version string fills
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(signed(gpus, "gpunet/drill " + "x" * mid)) <= records.MAX_RECORD_BYTES:
            lo = mid
        else:
            hi = mid - 1
    return signed(gpus, "gpunet/drill " + "x" * lo) if lo else best


def model_keys(sha: str, name: str) -> list[str]:
    return [records.model_key(sha), records.model_name_key(name)]


# --- attack 5: amplification --------------------------------------------------------------------


async def amplification(node: tuple[str, int], source: str) -> dict[str, Any]:
    """find_value on the directory key from a source that proved nothing: answer ÷ request."""
    async with RawPeer(source) as peer:
        try:
            await peer.call(node, "find_value", records.dht_digest(records.directory_key()))
        except (TimeoutError, trio.TooSlowError, umsgpack.UnpackException):
            return {"request_bytes": peer.last_request, "answer_bytes": 0, "ratio": 0.0}
        ratio = peer.last_answer / peer.last_request if peer.last_request else 0.0
        return {
            "request_bytes": peer.last_request,
            "answer_bytes": peer.last_answer,
            "ratio": round(ratio, 1),
        }


# --- attack 7: in-range lies --------------------------------------------------------------------

LIES: dict[str, dict[str, Any]] = {
    "free VRAM above total": {"gpus": [gpu("liar", vram_total=8 << 30, vram_free=80 << 30)]},
    "utilisation 10^18 %": {"gpus": [gpu("liar", utilization_pct=10**18)]},
    "999 of 18 layers offloaded": {"models": {"layers_offloaded": 999, "layers_total": 18}},
    "context 2^62": {"models": {"context_length": 2**62}},
    "10^18 free slots": {"load": {"active_requests": 0, "free_slots": 10**18, "queue_depth": 0}},
}


async def in_range_lies(node: tuple[str, int], source: str) -> dict[str, bool]:
    """Each lie in its own validly signed record, stored under the liar's own node key."""
    accepted: dict[str, bool] = {}
    async with RawPeer(source) as peer:
        for lie, fields in LIES.items():
            liar = Identity.generate()
            over = fields.get("models")
            models = [model_entry("ab" * 32, "liar-model", **(over or {}))]
            plain = plain_record(
                liar, [f"{source}:9"], models, gpus=fields.get("gpus"), load=fields.get("load")
            )
            accepted[lie] = await peer.store(
                node, records.node_key(liar.peer_id), sign_plain(plain, liar)
            )
    return accepted


# --- attack 1: crowd-out ------------------------------------------------------------------------


async def crowd_out(
    nodes: list[tuple[str, int]], sha: str, name: str, identities: int, networks: int
) -> dict[str, Any]:
    """*identities* Sybils from *networks* source /24s (127.20+n.0.x) store maximum-size,
    maximum-lifetime records under the directory key and the model's two keys at every node."""
    keys = [records.directory_key(), *model_keys(sha, name)]
    stored = sent = 0
    lifetimes: dict[float, int] = {}

    async def one(index: int) -> None:
        nonlocal stored, sent
        source = f"127.{20 + index % networks}.0.{1 + index // networks}"
        sybil = Identity.generate()
        address = [f"127.50.{index}.1:9"]  # nothing listens there: refused at once
        async with RawPeer(source) as peer:
            lifetime = ATTACKER_LIFETIME_S
            blob = max_size_record(sybil, address, [model_entry(sha, name)], lifetime)
            for node in nodes:
                for key in keys:
                    sent += 1
                    ok = await peer.store(node, key, blob)
                    if not ok and lifetime > records.MAX_TTL_S:
                        # a node that caps lifetimes: the longest this tree's rules allow
                        lifetime = records.MAX_TTL_S
                        blob = max_size_record(sybil, address, [model_entry(sha, name)], lifetime)
                        ok = await peer.store(node, key, blob)
                    stored += ok
            lifetimes[lifetime] = lifetimes.get(lifetime, 0) + 1

    async with trio.open_nursery() as nursery:
        for i in range(identities):
            nursery.start_soon(one, i)
    return {"datagrams": sent, "stored": stored, "lifetimes_s": lifetimes}


# --- attack 4: tarpit records --------------------------------------------------------------------


async def hold_forever(stream: trio.SocketStream) -> None:
    """Accept, then never answer: the connection stays open until the drill ends."""
    async with stream:
        await trio.sleep_forever()


async def open_tarpits(nursery: trio.Nursery, records_n: int, per_record: int) -> list[list[str]]:
    """Listeners on 127.40.<i>.<j> that accept TCP and never send a byte."""
    addresses: list[list[str]] = []
    for i in range(records_n):
        row = []
        for j in range(per_record):
            host = f"127.40.{i}.{j + 1}"
            listeners = await trio.open_tcp_listeners(0, host=host)
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, hold_forever, listeners)
            row.append(f"{host}:{port}")
        addresses.append(row)
    return addresses


async def store_tarpits(
    nodes: list[tuple[str, int]], sha: str, name: str, addresses: list[list[str]]
) -> int:
    """One record per row of *addresses*, claiming the top speed this tree lets a record claim."""
    speed = float(getattr(records, "MAX_DECODE_TOK_S", 1e12))
    stored = 0
    for i, row in enumerate(addresses):
        liar = Identity.generate()
        model = model_entry(sha, name, decode_tok_s=speed, prefill_tok_s=speed)
        blob = sign_plain(plain_record(liar, row, [model]), liar)
        async with RawPeer(f"127.41.{i}.1") as peer:
            for node in nodes:
                for key in model_keys(sha, name):
                    stored += await peer.store(node, key, blob)
    return stored
