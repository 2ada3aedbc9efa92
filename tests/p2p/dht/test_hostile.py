"""Strangers' datagrams on the wire: every bad record is refused with `false`, every kind of
malformed datagram is dropped, floods are rate-limited, and memory stays bounded."""

from __future__ import annotations

import os
import time

import attrs
import trio
import umsgpack

from crypto.identity import Identity
from p2p.dht.contact_proofs import MAX_CHALLENGES_IN_FLIGHT
from p2p.dht.datagrams import MAX_TASKS_IN_FLIGHT
from p2p.dht.identity_proof import MAX_FAILED
from p2p.dht.node import open_dht
from p2p.dht.rate_limit import SourceRateLimiter
from p2p.dht.records import dht_digest, model_key, node_key, sign_record
from tests.p2p.dht.test_records import SHA, make_record

LOCAL = "127.0.0.1"
FLOOD = 150
FLOOD_BURST = 20


class RawPeer:
    """A bare UDP socket speaking rpcudp framing by hand."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)

    async def __aenter__(self) -> RawPeer:
        await self.sock.bind((LOCAL, 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def send(self, port: int, datagram: bytes) -> None:
        await self.sock.sendto(datagram, (LOCAL, port))

    async def call(self, port: int, name: str, *args: object) -> object:
        msg_id = os.urandom(20)
        await self.send(port, b"\x00" + msg_id + umsgpack.packb([name, list(args)]))
        with trio.fail_after(3):
            while True:  # skip the node's own requests to us (challenges)
                data, _ = await self.sock.recvfrom(65536)
                if data[:21] == b"\x01" + msg_id:
                    return umsgpack.unpackb(data[21:])


async def test_bad_records_are_refused_on_the_wire() -> None:
    async with open_dht(Identity.generate(), LOCAL, 0) as node, RawPeer() as peer:
        sender = os.urandom(20)
        a, b = Identity.generate(), Identity.generate()
        key = dht_digest(model_key(SHA))
        now = time.time()
        newer = sign_record(make_record(a, seq=5), a).blob
        older = sign_record(make_record(a, seq=4), a).blob
        tampered = bytearray(newer)
        tampered[len(tampered) // 2] ^= 0x40
        expired = sign_record(make_record(a, now=now - 700, ttl=600), a).blob
        future = sign_record(make_record(a, now=now + 3600), a).blob
        other_net = attrs.evolve(make_record(a, seq=6), network_id=b"n" * 16)
        private = sign_record(other_net, a).blob
        # a valid record wrapped with 1 KiB of padding: over 7 KiB in all
        oversized = newer + b"\x00" * (7 * 1024 - len(newer) + 1)

        assert await peer.call(node.port, "store", sender, key, newer) is True
        refused = {
            "forged": (key, bytes(tampered)),
            "replayed older": (key, older),
            "expired": (key, expired),
            "issued in the future": (key, future),
            "oversized": (key, oversized),
            "wrong key": (dht_digest(node_key(b.peer_id)), newer),
            "wrong network": (key, private),
            "public record under a private key": (
                dht_digest(model_key(SHA, b"n" * 16)),
                newer,
            ),
            "not bytes": (key, [1, 2, 3]),
            "short key": (b"k" * 19, newer),
            "string key": ("1", newer),
        }
        for what, (k, blob) in refused.items():
            assert await peer.call(node.port, "store", sender, k, blob) is False, what
        # the private record is fine under its own network's key
        private_key = dht_digest(model_key(SHA, b"n" * 16))
        assert await peer.call(node.port, "store", sender, private_key, private) is True
        stored = node.store.get(key, now=time.time())
        assert [s.blob for s in stored] == [newer]
        assert node.protocol.stats.refused_stores == len(refused) - 2  # 2 never reach the store


async def test_malformed_datagrams_of_every_kind_are_dropped() -> None:
    node_cm = open_dht(Identity.generate(), LOCAL, 0, rpc_timeout=0.5)
    async with node_cm as node, RawPeer() as peer:
        mid = b"m" * 20
        nid = os.urandom(20)
        req = b"\x00" + mid
        junk = [
            b"",
            b"\x00",
            req,
            req + b"\xc1",  # never-used msgpack byte
            req + b"\x92",  # array header, no elements
            req + b"\xdd\xff\xff\xff\xff",  # array of 2**32 - 1 elements, none there
            req + b"\xdb\xff\xff\xff\xff",  # string of 4 GiB, none there
            req + umsgpack.packb("ping"),
            req + umsgpack.packb(["ping"]),
            req + umsgpack.packb(["ping", []]),
            req + umsgpack.packb(["ping", [nid, nid]]),
            req + umsgpack.packb(["ping", [5]]),
            req + umsgpack.packb(["ping", nid]),
            req + umsgpack.packb([["ping"], [nid]]),
            req + umsgpack.packb([{"a": 1}, [nid]]),
            req + umsgpack.packb(["stun", []]),
            req + umsgpack.packb(["__init__", []]),
            req + umsgpack.packb(["store", [nid, b"k" * 20]]),
            req + umsgpack.packb(["store", [b"x" * 19, b"k" * 20, b""]]),
            req + umsgpack.packb(["find_node", [nid, "not bytes"]]),
            req + umsgpack.packb(["find_node", [nid, None]]),
            req + umsgpack.packb(["find_value", [nid, {"a": []}]]),
            req + umsgpack.packb(["prove", [nid, [1, 2]]]),
            req + umsgpack.packb(["no_such_rpc", []]),
            b"\x01" + mid + umsgpack.packb([1, 2]),  # an answer nobody asked for
            b"\x07" + mid + b"zz",
            req + b"\x00" * 9000,
            req + umsgpack.packb(["store", [nid, b"k" * 20, b"v" * 15000]]),  # huge
            b"\x01" + mid + b"\x00" * 70000,  # over any datagram we read
        ]
        for datagram in junk:
            if len(datagram) < 65000:
                await peer.send(node.port, datagram)
        # the node is alive and answers a genuine request
        assert await peer.call(node.port, "ping", nid) == node.node_id
        await node.run(node.protocol.settle)
        assert node.protocol.dropped_datagrams >= 20
        assert node.protocol.tasks_in_flight == 0
        assert node.store.total() == 0
        assert node.routing_table_size() == 0  # the raw peer cannot prove an id


async def test_floods_are_rate_limited_and_memory_stays_bounded() -> None:
    # a small burst, so the whole flood fits the kernel's socket buffer and is seen by the node
    limiter = SourceRateLimiter(rate=1, burst=FLOOD_BURST)
    async with (
        open_dht(Identity.generate(), LOCAL, 0, rate_limiter=limiter, rpc_timeout=0.5) as node,
        RawPeer() as flooder,
    ):
        # one source, far over its burst: pings with fresh ids, each would cost a challenge
        for _ in range(FLOOD):
            packet = umsgpack.packb(["ping", [os.urandom(20)]])
            await flooder.send(node.port, b"\x00" + os.urandom(20) + packet)
        # many sources, each a few datagrams
        socks = []
        for _ in range(50):
            s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await s.bind((LOCAL, 0))
            socks.append(s)
            for _ in range(5):
                await s.sendto(b"\x00" + os.urandom(20) + b"\xc1", (LOCAL, node.port))
        with trio.fail_after(5):
            while node.protocol.stats.rate_limited < FLOOD - FLOOD_BURST - 5:
                await trio.sleep(0.01)
        proto = node.protocol
        assert proto.tasks_in_flight <= MAX_TASKS_IN_FLIGHT
        assert len(proto._verifying) <= MAX_CHALLENGES_IN_FLIGHT
        assert len(proto._outstanding) <= MAX_CHALLENGES_IN_FLIGHT + 1
        assert len(limiter) <= 52
        for s in socks:
            s.close()
        # unanswered challenges end by timeout; failures are remembered, boundedly
        await node.run(proto.settle)
        assert len(proto._outstanding) == 0
        assert len(proto.verified._failed) <= MAX_FAILED
        assert node.routing_table_size() == 0
        # and the node still serves a polite peer
        async with RawPeer() as polite:
            assert await polite.call(node.port, "ping", os.urandom(20)) == node.node_id
