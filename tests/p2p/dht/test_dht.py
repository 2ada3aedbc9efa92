"""Real kademlia nodes on UDP loopback, hosted in trio: records, hostile datagrams, cancellation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import umsgpack

from crypto.identity import Identity
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import directory_key, model_key, model_name_key, node_key, sign_record
from tests.p2p.dht.test_records import SHA, make_record


@asynccontextmanager
async def network(n: int, *, rpc_timeout: float = 3.0) -> AsyncIterator[list[Dht]]:
    async with AsyncExitStack() as stack:
        nodes = []
        for i in range(n):
            dht = await stack.enter_async_context(
                open_dht(Identity.generate(), "127.0.0.1", 0, rpc_timeout=rpc_timeout)
            )
            if i:
                assert await dht.bootstrap([("127.0.0.1", nodes[0].port)]) >= 1
            nodes.append(dht)
        yield nodes


async def test_two_providers_under_one_key_are_both_found() -> None:
    async with network(4) as nodes:
        a, b = Identity.generate(), Identity.generate()
        await nodes[1].publish(sign_record(make_record(a), a))
        await nodes[2].publish(sign_record(make_record(b), b))
        for key in (model_key(SHA), model_name_key("tiny-llama"), directory_key()):
            found = await nodes[3].find_records(key)
            assert {r.peer_id for r in found} == {a.peer_id, b.peer_id}, key
        only_a = await nodes[3].find_records(node_key(a.peer_id))
        assert [r.peer_id for r in only_a] == [a.peer_id]


async def test_republished_record_replaces_the_old_one() -> None:
    async with network(3) as nodes:
        a = Identity.generate()
        await nodes[1].publish(sign_record(make_record(a, seq=1), a))
        await nodes[1].publish(sign_record(make_record(a, seq=2), a))
        found = await nodes[2].find_records(model_key(SHA))
        assert [r.seq for r in found] == [2]


async def test_forged_store_is_refused_and_the_sender_is_told() -> None:
    async with network(2) as nodes:
        a, mallory = Identity.generate(), Identity.generate()
        genuine = sign_record(make_record(a), a)
        tampered = bytearray(genuine.blob)
        tampered[-3] ^= 0xFF
        proto = nodes[1].protocol
        from kademlia.node import Node  # the upstream contact type

        target = Node(nodes[0].node_id, "127.0.0.1", nodes[0].port)
        key = _digest(model_key(SHA))
        ok, accepted = await _aio(nodes[1], proto.call_store, target, key, bytes(tampered))
        assert ok and accepted is False
        # a genuine record stored under a key it is not bound to
        unbound = _digest(node_key(mallory.peer_id))
        ok, accepted = await _aio(nodes[1], proto.call_store, target, unbound, genuine.blob)
        assert ok and accepted is False
        ok, accepted = await _aio(nodes[1], proto.call_store, target, key, genuine.blob)
        assert ok and accepted is True


async def test_malformed_datagrams_leave_the_node_running() -> None:
    async with network(3) as nodes:
        victim = nodes[0]
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        mid = b"m" * 20
        junk = [
            b"",
            b"\x00",
            b"\x00" + mid + b"\xc1\xc1\xc1",  # invalid msgpack
            b"\x00" + mid + umsgpack.packb(["ping"]),  # wrong arity
            b"\x00" + mid + umsgpack.packb(["ping", [5]]),  # wrong type of node id
            b"\x00" + mid + umsgpack.packb(["store", [b"x" * 19, b"k" * 20, [1, 2]]]),
            b"\x00" + mid + umsgpack.packb(["find_node", [b"x" * 20, "not bytes"]]),
            b"\x00" + mid + umsgpack.packb(["find_value", [b"x" * 20, {"a": []}]]),
            b"\x00" + mid + umsgpack.packb(["no_such_rpc", []]),
            b"\x01" + mid + umsgpack.packb([1, 2]),  # answer nobody asked for
            b"\x07" + mid + b"zz",
            b"\x00" + mid + b"\x00" * 9000,  # huge
        ]
        for datagram in junk:
            await sock.sendto(datagram, ("127.0.0.1", victim.port))
        sock.close()
        # still answers real lookups, and still stores records
        a = Identity.generate()
        await nodes[1].publish(sign_record(make_record(a), a))
        assert [r.peer_id for r in await nodes[2].find_records(model_key(SHA))] == [a.peer_id]
        assert victim.protocol.dropped_datagrams >= 5


async def test_cancelled_rpc_does_not_crash_when_its_timer_or_answer_fires() -> None:
    async with network(2) as nodes:
        silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await silent.bind(("127.0.0.1", 0))
        silent_addr = silent.getsockname()
        caller = nodes[1]
        with trio.move_on_after(0.2) as scope:
            await caller.bootstrap([silent_addr])
        assert scope.cancelled_caught
        request, _ = await silent.recvfrom(65536)
        msg_id = request[1:21]
        # the silent peer answers late, after the caller gave up
        await silent.sendto(b"\x01" + msg_id + umsgpack.packb(b"z" * 20), caller_addr(caller))
        # and the upstream timeout path fires for anything still outstanding
        for pending in list(caller.protocol._outstanding):
            caller.protocol._timeout(pending)
        silent.close()
        # the node is alive and useful
        a = Identity.generate()
        await nodes[0].publish(sign_record(make_record(a), a))
        assert [r.peer_id for r in await caller.find_records(model_key(SHA))] == [a.peer_id]


def caller_addr(dht: Dht) -> tuple[str, int]:
    return ("127.0.0.1", dht.port)


def _digest(key: str) -> bytes:
    from p2p.dht.records import dht_digest

    return dht_digest(key)


async def _aio(dht: Dht, fn, *args):  # type: ignore[no-untyped-def]
    from p2p.dht.aio_bridge import run_aio

    return await run_aio(dht._loop, fn, *args)


def test_now_is_wall_clock() -> None:
    # records carry absolute times; the store compares them with time.time()
    assert abs(time.time() - make_record(Identity.generate()).issued_at) < 5


async def test_light_clients_stay_out_of_routing_tables() -> None:
    async with network(2) as nodes:
        a = Identity.generate()
        await nodes[1].publish(sign_record(make_record(a), a))
        before = [n.routing_table_size() for n in nodes]
        async with open_dht(Identity.generate().public_key, "127.0.0.1", 0, client_mode=True) as c:
            assert await c.bootstrap([("127.0.0.1", nodes[0].port)]) >= 1
            assert [r.peer_id for r in await c.find_records(model_key(SHA))] == [a.peer_id]
        assert [n.routing_table_size() for n in nodes] == before
