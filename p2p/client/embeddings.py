"""Embedding texts through the network: the providers of an embedding model, tried in rank order.

Routed as a generation is (p2p/client/failover.py): the model's providers are looked up in the
DHT (`Client.find_records`), ranked, and dialled as a staggered race (provider_race.py); the
first session up gets one `wire.Embed` and answers with one `wire.Embeddings`. A provider that
fails with a retryable code (`busy`, `internal`, ...), a broken session or no answer within
`EMBED_TIMEOUT_S` passes the request to the next; a `bad_request` or `too_long` ends it (every
honest provider would answer the same). There is nothing to replay: an embedding is one answer.

Only providers whose record lists the `embedding` capability are asked; a model whose providers
all lack it is refused at once (`bad_request`, "model X does not serve embeddings"), so a
generation model costs no node a request. The answer is checked before it is believed: one
vector per input, each of the width asked for (the wire decoder already checked the sizes and
that every value is finite).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from p2p.client.network import AskError, Client, describe_offer, lookup_key
from p2p.client.provider_race import connect_first
from p2p.client.ranking import Provider, rank_providers
from p2p.errors import RETRYABLE, ErrorCode
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError

EMBEDDING = "embedding"  # the capability (p2p.dht.records.MODEL_CAPABILITIES)
# One answer after the whole batch's prefill: seconds on a CPU for 128 long texts.
EMBED_TIMEOUT_S = 60.0
EMBED_DEADLINE_S = 120.0
# Providers asked for one request before giving up.
MAX_PROVIDER_TRIES = 4


async def embed(
    client: Client, request: wire.Embed, *, deadline_s: float | None = EMBED_DEADLINE_S
) -> tuple[wire.Embeddings, Provider]:
    """The vectors of *request*'s inputs and the provider that gave them; `AskError` with a
    code when none did (`UNKNOWN_MODEL`, `BAD_REQUEST`, `TOO_LONG`, `UNAVAILABLE`, `TIMEOUT`)."""
    with trio.move_on_after(math.inf if deadline_s is None else deadline_s):
        return await _embed(client, request)
    raise AskError(f"no embeddings within the deadline of {deadline_s:g} s", ErrorCode.TIMEOUT)


async def _embed(client: Client, request: wire.Embed) -> tuple[wire.Embeddings, Provider]:
    model = request.model
    records, _cached = await client.find_records(lookup_key(model, client.network_id))
    providers = rank_providers(client.ranker, records, model)
    if not providers:
        raise AskError(
            f"no node serves model {model!r}; the network offers: {await describe_offer(client)}",
            ErrorCode.UNKNOWN_MODEL,
        )
    embedders = [p for p in providers if EMBEDDING in p.model.capabilities]
    if not embedders:
        raise AskError(f"model {model} does not serve embeddings", ErrorCode.BAD_REQUEST)
    problems: list[str] = []
    remaining: Sequence[Provider] = embedders[:MAX_PROVIDER_TRIES]
    while remaining:
        dialled = await connect_first(client, remaining)
        problems.extend(problem for _, problem in dialled.failed)
        if dialled.connected is None:
            break
        provider, session = dialled.connected
        # as failover.py: the failed are out, those too slow to dial this time go last
        out = {id(provider), *(id(p) for p, _ in dialled.failed), *(id(p) for p in dialled.slow)}
        remaining = [p for p in remaining if id(p) not in out] + list(dialled.slow)
        outcome = await _ask(session, provider, request)
        if isinstance(outcome, wire.Embeddings):
            client.ranker.record_success(provider.record.peer_id, ttft_s=None, decode_tok_s=None)
            return outcome, provider
        client.ranker.record_failure(provider.record.peer_id)
        client.pool.drop(provider.record.peer_id)
        client.forget_lookups()
        problems.append(outcome)
    raise AskError("no provider could embed the request: " + "; ".join(problems[-3:]))


async def _ask(
    session: MultiplexedSession, provider: Provider, request: wire.Embed
) -> wire.Embeddings | str:
    """*provider*'s checked answer, or why it gave none; AskError when it refused for good."""
    peer = provider.record.peer_id[:12]
    asked = wire.Embed(0, provider.model.sha256, request.inputs, request.dimensions)
    try:
        async with session.request(asked) as (_rid, inbox):
            with trio.move_on_after(EMBED_TIMEOUT_S):
                msg = await inbox.receive()
                if isinstance(msg, SessionError):
                    return f"{peer}: {msg}"
                if isinstance(msg, wire.Error):
                    if msg.code not in RETRYABLE:
                        raise AskError(msg.message, msg.code)
                    return f"{peer}: {msg.code.value}: {msg.message}"
                if not isinstance(msg, wire.Embeddings):
                    return f"{peer}: answered an embedding request with {type(msg).__name__}"
                if len(msg.vectors) != len(request.inputs):
                    return f"{peer}: {len(msg.vectors)} vectors for {len(request.inputs)} inputs"
                if request.dimensions and msg.dimensions != request.dimensions:
                    return f"{peer}: vectors of {msg.dimensions} dimensions, not the ones asked"
                return msg
            return f"{peer}: no answer within {EMBED_TIMEOUT_S:g} s"
    except SessionError as exc:
        return f"{peer}: {exc}"
