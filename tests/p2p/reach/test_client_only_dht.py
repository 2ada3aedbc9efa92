"""Client-only DHT membership of a node nobody can dial (verdict "relayed", docs/reachability.md):
real kademlia nodes on UDP loopback. Once it turns client-only, the nodes that listed it drop it
(at their next call to it, or at once when it sends to them), its record is still found, and it
stores nothing for others; turned full again, it is listed again."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from crypto.identity import Identity
from p2p.dht.node import Dht, open_dht
from p2p.dht.protocol import CLIENT_ONLY_ANSWER
from p2p.dht.records import model_key, sign_record
from tests.p2p.dht.test_records import SHA, make_record

RPC_TIMEOUT_S = 2.0
SHA_KEY = model_key(SHA)
RAW_KEY = hashlib.sha1(SHA_KEY.encode()).digest()  # a 160-bit key as RPCs carry it


@asynccontextmanager
async def network(n: int) -> AsyncIterator[tuple[list[Dht], list[Identity]]]:
    """*n* full nodes on 127.60.0.x, each joined through the first."""
    async with AsyncExitStack() as stack:
        nodes: list[Dht] = []
        ids: list[Identity] = []
        for i in range(n):
            identity = Identity.generate()
            dht = await stack.enter_async_context(
                open_dht(identity, f"127.60.0.{i + 1}", 0, rpc_timeout=RPC_TIMEOUT_S)
            )
            if i:
                assert await dht.bootstrap([("127.60.0.1", nodes[0].port)]) >= 1
            nodes.append(dht)
            ids.append(identity)
        yield nodes, ids


async def on_loop(dht: Dht, handler: Callable[..., Any], *args: Any) -> Any:
    """Call an RPC handler as a datagram would: on the DHT's own asyncio loop."""

    async def call() -> Any:
        return handler(*args)

    return await dht.run(call)


def lists(dht: Dht, node_id: bytes) -> bool:
    return any(bytes(c.id) == node_id for c in dht.contacts())


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a background ping's answer on the DHT's own loop."""
    for _ in range(200):
        if condition():
            return
        await trio.sleep(0.02)
    raise AssertionError(what)


async def test_others_drop_a_client_only_node_at_their_next_call_and_still_find_its_record() -> (
    None
):
    with trio.fail_after(30):
        async with network(4) as (nodes, ids):
            v = nodes[3]
            for peer in nodes[:3]:
                await peer.find_records(SHA_KEY)  # everyone meets everyone
            assert all(lists(peer, v.node_id) for peer in nodes[:3])

            v.set_client_only(True)
            started = trio.current_time()
            await nodes[0].find_records(SHA_KEY)  # its lookup asks v among all contacts
            assert not lists(nodes[0], v.node_id)
            # no timeout was waited: v answered at once that it is client-only
            assert trio.current_time() - started < RPC_TIMEOUT_S

            # v's own record is still published and found; v stores nothing for others
            await v.publish(sign_record(make_record(ids[3]), ids[3]))
            found = await nodes[1].find_records(SHA_KEY)
            assert [r.peer_id for r in found] == [ids[3].peer_id]
            asked_by = ("127.60.0.1", nodes[0].port)
            stored = await on_loop(
                v, v.protocol.rpc_store, asked_by, nodes[0].node_id, RAW_KEY, b""
            )
            assert stored is False
            contacts = await on_loop(
                v, v.protocol.rpc_find_node, asked_by, nodes[0].node_id, RAW_KEY
            )
            assert contacts == CLIENT_ONLY_ANSWER
            # v's publish reached every node with the light client's id: each pinged it, heard
            # the light client's id back and dropped it without a lookup of its own
            await until(
                lambda: not any(lists(peer, v.node_id) for peer in nodes[:3]),
                "a node still lists the client-only member",
            )

            # a direct/mapped verdict makes it a full member again
            v.set_client_only(False)
            assert await v.bootstrap([("127.60.0.1", nodes[0].port)]) >= 1
            await until(lambda: lists(nodes[0], v.node_id), "the full member is not listed again")


async def test_a_spoofed_light_client_datagram_does_not_evict_a_full_member() -> None:
    with trio.fail_after(30):
        async with network(3) as (nodes, _ids):
            a, b = nodes[0], nodes[2]
            await a.find_records(SHA_KEY)
            assert lists(a, b.node_id)
            # what a spoofer could send from b's address: a light client's find_node
            await on_loop(a, a.protocol.rpc_find_node, ("127.60.0.3", b.port), bytes(20), RAW_KEY)
            # a pings b to ask; b answers with its own id and stays listed
            await a.find_records(SHA_KEY)
            assert lists(a, b.node_id)
