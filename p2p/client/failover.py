"""Serving one request through the network: providers tried in order, progress replayed.

A request goes to the best-ranked provider; if that node fails before finishing (connection lost,
stalled, or an answer in `p2p.errors.RETRYABLE`: `busy`, `internal`, `shutting_down`...), the
request continues on the next provider of the same model file (same sha256; those of the failed
node's build and hardware class first) by exact replay: the new node prefills the prompt as the
first one did, feeds the tokens already delivered one per decode step, and continues. With greedy
decoding on the same build and hardware class the text is identical to an uninterrupted run;
across classes only "nothing lost, nothing repeated" holds.

When no provider finishes, `generate` raises `AskError` with a code: `UNKNOWN_MODEL` (no node
serves the model), `UNAVAILABLE` (none of those that do could serve it), `INTERNAL` (the stream
broke after text was delivered and nobody could continue it: the serving side failed), or the
non-retryable code a provider refused it with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import attrs

from p2p.client.network import AskError, Client, describe_offer, lookup_key
from p2p.client.ranking import Provider, prefer_first, prefer_same_class, rank_providers
from p2p.client.token_stream import Progress, receive_answer
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError


@attrs.define
class _Attempt:
    """One request's journey over providers: what to send, what came back, who was tried."""

    client: Client
    request: wire.Generate
    on_text: Callable[[str], None]
    on_provider: Callable[[Provider], None]
    progress: Progress = attrs.field(factory=Progress)
    problems: list[str] = attrs.field(factory=list)
    tried: set[str] = attrs.field(factory=set)


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
    providers = prefer_first(rank_providers(client.ranker, records, model), prefer)
    if not providers:
        raise AskError(
            f"no node serves model {model!r}; the network offers: {await describe_offer(client)}",
            ErrorCode.UNKNOWN_MODEL,
        )
    attempt = _Attempt(client, request, on_text, on_provider)
    done = await _serve(attempt, providers)
    if done is None and cached and not attempt.progress.chunks:
        # the cached list may be out of date: ask the DHT once more, for nodes not tried yet
        records, _ = await client.find_records(key, fresh=True)
        fresh = rank_providers(client.ranker, records, model)
        done = await _serve(attempt, [p for p in fresh if p.record.peer_id not in attempt.tried])
    if done is not None:
        return done
    raise _exhausted(attempt)


def _exhausted(attempt: _Attempt) -> AskError:
    progress, recent = attempt.progress, "; ".join(attempt.problems[-3:])
    if progress.chunks:
        return AskError(
            f"the stream broke after {len(progress.token_ids) or progress.chunks} tokens were "
            f"delivered and no other provider could continue it: {recent}",
            ErrorCode.INTERNAL,
        )
    return AskError("no provider could serve the request: " + recent, ErrorCode.UNAVAILABLE)


async def _serve(attempt: _Attempt, providers: Sequence[Provider]) -> wire.Done | None:
    """Try *providers* in order until one finishes the request; None when none could."""
    progress = attempt.progress
    pinned: str | None = None  # after the first delivered token, only the same model file
    remaining = list(providers)
    while remaining:
        provider = remaining.pop(0)
        if pinned is not None and provider.model.sha256 != pinned:
            continue
        if progress.chunks and not progress.replayable:
            break
        attempt.tried.add(provider.record.peer_id)
        outcome = await _try_provider(attempt, provider)
        if isinstance(outcome, wire.Done):
            return outcome
        attempt.client.forget_lookups()
        attempt.problems.append(outcome)
        if progress.chunks:
            pinned = provider.model.sha256
            remaining = prefer_same_class(remaining, provider.record)
    return None


async def _try_provider(attempt: _Attempt, provider: Provider) -> wire.Done | str:
    """Done, or why this provider did not finish (the caller tries the next)."""
    client, peer = attempt.client, provider.record.peer_id
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
    attempt.on_provider(provider)
    replay = attrs.evolve(
        attempt.request,
        model=provider.model.sha256,
        replay_tokens=tuple(attempt.progress.token_ids),
    )
    try:
        outcome = await receive_answer(session, replay, attempt.progress, attempt.on_text)
    except SessionError as exc:
        outcome = str(exc)
    if isinstance(outcome, wire.Done):
        client.ranker.record_success(peer, time.monotonic() - started)
        return outcome
    client.ranker.record_failure(peer)
    client.pool.drop(peer)
    return f"{peer[:12]}: {outcome}"
