"""The client's handle on the network: a light DHT member, its session pool, provider lookups.

`open_client` joins the DHT through bootstrap peers with a throwaway identity (a client is not
a provider; nothing it does needs a name others remember) and yields a `Client`. Lookups of a
model's providers go through `Client.find_records`, which a long-lived client (the gateway)
reuses for a few seconds. Sending a request and failing over between providers is
p2p/client/failover.py's job.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from crypto.identity import Identity
from crypto.network_key import network_id
from p2p.client.ranking import ProviderRanker
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import (
    CapabilityRecord,
    directory_key,
    is_sha256,
    model_key,
    model_name_key,
)
from p2p.errors import ErrorCode, GpunetError
from p2p.host_port import format_host_port
from p2p.session.pool import SessionPool

# How long a provider lookup is reused. It is what a stopped node's withdrawal may wait before a
# long-lived client (the gateway) stops picking it, and part of how old the load it ranks by is
# (records live 60 s, their load is republished within ~5 s of a change: p2p/dht/records.py).
LOOKUP_CACHE_S = 5.0


class AskError(GpunetError):
    """A request could not be served; one-line message for the user.

    `code` says why, for programs (the gateway maps it to an HTTP status; the message is never
    read for that): `UNAVAILABLE` when no provider could serve the request (or the network could
    not be reached), `UNKNOWN_MODEL` when no node serves the model, otherwise the code of the
    provider that refused it for good (`bad_request`, `too_long`).
    """

    code = ErrorCode.UNAVAILABLE


@attrs.define
class Client:
    dht: Dht
    identity: Identity
    pool: SessionPool
    network_id: bytes | None = None  # private network; None: the public one
    ranker: ProviderRanker = attrs.field(factory=lambda: ProviderRanker(clock=time.time))
    # A long-lived client (the gateway) reuses a provider lookup for a few seconds instead of
    # asking the DHT before every request: it saves a round of UDP queries per request (several
    # ms of time to first token) and load on the model's DHT key. Ranking still runs each time.
    lookup_ttl_s: float = LOOKUP_CACHE_S
    clock: Callable[[], float] = time.monotonic
    _lookups: dict[str, tuple[float, list[CapabilityRecord]]] = attrs.field(factory=dict)

    async def find_records(
        self, key: str, *, fresh: bool = False
    ) -> tuple[list[CapabilityRecord], bool]:
        """Records under *key* and whether they came from the cache."""
        now = self.clock()
        hit = self._lookups.get(key)
        if hit is not None and not fresh and now - hit[0] < self.lookup_ttl_s:
            return hit[1], True
        records = await self.dht.find_records(key)
        if records:
            self._lookups[key] = (now, records)
        else:
            self._lookups.pop(key, None)
        return records, False

    def forget_lookups(self) -> None:
        """After a provider failed: the next request asks the DHT again."""
        self._lookups.clear()


def _all_loopback(addresses: Sequence[tuple[str, int]]) -> bool:
    try:
        return bool(addresses) and all(ipaddress.ip_address(h).is_loopback for h, _ in addresses)
    except ValueError:
        return False


@asynccontextmanager
async def open_client(
    bootstrap: Sequence[tuple[str, int]], *, psk: bytes | None = None
) -> AsyncIterator[Client]:
    """A light DHT participant with a throwaway identity, joined through *bootstrap*.

    The client keeps sessions open for reuse; they close when the block ends.
    """
    if not bootstrap:
        raise AskError("no bootstrap peer given: pass --bootstrap HOST:PORT (a node prints it)")
    identity = Identity.generate()
    host = "127.0.0.1" if _all_loopback(bootstrap) else "0.0.0.0"
    net = network_id(psk) if psk is not None else None
    async with open_dht(identity, host, 0, client_mode=True, network_id=net) as dht:
        if await dht.bootstrap(list(bootstrap)) == 0:
            listed = ", ".join(format_host_port(h, p) for h, p in bootstrap)
            raise AskError(
                f"no bootstrap peer answered ({listed}); is a gpunet node of this network "
                "running there (same --network-key, or none)?"
            )
        async with trio.open_nursery() as nursery:
            yield Client(dht, identity, SessionPool(identity, nursery, psk=psk), network_id=net)
            nursery.cancel_scope.cancel()


def lookup_key(model: str, net: bytes | None = None) -> str:
    """The DHT key of *model*'s providers: by sha256 when it is one, else by name."""
    if is_sha256(model.lower()):
        return model_key(model.lower(), net)
    return model_name_key(model, net)


async def list_nodes(client: Client, *, withdrawn: bool = False) -> list[CapabilityRecord]:
    """The directory's nodes by peer id; with *withdrawn*, also the nodes whose newest record
    is a signed withdrawal (they stopped: the dashboard shows them offline), else not."""
    key = directory_key(client.network_id)
    records = await (
        client.dht.find_records(key, withdrawn=True) if withdrawn else client.dht.find_records(key)
    )
    return sorted(records, key=lambda r: r.peer_id)


async def describe_offer(client: Client) -> str:
    names = sorted({m.name for r in await list_nodes(client) for m in r.models})
    return ", ".join(names) if names else "nothing (no node publishes a model)"
