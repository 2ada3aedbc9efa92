"""Serving one request through the network: providers tried in order, progress replayed.

A request goes to the best-ranked provider; if that node fails before finishing (connection lost,
stalled, or an answer in `p2p.errors.RETRYABLE`: `busy`, `internal`, `shutting_down`...), the
request continues on the next provider of the same model file (same sha256; those of the failed
node's build and hardware class first) by exact replay: the new node prefills the prompt as the
first one did, feeds the tokens already delivered one per decode step, and continues. With greedy
decoding on the same build and hardware class the text is identical to an uninterrupted run;
across classes only "nothing lost, nothing repeated" holds.

Providers are dialled as a staggered race in rank order (p2p/client/provider_race.py), so the
first ranks cannot hold a request by never answering; the whole request, lookup included, has a
deadline (`ASK_DEADLINE_S` unless the caller passes its own).

When no provider finishes, `generate` raises `AskError` with a code: `UNKNOWN_MODEL` (no node
serves the model), `UNAVAILABLE` (none of those that do could serve it), `INTERNAL` (the stream
broke after text was delivered and nobody could continue it: the serving side failed),
`TIMEOUT` (the deadline passed), or the non-retryable code a provider refused it with.

Every request carries prompt probes (inference/prompt_probes.py): `DEFAULT_PROBES` fresh draws
from the OS's randomness unless the caller gave its own, drawn once here, so a failover replay
(the same request) carries the same ones and each segment's receipt commits to them. The count
is the caller's setting (`probes`, 0 to MAX_PROBES; the CLI's `--probes`): 0 sends none, so the
node computes no probe rows (~2-5 % of a request on a CPU node) and a spot check of the request
cannot see a node that skipped part of the prompt (its probe status is "none"). A consistent
check of such a request still earns the node its credit (p2p/client/spot_check.py withholds it
only for "missing"): the credit is for output shown to be the model's, which the check did
show, and "none" is this client's own choice, not something a node can bring about (the draws
are the client's, kept in its copy of the request), whereas "missing" means the node was asked
and did not answer. A client that wants credit to mean "computed the whole prompt" too keeps
probes on.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence

import attrs
import trio

from inference.prompt_probes import DEFAULT_PROBES, MAX_PROBES
from p2p.client.network import AskError, Client, describe_offer, lookup_key
from p2p.client.provider_race import connect_first
from p2p.client.ranking import (
    Provider,
    measure_answer,
    prefer_first,
    prefer_same_class,
    rank_providers,
)
from p2p.client.segments import Segment, segment_of
from p2p.client.token_stream import Progress, receive_answer
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError

# The whole request, from the lookup to the last token, when the caller sets no deadline of its
# own. 128 tokens (`gpunet ask`'s default) take ~2.5 s on two CPU cores (docs/benchmarks.md); 120 s
# is the first-token timeout of token_stream.py, so a request that has not finished by then is
# held by something other than an honest, slow prefill. Longer generations pass their own.
ASK_DEADLINE_S = 120.0


@attrs.define
class _Attempt:
    """One request's journey over providers: what to send, what came back, who was tried."""

    client: Client
    request: wire.Generate
    on_text: Callable[[str], None]
    on_provider: Callable[[Provider], None]
    on_segment: Callable[[Segment], None] = lambda _s: None
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
    deadline_s: float | None = ASK_DEADLINE_S,
    on_segment: Callable[[Segment], None] = lambda _s: None,
    probes: int = DEFAULT_PROBES,
) -> wire.Done:
    """Stream *request* to `on_text` as one uninterrupted stream, failing over between nodes.

    *prefer* (a peer id or a prefix of it) puts that node first and dials it alone (the user
    chose it: a slower handshake than the next node's does not lose it the request); the ranking
    orders the rest.
    *deadline_s* bounds the whole request, counted from this call (None: no bound); past it the
    request is cancelled wherever it is and `AskError` with `ErrorCode.TIMEOUT` is raised.
    *on_segment* gets each provider's finished part with its receipt checked (p2p/client/
    segments.py): what a spot check re-checks (p2p/client/spot_check.py).
    *probes*: how many prompt probes to draw when *request* has none (`with_probes`).
    """
    attempt = _Attempt(client, with_probes(request, probes), on_text, on_provider, on_segment)
    with trio.move_on_after(math.inf if deadline_s is None else deadline_s):
        return await _generate(attempt, model, prefer)
    delivered = attempt.progress.chunks
    raise AskError(
        f"no complete answer within the request's deadline of {deadline_s:g} s"
        + (f" ({delivered} chunks were delivered)" if delivered else "")
        + (f"; {'; '.join(attempt.problems[-3:])}" if attempt.problems else ""),
        ErrorCode.TIMEOUT,
    )


def check_probe_count(count: int) -> int:
    """*count* if it is a probe count a request may carry, else ValueError."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_PROBES:
        raise ValueError(f"probes: a whole number from 0 to {MAX_PROBES}, got {count!r}")
    return count


def with_probes(request: wire.Generate, count: int = DEFAULT_PROBES) -> wire.Generate:
    """*request* with *count* fresh probe draws, unless it has some (or *count* is 0): the node
    cannot know them before it is asked, so it cannot compute only the positions they name."""
    if check_probe_count(count) == 0 or request.probes:
        return request
    return attrs.evolve(request, probes=tuple(secrets.randbits(32) for _ in range(count)))


async def _generate(attempt: _Attempt, model: str, prefer: str | None) -> wire.Done:
    client = attempt.client
    key = lookup_key(model, client.network_id)
    records, cached = await client.find_records(key)
    providers = prefer_first(rank_providers(client.ranker, records, model), prefer)
    if not providers:
        raise AskError(
            f"no node serves model {model!r}; the network offers: {await describe_offer(client)}",
            ErrorCode.UNKNOWN_MODEL,
        )
    chosen = bool(prefer) and providers[0].record.peer_id.startswith(str(prefer).lower())
    done = await _serve(attempt, providers, alone_first=chosen)
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


async def _serve(
    attempt: _Attempt, providers: Sequence[Provider], *, alone_first: bool = False
) -> wire.Done | None:
    """Try *providers* (best first) until one finishes the request; None when none could.
    *alone_first*: the first is dialled on its own before the others are raced."""
    progress = attempt.progress
    pinned: str | None = None  # after the first delivered token, only the same model file
    remaining = list(providers)
    while remaining:
        if pinned is not None:
            remaining = [p for p in remaining if p.model.sha256 == pinned]
        if not remaining or (progress.chunks and not progress.replayable):
            break
        racing = remaining[:1] if alone_first else remaining
        alone_first = False
        dialled = await connect_first(attempt.client, racing)
        out = {id(p) for p, _ in dialled.failed}
        attempt.tried.update(p.record.peer_id for p, _ in dialled.failed)
        attempt.tried.update(p.record.peer_id for p in dialled.slow)
        attempt.problems.extend(problem for _, problem in dialled.failed)
        if dialled.failed:
            attempt.client.forget_lookups()
        slow = {id(p) for p in dialled.slow}
        # Too slow to dial this time: still candidates, but after every other one.
        remaining = [p for p in remaining if id(p) not in out | slow] + list(dialled.slow)
        if dialled.connected is None:
            continue  # every provider raced failed; any left were not raced yet
        provider, session = dialled.connected
        remaining = [p for p in remaining if p is not provider]
        attempt.tried.add(provider.record.peer_id)
        outcome = await _request(attempt, provider, session)
        if isinstance(outcome, wire.Done):
            return outcome
        attempt.client.forget_lookups()
        attempt.problems.append(outcome)
        if progress.chunks:
            pinned = provider.model.sha256
            remaining = prefer_same_class(remaining, provider.record)
    return None


async def _request(
    attempt: _Attempt, provider: Provider, session: MultiplexedSession
) -> wire.Done | str:
    """Done, or why this provider did not finish (the caller tries the next)."""
    client, peer = attempt.client, provider.record.peer_id
    attempt.on_provider(provider)
    replay = attrs.evolve(
        attempt.request,
        model=provider.model.sha256,
        replay_tokens=tuple(attempt.progress.token_ids),
    )
    sent = trio.current_time()
    first: float | None = None
    before = len(attempt.progress.token_ids)

    def on_text(text: str) -> None:
        nonlocal first
        if first is None:
            first = trio.current_time()
        attempt.on_text(text)

    try:
        outcome = await receive_answer(session, replay, attempt.progress, on_text)
    except SessionError as exc:
        outcome = str(exc)
    if isinstance(outcome, wire.Done):
        ttft_s, decode_tok_s = measure_answer(
            sent, first, trio.current_time(), outcome.completion_tokens
        )
        client.ranker.record_success(peer, ttft_s=ttft_s, decode_tok_s=decode_tok_s)
        generated = (*attempt.progress.token_ids[before:], *outcome.token_ids)
        sha, addresses = provider.model.sha256, tuple(provider.record.addresses)
        attempt.on_segment(segment_of(peer, sha, replay, generated, outcome, addresses))
        return outcome
    client.ranker.record_failure(peer)
    client.pool.drop(peer)
    return f"{peer[:12]}: {outcome}"
