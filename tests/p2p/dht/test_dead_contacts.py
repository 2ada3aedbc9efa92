"""Node lookups that do not wait for dead contacts (p2p/dht/lookup.py `CountingNodeCrawl`):
real kademlia nodes on UDP loopback, four of which stop after the bootstrap node has them in
its table, so a newcomer's join and first publish are handed contacts that never answer (as
nodes behind NATs are, until their first verdict). Neither may wait out an RPC timeout."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import trio

from crypto.identity import Identity
from p2p.dht.node import open_dht
from p2p.dht.records import model_key, sign_record
from tests.p2p.dht.test_records import SHA, make_record

# Long, so that waiting one out stands far above a loaded machine's slowest loopback join.
RPC_TIMEOUT_S = 20.0
DEAD = 4


async def test_join_and_publish_do_not_wait_for_contacts_that_never_answer() -> None:
    with trio.fail_after(4 * RPC_TIMEOUT_S + 30):
        async with AsyncExitStack() as stack:
            boot = await stack.enter_async_context(
                open_dht(Identity.generate(), "127.0.0.1", 0, rpc_timeout=RPC_TIMEOUT_S)
            )
            seed = [("127.0.0.1", boot.port)]
            live = await stack.enter_async_context(
                open_dht(Identity.generate(), "127.0.0.2", 0, rpc_timeout=RPC_TIMEOUT_S)
            )
            assert await live.bootstrap(seed) >= 1
            for n in range(DEAD):
                async with open_dht(
                    Identity.generate(), f"127.0.1.{n + 1}", 0, rpc_timeout=RPC_TIMEOUT_S
                ) as dead:
                    assert await dead.bootstrap(seed) >= 1
            # the bootstrap node still lists the stopped ones (nothing told it otherwise)
            assert boot.routing_table_size() >= 1 + DEAD
            newcomer = await stack.enter_async_context(
                open_dht(Identity.generate(), "127.0.0.3", 0, rpc_timeout=RPC_TIMEOUT_S)
            )
            started = time.monotonic()
            assert await newcomer.bootstrap(seed) >= 2  # the bootstrap and the live node
            joined = time.monotonic() - started
            me = Identity.generate()
            started = time.monotonic()
            stored = await newcomer.publish(sign_record(make_record(me), me))
            published = time.monotonic() - started
            assert stored >= 2  # at the live nodes: none was left out as a straggler
            found = await live.find_records(model_key(SHA))
            assert me.peer_id in {r.peer_id for r in found}
    # upstream's crawl waited a whole RPC timeout per round that asked a dead contact
    assert joined < RPC_TIMEOUT_S / 2, joined
    assert published < RPC_TIMEOUT_S / 2, published
