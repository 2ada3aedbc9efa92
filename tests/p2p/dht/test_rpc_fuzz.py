"""Hypothesis over the DHT's RPC handlers and its datagram intake (issue 14, fuzzing in CI).

The protocol under test is the real `GpunetProtocol` on a plain asyncio loop; only the transport
is a recorder, so every answer the node would send can be checked. Properties:
- a handler either answers something msgpack can send or refuses with ValueError / TypeError
  (bad value, wrong arity: what the intake drops); with a budget, the answer fits it;
- a datagram of any shape never raises out of the intake, leaves no task behind, and gets no
  answer over 3× its size (the sources here never proved their address);
- afterwards the node still answers a valid ping.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kademlia.node import Node

from crypto.identity import Identity, dht_node_id
from p2p.dht.address_cookies import AMPLIFICATION_FACTOR
from p2p.dht.answer_budget import packed_len
from p2p.dht.datagrams import RPC_NAMES, SIZED_RPCS
from p2p.dht.protocol import GpunetProtocol
from p2p.dht.rate_limit import SourceRateLimiter
from p2p.dht.record_store import RecordStore
from p2p.dht.records import dht_digest, model_key, sign_record
from tests.p2p.dht.test_records import SHA, make_record

# Bounded so the file stays a few seconds on 2 shared cores; the deadline is per example and
# generous (a handler takes microseconds), so a slow machine does not flake it.
FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_DRAIN_STEPS = 100

IDENT = Identity.generate()


def valid_blob() -> bytes:
    """A record valid now: signed when asked for, since the module is imported (collected)
    minutes before its tests run in a full suite, longer than a record lives."""
    return sign_record(make_record(IDENT, ttl=300), IDENT).blob


KEY = dht_digest(model_key(SHA))

ids = st.binary(min_size=20, max_size=20)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=300),
    ids,
    st.binary(min_size=32, max_size=32),  # a nonce's size
    st.just(KEY),
    st.builds(valid_blob),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
arg_lists = st.lists(values, max_size=5)
senders = st.tuples(
    st.sampled_from(["127.0.0.1", "127.31.0.1", "127.31.7.9", "127.255.255.254"]),
    st.integers(min_value=1, max_value=65535),
)
names = st.sampled_from(sorted(RPC_NAMES)) | st.text(max_size=12)


def _request(name: object, args: object) -> bytes:
    return bytes(msgpack.packb([name, args], use_bin_type=True))


datagrams = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda kind, mid, payload: kind + mid + payload,
        st.sampled_from([b"\x00", b"\x01", b"\x7f"]),
        st.binary(min_size=20, max_size=20) | st.binary(max_size=19),
        st.one_of(
            st.builds(_request, names, arg_lists),
            values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
            st.binary(max_size=600),
        ),
    ),
)


class RecordingTransport:
    """Keeps what the protocol sends instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 4000) if name == "sockname" else None


@contextmanager
def fuzzed_protocol() -> Iterator[tuple[asyncio.AbstractEventLoop, GpunetProtocol]]:
    """A full node's protocol holding one record and a few contacts, on its own asyncio loop."""
    loop = asyncio.new_event_loop()
    ident = Identity.generate()
    proto = GpunetProtocol(
        Node(dht_node_id(ident.public_key), "127.0.0.1", 4000),
        RecordStore(),
        20,
        wait_timeout=0.05,
        identity=ident,
        rate_limiter=SourceRateLimiter(rate=1e9, burst=1e9),  # reach the handlers, every time
    )
    proto.connection_made(RecordingTransport())
    assert proto.record_store.offer(KEY, valid_blob(), now=time.time()).accepted
    proto.own_record = sign_record(make_record(ident, ttl=300), ident)

    async def add_contacts() -> None:
        for i in range(5):
            proto.router.add_contact(Node(os.urandom(20), "127.0.0.1", 30000 + i))

    loop.run_until_complete(add_contacts())
    try:
        yield loop, proto
        loop.run_until_complete(asyncio.wait_for(proto.settle(), 10))
        assert_still_answers_ping(loop, proto)
    finally:
        proto.stop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def deliver(
    loop: asyncio.AbstractEventLoop, proto: GpunetProtocol, data: bytes, addr: tuple[str, int]
) -> None:
    """Hand *data* to the intake as asyncio would, then let its task run to the end."""

    async def receive() -> None:
        proto.datagram_received(data, addr)  # raises nothing, whatever *data* is
        for _ in range(MAX_DRAIN_STEPS):
            if proto.tasks_in_flight == 0:
                return
            await asyncio.sleep(0)  # a yield to the loop, not a timed wait

    loop.run_until_complete(receive())
    assert proto.tasks_in_flight == 0


def assert_still_answers_ping(loop: asyncio.AbstractEventLoop, proto: GpunetProtocol) -> None:
    transport: RecordingTransport = proto.transport
    transport.sent.clear()
    mid = os.urandom(20)
    deliver(loop, proto, b"\x00" + mid + _request("ping", [os.urandom(20)]), ("127.0.0.1", 9))
    replies = [d for d, _ in transport.sent if d[:21] == b"\x01" + mid]
    assert [msgpack.unpackb(r[21:]) for r in replies] == [proto.source_node.id]


def test_every_rpc_handler_answers_or_refuses_cleanly() -> None:
    with fuzzed_protocol() as (loop, proto):

        @FUZZ
        @given(
            name=st.sampled_from(sorted(RPC_NAMES)),
            sender=senders,
            args=arg_lists,
            limit=st.none() | st.integers(min_value=45, max_value=70000),
        )
        def check(name: str, sender: tuple[str, int], args: list[Any], limit: int | None) -> None:
            handler = getattr(proto, f"rpc_{name}")
            kwargs = {"answer_limit": limit} if name in SIZED_RPCS else {}

            async def call() -> Any:
                return handler(sender, *args, **kwargs)

            try:
                answer = loop.run_until_complete(call())
            except (ValueError, TypeError):
                return  # refused: the intake drops the request
            size = packed_len(answer)  # an answer msgpack can send
            if limit is not None:
                assert size <= limit, (name, size, limit)

        check()


def test_no_datagram_breaks_the_intake_or_gets_an_amplified_answer() -> None:
    with fuzzed_protocol() as (loop, proto):
        transport: RecordingTransport = proto.transport

        @FUZZ
        @given(data=datagrams, sender=senders)
        def check(data: bytes, sender: tuple[str, int]) -> None:
            transport.sent.clear()
            deliver(loop, proto, data, sender)
            for out, addr in transport.sent:
                if out[:1] == b"\x01" and addr == sender:
                    assert len(out) <= AMPLIFICATION_FACTOR * len(data), (data, out)

        check()


def test_valid_requests_with_hostile_arguments_and_cookies() -> None:
    """Requests shaped right, with arguments drawn at random, some with a genuine cookie."""
    with fuzzed_protocol() as (loop, proto):
        transport: RecordingTransport = proto.transport

        @FUZZ
        @given(
            name=st.sampled_from(sorted(RPC_NAMES)),
            args=arg_lists,
            sender=senders,
            with_cookie=st.booleans(),
        )
        def check(name: str, args: list[Any], sender: tuple[str, int], with_cookie: bool) -> None:
            if with_cookie:
                args = [*args, proto.cookies.issue(sender, now=loop.time())]
            data = b"\x00" + os.urandom(20) + _request(name, args)
            transport.sent.clear()
            deliver(loop, proto, data, sender)
            for out, addr in transport.sent:
                if out[:1] == b"\x01" and addr == sender and not with_cookie:
                    assert len(out) <= AMPLIFICATION_FACTOR * len(data), (name, args)

        check()
