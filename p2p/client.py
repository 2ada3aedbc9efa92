"""The client side: join the DHT lightly, find providers of a model, stream tokens from one."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from crypto.identity import Identity
from p2p import wire
from p2p.dht import Dht, open_dht
from p2p.records import (
    CapabilityRecord,
    ModelEntry,
    directory_key,
    is_sha256,
    model_key,
    model_name_key,
)
from p2p.session import SecureConnection, SessionError, connect

# The first token waits for the prompt's prefill; later ones come every few ms. Past this the
# node is treated as stalled.
TOKEN_TIMEOUT_S = 60.0


class AskError(Exception):
    """A request could not be served; one-line message for the user."""


@attrs.frozen
class Provider:
    record: CapabilityRecord
    model: ModelEntry


@attrs.frozen
class Client:
    dht: Dht
    identity: Identity


def _all_loopback(addresses: Sequence[tuple[str, int]]) -> bool:
    try:
        return bool(addresses) and all(ipaddress.ip_address(h).is_loopback for h, _ in addresses)
    except ValueError:
        return False


@asynccontextmanager
async def open_client(bootstrap: Sequence[tuple[str, int]]) -> AsyncIterator[Client]:
    """A light DHT participant with a throwaway identity, joined through *bootstrap*."""
    if not bootstrap:
        raise AskError("no bootstrap peer given: pass --bootstrap HOST:PORT (a node prints it)")
    identity = Identity.generate()
    host = "127.0.0.1" if _all_loopback(bootstrap) else "0.0.0.0"
    async with open_dht(identity.public_key, host, 0, client_mode=True) as dht:
        if await dht.bootstrap(list(bootstrap)) == 0:
            listed = ", ".join(f"{h}:{p}" for h, p in bootstrap)
            raise AskError(
                f"no bootstrap peer answered ({listed}); is a gpunet node running there?"
            )
        yield Client(dht, identity)


def lookup_key(model: str) -> str:
    return model_key(model.lower()) if is_sha256(model.lower()) else model_name_key(model)


async def list_nodes(client: Client) -> list[CapabilityRecord]:
    records = await client.dht.find_records(directory_key())
    return sorted(records, key=lambda r: r.peer_id)


async def find_providers(client: Client, model: str) -> list[Provider]:
    """Verified providers of *model* (name or sha256), best first."""
    records = await client.dht.find_records(lookup_key(model))
    found = [Provider(r, m) for r in records if (m := r.serves(model.lower())) is not None]
    random.shuffle(found)  # equal candidates share the load; new nodes get tried
    found.sort(key=lambda p: (-p.record.load.free_slots, -p.model.decode_tok_s))
    return found


async def describe_offer(client: Client) -> str:
    names = sorted({m.name for r in await list_nodes(client) for m in r.models})
    return ", ".join(names) if names else "nothing (no node publishes a model)"


async def generate(
    client: Client,
    model: str,
    request: wire.Generate,
    on_text: Callable[[str], None],
    on_provider: Callable[[Provider], None] = lambda _p: None,
) -> wire.Done:
    """Stream *request* from the best provider; move on to the next while nothing was delivered."""
    providers = await find_providers(client, model)
    if not providers:
        raise AskError(
            f"no node serves model {model!r}; the network offers: {await describe_offer(client)}"
        )
    problems: list[str] = []
    for provider in providers:
        for address in provider.record.addresses:
            try:
                conn = await connect(address, client.identity, provider.record.peer_id)
            except SessionError as exc:
                problems.append(str(exc))
                continue
            on_provider(provider)
            try:
                outcome = await _stream(
                    conn, attrs.evolve(request, model=provider.model.sha256), on_text
                )
            finally:
                await conn.aclose()
            if isinstance(outcome, wire.Done):
                return outcome
            problems.append(outcome)
    raise AskError("no provider could serve the request: " + "; ".join(problems[-3:]))


async def _stream(
    conn: SecureConnection, request: wire.Generate, on_text: Callable[[str], None]
) -> wire.Done | str:
    """Done, or a reason to try the next provider (only while no token was delivered)."""
    delivered = 0
    try:
        await conn.send(request)
        while True:
            with trio.fail_after(TOKEN_TIMEOUT_S):
                msg = await conn.receive()
            if msg is None:
                raise SessionError("node closed the connection mid-stream")
            if isinstance(msg, wire.Token) and msg.id == request.id:
                on_text(msg.text)
                delivered += 1
            elif isinstance(msg, wire.Done) and msg.id == request.id:
                return msg
            elif isinstance(msg, wire.Error) and msg.id == request.id:
                if delivered == 0 and msg.code in (wire.ErrorCode.BUSY, wire.ErrorCode.INTERNAL):
                    return f"{conn.remote_peer_id[:12]}: {msg.message}"
                raise AskError(f"{msg.code}: {msg.message}")
    except (SessionError, trio.TooSlowError) as exc:
        reason = str(exc) or "node stalled"
        if delivered:
            raise AskError(f"{reason} after {delivered} token chunks were delivered") from exc
        return f"{conn.remote_peer_id[:12]}: {reason}"
