"""Attack 1 of issue #14, crowd-out, on real kademlia nodes over UDP loopback.

Three honest providers publish 300 s records for a model under the directory key and the
model's keys. Then 50 fresh Sybil identities from 10 source /24s (127.20.0.x … 127.29.0.x stand
in for ten networks) store validly signed, maximum-size, maximum-lifetime records under the same
keys at every node, speaking the DHT protocol by hand. A fresh client's lookups — the directory
key as `gpunet peers` asks it, the model's keys as `gpunet ask` does — must still list every
honest provider.

Before issue #14 (commit daa14b5) each node filled its answer latest-expiring first (a stranger
picks the 1-hour maximum, honest nodes 300 s) and a lookup stopped after three holders: 0 of 3
honest providers listed. The store now shares answers across source networks and prefers signers
it has seen longer, lifetimes are capped at 2× the default TTL, and readers merge the answers of
the k closest nodes.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import umsgpack

from crypto.identity import Identity
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import (
    DEFAULT_TTL_S,
    dht_digest,
    directory_key,
    model_key,
    model_name_key,
    open_record,
    sign_record,
)
from tests.p2p.dht.test_record_store import largest_record
from tests.p2p.dht.test_records import SHA, make_record

HONEST_HOSTS = ["127.0.1.1", "127.0.2.1", "127.0.3.1"]  # three honest networks
STORAGE_HOSTS = ["127.0.4.1", "127.0.5.1"]  # nodes that only store
CLIENT_HOST = "127.0.9.1"
SYBIL_NETWORKS = 10
SYBILS_PER_NETWORK = 5
# the keys `peers` (directory) and `ask` (model by sha256 or by name) look up
CROWDED_KEYS = (directory_key(), model_key(SHA), model_name_key("tiny-llama"))


def sybil_hosts() -> list[str]:
    return [
        f"127.{20 + net}.0.{1 + i}"
        for net in range(SYBIL_NETWORKS)
        for i in range(SYBILS_PER_NETWORK)
    ]


class SybilSocket:
    """One attacker identity's UDP socket, bound to its own 127.x.y.z, speaking rpcudp by hand."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)

    async def store(self, node: Dht, key: bytes, blob: bytes) -> object:
        msg_id = os.urandom(20)
        request = umsgpack.packb(["store", [os.urandom(20), key, blob]])
        address = node.server.transport.get_extra_info("sockname")[:2]
        await self.sock.sendto(b"\x00" + msg_id + request, address)
        with trio.fail_after(5):
            while True:  # skip the node's own requests to us (challenges we never answer)
                data, _ = await self.sock.recvfrom(65536)
                if data[:21] == b"\x01" + msg_id:
                    return umsgpack.unpackb(data[21:])


@asynccontextmanager
async def honest_network() -> AsyncIterator[tuple[list[Dht], list[Identity]]]:
    """Three provider nodes and two that only store, each in its own network, joined."""
    async with AsyncExitStack() as stack:
        nodes: list[Dht] = []
        providers = [Identity.generate() for _ in HONEST_HOSTS]
        idents = [*providers, *(Identity.generate() for _ in STORAGE_HOSTS)]
        for host, ident in zip(HONEST_HOSTS + STORAGE_HOSTS, idents, strict=True):
            dht = await stack.enter_async_context(open_dht(ident, host, 0, rpc_timeout=1.0))
            if nodes:
                assert await dht.bootstrap([(HONEST_HOSTS[0], nodes[0].port)]) >= 1
            nodes.append(dht)
        yield nodes, providers


async def publish_honest(nodes: list[Dht], providers: list[Identity], *, seq: int) -> None:
    for dht, ident in zip(nodes, providers, strict=False):
        record = make_record(ident, seq=seq, now=time.time(), ttl=DEFAULT_TTL_S)
        assert await dht.publish(sign_record(record, ident)) > 0


async def crowd_out(nodes: list[Dht], *, now: float) -> int:
    """Every Sybil stores its record under every crowded key at every node; returns how many
    stores were accepted."""
    accepted = 0
    sockets = [SybilSocket(h) for h in sybil_hosts()]
    try:
        for s in sockets:
            await s.sock.bind((s.host, 0))
            ident = Identity.generate()
            blob = sign_record(largest_record(ident, now=now), ident).blob
            for dht in nodes:
                for key in CROWDED_KEYS:
                    accepted += await s.store(dht, dht_digest(key), blob) is True
    finally:
        for s in sockets:
            s.sock.close()
    return accepted


@pytest.mark.parametrize("crowd_first", [False, True], ids=["honest-first", "crowd-first"])
async def test_fifty_sybils_from_ten_networks_do_not_bury_the_honest_providers(
    crowd_first: bool,
) -> None:
    """honest-first: the issue's attack (the crowd arrives, then the honest nodes republish).
    crowd-first: the Sybils were here before the honest providers (seniority is theirs), so only
    the fair share per source network keeps the honest providers in each node's answer."""
    with trio.fail_after(60):  # stays fast: ~2 s here
        now = time.time()
        async with honest_network() as (nodes, providers):
            honest = {p.peer_id for p in providers}
            assert len(largest_record(Identity.generate(), now=now).gpus) >= 8
            if not crowd_first:
                await publish_honest(nodes, providers, seq=1)
            accepted = await crowd_out(nodes, now=now)
            # the crowd's records are valid: all stored (53 signers, under the per-key bound)
            assert accepted == len(sybil_hosts()) * len(nodes) * len(CROWDED_KEYS)
            await publish_honest(nodes, providers, seq=2)
            async with open_dht(
                Identity.generate().public_key, CLIENT_HOST, 0, client_mode=True, rpc_timeout=1.0
            ) as client:
                assert await client.bootstrap([(HONEST_HOSTS[0], nodes[0].port)]) >= 1
                found = {key: await client.find_records(key) for key in CROWDED_KEYS}
            listed = {key: len(honest & {r.peer_id for r in rs}) for key, rs in found.items()}
            # before issue #14: 0 of 3 under every key, in both orders
            assert listed == dict.fromkeys(CROWDED_KEYS, len(honest)), listed
            # and each node that only stores answers with every honest provider in its share
            shares = {}
            for dht in nodes[len(providers) :]:
                for key in CROWDED_KEYS:
                    answer = dht.store.answer(dht_digest(key), now=time.time())
                    signers = {open_record(b, now=time.time()).record.peer_id for b in answer}
                    shares[key] = (len(honest & signers), len(signers - honest))
            assert all(h == len(honest) and crowd > 0 for h, crowd in shares.values()), shares


async def test_a_lookup_merges_the_answers_of_every_one_of_the_k_closest() -> None:
    """Each node holds a record no other node has (a node a crowd reached first, one that missed
    a store): the reader asks all of the k closest and lists every record. Before issue #14 the
    record crawl stopped after three holders (3 of 5 listed)."""
    with trio.fail_after(30):
        now = time.time()
        async with honest_network() as (nodes, _providers):
            only_here = {}
            for dht in nodes:
                ident = Identity.generate()
                blob = sign_record(make_record(ident, now=now), ident).blob
                assert dht.store.offer(dht_digest(directory_key()), blob, now=now).accepted
                only_here[ident.peer_id] = dht
            async with open_dht(
                Identity.generate().public_key, CLIENT_HOST, 0, client_mode=True, rpc_timeout=1.0
            ) as client:
                assert await client.bootstrap([(HONEST_HOSTS[0], nodes[0].port)]) >= 1
                listed = {r.peer_id for r in await client.find_records(directory_key())}
            assert listed == set(only_here), f"{len(listed & set(only_here))} of {len(only_here)}"
