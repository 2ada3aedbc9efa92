"""Attack 5 of issue 14: a node is no reflection amplifier.

A raw UDP socket on a loopback address of its own (127.20.x.y, a stand-in for a spoofed victim)
sends each RPC, framed as rpcudp does, to a real node that holds many records and contacts. Every
answer to the source that never proved its address is at most 3× the request; echoing the
cookie of a small answer earns the full answer; an honest client's lookup still finds everything.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import umsgpack
from kademlia.node import Node

from crypto.identity import Identity
from p2p.dht.address_cookies import (
    AMPLIFICATION_FACTOR,
    COOKIE_LEN,
    COOKIE_WINDOW_S,
    AddressCookies,
    CookieJar,
)
from p2p.dht.answer_budget import answer_budget, small_answer, unwrap_small_answer
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import dht_digest, directory_key, model_key, sign_record
from tests.p2p.dht.test_records import SHA, make_record

LOCAL = "127.0.0.1"
SIGNERS = 20  # ~20 records of ~0.5 KiB: a full find_value answer is ~10 KiB, far over 3×
CONTACTS = 25  # more than k = 20, so a find_node answer is a full one
FAST = 0.5


def _request(name: str, *args: object) -> tuple[bytes, bytes]:
    msg_id = os.urandom(20)
    return msg_id, b"\x00" + msg_id + umsgpack.packb([name, list(args)])


class Stranger:
    """A bare UDP socket on its own loopback address; measures what comes back."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)

    async def __aenter__(self) -> Stranger:
        await self.sock.bind((self.host, 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def call(self, port: int, name: str, *args: object) -> tuple[int, int, object]:
        """(request bytes, answer bytes, answer)."""
        msg_id, datagram = _request(name, *args)
        await self.sock.sendto(datagram, (LOCAL, port))
        with trio.fail_after(3):
            while True:  # skip the node's own requests to us (challenges)
                data, _ = await self.sock.recvfrom(65536)
                if data[:21] == b"\x01" + msg_id:
                    return len(datagram), len(data), umsgpack.unpackb(data[21:])


@asynccontextmanager
async def crowded_node(contacts: int = CONTACTS) -> AsyncIterator[tuple[Dht, list[str]]]:
    """A node holding SIGNERS records under one key, *contacts* contacts and its own record."""
    async with open_dht(Identity.generate(), LOCAL, 0, rpc_timeout=FAST) as node:
        signers = []
        for _ in range(SIGNERS):
            ident = Identity.generate()
            signed = sign_record(make_record(ident, ttl=300), ident)
            for key in (dht_digest(model_key(SHA)), dht_digest(directory_key())):
                assert node.store.offer(key, signed.blob, now=time.time()).accepted
            signers.append(ident.peer_id)
        own = Identity.generate()
        node.protocol.own_record = sign_record(make_record(own, ttl=300), own)

        async def add_contacts() -> None:  # setup only: the table is not under test here
            for i in range(contacts):
                node.protocol.router.add_contact(Node(os.urandom(20), LOCAL, 20000 + i))

        await node.run(add_contacts)
        yield node, signers


def _requests(node: Dht) -> dict[str, tuple[Any, ...]]:
    nid, key = os.urandom(20), dht_digest(model_key(SHA))
    return {
        "find_value": ("find_value", nid, key),
        "find_value directory": ("find_value", nid, dht_digest(directory_key())),  # `peers`
        "find_node": ("find_node", nid, os.urandom(20)),
        "record": ("record", nid),
        "ping": ("ping", nid),
        "prove": ("prove", nid, os.urandom(32)),
        "store": ("store", nid, key, b"not a record"),
    }


async def test_no_answer_to_an_unproven_source_exceeds_three_times_its_request() -> None:
    async with crowded_node() as (node, _signers):
        ratios = {}
        for i, (what, call) in enumerate(_requests(node).items()):
            async with Stranger(f"127.20.0.{i + 1}") as stranger:
                sent, got, _answer = await stranger.call(node.port, *call)
            ratios[what] = got / sent
        # the issue's target: at most 3× (QUIC's anti-amplification factor)
        assert all(r <= AMPLIFICATION_FACTOR for r in ratios.values()), ratios


async def test_many_spoofed_sources_and_forged_cookies_get_small_answers() -> None:
    async with crowded_node() as (node, _signers):
        key = dht_digest(model_key(SHA))
        async with Stranger("127.20.1.1") as owner:
            _s, _g, answer = await owner.call(node.port, "find_value", os.urandom(20), key)
            cookie, _ = unwrap_small_answer(answer)
            assert cookie is not None
        forged = [os.urandom(COOKIE_LEN), cookie, b"", b"x" * 300]  # cookie: another address's
        for b in range(2, 12):
            async with Stranger(f"127.20.{b}.7") as victim:
                for bad in forged:
                    call = ("find_value", os.urandom(20), key, bad)
                    sent, got, answer = await victim.call(node.port, *call)
                    assert got <= AMPLIFICATION_FACTOR * sent, (b, bad, got, sent)
                    assert unwrap_small_answer(answer)[0] is not None


async def test_echoing_the_cookie_earns_the_full_answer() -> None:
    async with crowded_node() as (node, _signers):
        key = dht_digest(model_key(SHA))
        nid = os.urandom(20)
        async with Stranger("127.20.2.1") as client:
            _s, _g, small = await client.call(node.port, "find_value", nid, key)
            cookie, partial = unwrap_small_answer(small)
            assert cookie is not None and isinstance(partial, dict)
            assert len(partial["value"]) < SIGNERS  # a record is ~0.5 KiB; 3 × 78 B holds none
            _s, got, full = await client.call(node.port, "find_value", nid, key, cookie)
            assert isinstance(full, dict) and len(full["value"]) == SIGNERS
            assert got > 4000  # the whole answer, now that the address is proven
            _s, _g, contacts = await client.call(node.port, "find_node", nid, nid, cookie)
            assert isinstance(contacts, list) and len(contacts) == 20
            _s, _g, record = await client.call(node.port, "record", nid, cookie)
            assert record == node.protocol.own_record.blob  # type: ignore[union-attr]
        assert node.protocol.cookie_stats.small_answers >= 1


async def test_an_honest_client_lookup_still_finds_every_record() -> None:
    async with (
        crowded_node(contacts=0) as (node, signers),  # no dead contacts to wait for
        open_dht(Identity.generate(), "127.20.3.1", 0, client_mode=True, rpc_timeout=FAST) as c,
    ):
        assert await c.bootstrap([(LOCAL, node.port)]) >= 1
        with trio.fail_after(10):
            found = await c.find_records(model_key(SHA))
        assert sorted(r.peer_id for r in found) == sorted(signers)
        # one extra round trip per first contact, then the cached cookie
        retries = c.protocol.cookie_stats.cookie_retries
        assert retries >= 1
        with trio.fail_after(10):
            again = await c.find_records(model_key(SHA))
        assert len(again) == SIGNERS
        assert c.protocol.cookie_stats.cookie_retries == retries


# --- the rules, with plain calls ------------------------------------------------------------


def test_cookies_are_bound_to_the_address_and_expire_after_two_windows() -> None:
    cookies = AddressCookies()
    a, b = ("127.0.0.1", 4000), ("127.0.0.1", 4001)
    c = cookies.issue(a, now=10.0)
    assert len(c) == COOKIE_LEN
    assert cookies.check(c, a, now=10.0)
    assert not cookies.check(c, b, now=10.0)
    assert not cookies.check(c, ("127.0.0.2", 4000), now=10.0)
    assert cookies.check(c, a, now=COOKIE_WINDOW_S + 5)  # the previous window still counts
    assert not cookies.check(c, a, now=2 * COOKIE_WINDOW_S + 5)  # its secret is gone
    assert not cookies.check(None, a, now=10.0)
    assert not cookies.check("x" * COOKIE_LEN, a, now=10.0)
    assert not AddressCookies().check(c, a, now=10.0)  # another node's secret


def test_the_cookie_jar_is_bounded_and_forgets_old_cookies() -> None:
    jar = CookieJar(ttl=100.0, capacity=3)
    for port in range(5):
        jar.put(("127.0.0.1", port), b"c" * COOKIE_LEN, now=0.0)
    assert len(jar) == 3
    assert jar.get(("127.0.0.1", 0), now=1.0) is None  # evicted
    assert jar.get(("127.0.0.1", 4), now=1.0) == b"c" * COOKIE_LEN
    assert jar.get(("127.0.0.1", 4), now=101.0) is None  # older than its ttl


def test_a_small_answer_fits_its_budget_and_unwraps_to_the_ordinary_shape() -> None:
    cookie = b"k" * COOKIE_LEN
    blobs = [os.urandom(n) for n in (90, 700, 40, 30)]
    budget = answer_budget(78)
    small = small_answer(cookie, budget, "value", blobs)
    assert len(umsgpack.packb(small)) <= budget
    fitting = [blobs[0], blobs[2], blobs[3]]
    assert small["value"] == fitting  # the big one skipped, later ones still fit
    assert unwrap_small_answer(small) == (cookie, {"value": fitting})
    contacts = [(os.urandom(20), LOCAL, 9000 + i) for i in range(20)]
    nodes = small_answer(cookie, budget, "nodes", contacts)
    assert unwrap_small_answer(nodes)[1] == nodes["nodes"]
    assert unwrap_small_answer(small_answer(cookie, budget)) == (cookie, None)
    assert unwrap_small_answer({"value": blobs}) == (None, {"value": blobs})
    assert unwrap_small_answer({"cookie": b"short", "value": []})[0] is None
    assert unwrap_small_answer({"cookie": cookie, "value": [], "x": 1}) == (cookie, None)


async def test_a_proven_contact_gets_full_answers_without_a_cookie() -> None:
    async with (
        crowded_node(contacts=0) as (node, signers),
        open_dht(Identity.generate(), "127.20.4.1", 0, rpc_timeout=FAST) as peer,
    ):
        assert await peer.bootstrap([(LOCAL, node.port)]) >= 1
        await node.run(node.protocol.settle)  # the node has challenged the peer by now
        assert node.protocol.verified.address_proven(("127.20.4.1", peer.port), now=time.time())
        retries = peer.protocol.cookie_stats.cookie_retries
        small = node.protocol.cookie_stats.small_answers
        target = Node(node.node_id, LOCAL, node.port)
        key = Node(dht_digest(model_key(SHA)))
        with trio.fail_after(10):
            ok, answer = await peer.run(peer.protocol.call_find_value, target, key)
        assert ok and len(answer["value"]) == len(signers)
        assert peer.protocol.cookie_stats.cookie_retries == retries
        assert node.protocol.cookie_stats.small_answers == small
