"""The client side: join the DHT lightly, find providers of a model, stream tokens from one.

A request goes to the best-ranked provider; if that node fails before finishing (connection lost,
stalled, `busy`/`internal`/`shutting_down`), the request continues on the next provider of the
same model file (same sha256; those of the failed node's build and hardware class first) by exact
replay: the new node prefills the prompt as the first one did, feeds the tokens already delivered
one per decode step, and continues. With greedy decoding on the same build and hardware class the
text is identical to an uninterrupted run; across classes only "nothing lost, nothing repeated"
holds.
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
from p2p.protocol import wire
from p2p.dht.node import Dht, open_dht
from p2p.client.ranking import ProviderRanker
from p2p.dht.records import (
    CapabilityRecord,
    ModelEntry,
    directory_key,
    is_sha256,
    model_key,
    model_name_key,
)
from p2p.session.secure import SessionError
from p2p.session.pool import MultiplexedSession, SessionPool

# The first token waits for the prompt's prefill (long prompts on slow CPUs take a while); later
# ones come every few ms. Past these the node is treated as stalled and the request moves on.
# How long a provider lookup is reused (records live 300 s; load figures in them are older).
LOOKUP_CACHE_S = 5.0
FIRST_TOKEN_TIMEOUT_S = 120.0
TOKEN_TIMEOUT_S = 30.0

# Answers after which another provider may still succeed.
RETRYABLE = frozenset(
    {
        wire.ErrorCode.BUSY,
        wire.ErrorCode.RATE_LIMITED,
        wire.ErrorCode.INTERNAL,
        wire.ErrorCode.SHUTTING_DOWN,
        wire.ErrorCode.UNKNOWN_MODEL,
    }
)


class AskError(Exception):
    """A request could not be served; one-line message for the user.

    `code` is the `wire.ErrorCode` behind it when there is one (the gateway maps it to HTTP)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class Provider:
    record: CapabilityRecord
    model: ModelEntry
    reason: str = ""


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
            listed = ", ".join(f"{h}:{p}" for h, p in bootstrap)
            raise AskError(
                f"no bootstrap peer answered ({listed}); is a gpunet node of this network "
                "running there (same --network-key, or none)?"
            )
        async with trio.open_nursery() as nursery:
            yield Client(dht, identity, SessionPool(identity, nursery, psk=psk), network_id=net)
            nursery.cancel_scope.cancel()


def lookup_key(model: str, net: bytes | None = None) -> str:
    if is_sha256(model.lower()):
        return model_key(model.lower(), net)
    return model_name_key(model, net)


async def list_nodes(client: Client) -> list[CapabilityRecord]:
    records = await client.dht.find_records(directory_key(client.network_id))
    return sorted(records, key=lambda r: r.peer_id)


def prefer_first(providers: list[Provider], prefer: str | None) -> list[Provider]:
    if not prefer:
        return providers
    key = prefer.lower()
    return sorted(providers, key=lambda p: not p.record.peer_id.startswith(key))  # stable


def prefer_same_class(providers: Sequence[Provider], failed: CapabilityRecord) -> list[Provider]:
    """Providers of *failed*'s build and hardware class first, the ranking order kept otherwise.

    After a mid-stream failure the text continues by replay; greedy text stays identical to an
    uninterrupted run only on the same llama.cpp build and hardware class (across classes only
    "nothing lost, nothing repeated" holds). Nodes too old to publish both are not matched.
    """
    if not (failed.build and failed.hardware_class):
        return list(providers)
    same = (failed.build, failed.hardware_class)
    return sorted(providers, key=lambda p: (p.record.build, p.record.hardware_class) != same)


async def describe_offer(client: Client) -> str:
    names = sorted({m.name for r in await list_nodes(client) for m in r.models})
    return ", ".join(names) if names else "nothing (no node publishes a model)"


@attrs.define
class _Progress:
    """What the caller has received so far, across providers."""

    token_ids: list[int] = attrs.field(factory=list)
    chunks: int = 0
    replayable: bool = True  # every delivered chunk came with its token ids


async def generate(
    client: Client,
    model: str,
    request: wire.Generate,
    on_text: Callable[[str], None],
    on_provider: Callable[[Provider], None] = lambda _p: None,
    *,
    prefer: str | None = None,
) -> wire.Done:
    """Stream *request* to `on_text` as one uninterrupted stream, failing over between nodes.

    *prefer* (a peer id or a prefix of it) puts that node first; the ranking orders the rest.
    """
    key = lookup_key(model, client.network_id)
    records, cached = await client.find_records(key)
    providers = prefer_first(_rank(client, records, model), prefer)
    if not providers:
        raise AskError(
            f"no node serves model {model!r}; the network offers: {await describe_offer(client)}",
            wire.ErrorCode.UNKNOWN_MODEL,
        )
    progress = _Progress()
    problems: list[str] = []
    tried: set[str] = set()
    done = await _serve(client, providers, request, progress, problems, tried, on_text, on_provider)
    if done is None and cached and not progress.chunks:
        # the cached list may be out of date: ask the DHT once more, for nodes not tried yet
        records, _ = await client.find_records(key, fresh=True)
        fresh = [p for p in _rank(client, records, model) if p.record.peer_id not in tried]
        done = await _serve(client, fresh, request, progress, problems, tried, on_text, on_provider)
    if done is not None:
        return done
    if progress.chunks:
        raise AskError(
            f"the stream broke after {len(progress.token_ids) or progress.chunks} tokens were "
            f"delivered and no other provider could continue it: {'; '.join(problems[-3:])}"
        )
    raise AskError("no provider could serve the request: " + "; ".join(problems[-3:]))


def _rank(client: Client, records: Sequence[CapabilityRecord], model: str) -> list[Provider]:
    found = [(r, m) for r in records if (m := r.serves(model.lower())) is not None]
    return [Provider(c.record, c.model, c.reason) for c in client.ranker.rank(found)]


async def _serve(
    client: Client,
    providers: Sequence[Provider],
    request: wire.Generate,
    progress: _Progress,
    problems: list[str],
    tried: set[str],
    on_text: Callable[[str], None],
    on_provider: Callable[[Provider], None],
) -> wire.Done | None:
    """Try *providers* in order until one finishes the request; None when none could."""
    pinned: str | None = None  # after the first delivered token, only the same model file
    remaining = list(providers)
    while remaining:
        provider = remaining.pop(0)
        if pinned is not None and provider.model.sha256 != pinned:
            continue
        if progress.chunks and not progress.replayable:
            break
        tried.add(provider.record.peer_id)
        outcome = await _try_provider(client, provider, request, progress, on_text, on_provider)
        if isinstance(outcome, wire.Done):
            return outcome
        client.forget_lookups()
        problems.append(outcome)
        if progress.chunks:
            pinned = provider.model.sha256
            remaining = prefer_same_class(remaining, provider.record)
    return None


async def _try_provider(
    client: Client,
    provider: Provider,
    request: wire.Generate,
    progress: _Progress,
    on_text: Callable[[str], None],
    on_provider: Callable[[Provider], None],
) -> wire.Done | str:
    """Done, or why this provider did not finish (the caller tries the next)."""
    peer = provider.record.peer_id
    session: MultiplexedSession | None = None
    problem = "no address"
    for address in provider.record.addresses:
        started = time.monotonic()
        try:
            session = await client.pool.get(peer, address)
            break
        except SessionError as exc:
            problem = str(exc)
    if session is None:
        client.ranker.record_failure(peer)
        return f"{peer[:12]}: {problem}"
    on_provider(provider)
    replay = attrs.evolve(
        request, model=provider.model.sha256, replay_tokens=tuple(progress.token_ids)
    )
    try:
        outcome = await _stream(session, replay, progress, on_text)
    except SessionError as exc:
        outcome = str(exc)
    if isinstance(outcome, wire.Done):
        client.ranker.record_success(peer, time.monotonic() - started)
        return outcome
    client.ranker.record_failure(peer)
    client.pool.drop(peer)
    return f"{peer[:12]}: {outcome}"


async def _stream(
    session: MultiplexedSession,
    request: wire.Generate,
    progress: _Progress,
    on_text: Callable[[str], None],
) -> wire.Done | str:
    """The node's answer to *request*; a string saying what went wrong when it failed in a way
    another provider may not. "node stalled" when nothing came for FIRST_TOKEN_TIMEOUT_S before
    the first message, or for TOKEN_TIMEOUT_S since the latest one."""
    async with session.request(request) as (_rid, inbox):
        heard = trio.current_time()
        timeout = FIRST_TOKEN_TIMEOUT_S
        while True:
            # One scope for many messages, not one per token: its deadline is moved only when
            # it fires (to the latest message's time + timeout), since entering a scope and
            # moving a deadline per token are CPU the node's llama.cpp threads would wait for
            # where they share the cores (docs/benchmarks.md).
            with trio.CancelScope(deadline=heard + timeout) as waiting:
                while True:
                    msg = await inbox.receive()
                    heard = trio.current_time()
                    if timeout != TOKEN_TIMEOUT_S:
                        timeout = TOKEN_TIMEOUT_S
                        waiting.deadline = heard + timeout
                    outcome = _take(msg, progress, on_text)
                    if outcome is not None:
                        return outcome
            if trio.current_time() >= heard + timeout:
                return "node stalled"


def _take(
    msg: wire.Message | SessionError, progress: _Progress, on_text: Callable[[str], None]
) -> wire.Done | str | None:
    """Handle one message of the answer; the outcome once the answer is over."""
    if isinstance(msg, SessionError):
        return str(msg)
    if isinstance(msg, wire.Token):
        on_text(msg.text)
        progress.chunks += 1
        progress.token_ids.extend(msg.token_ids)
        progress.replayable = progress.replayable and bool(msg.token_ids)
        return None
    if isinstance(msg, wire.Done):
        return msg
    if isinstance(msg, wire.Error):
        if msg.code in RETRYABLE:
            return f"{msg.code}: {msg.message}"
        raise AskError(f"{msg.code}: {msg.message}", msg.code)
    return None  # a message of no request (a pong): nothing to do
