"""Dialling providers in rank order without letting the first ones hold the request.

A fresh client has measured nothing, so it ranks by what records claim, and a record's claim is
anyone's to sign: ten records claiming the top speed, each listing addresses that accept TCP and
never answer, would otherwise each cost a full dial deadline before the next provider is tried
(issue #14's tarpit). So providers are raced the way happy eyeballs races addresses: the next
ranked provider is dialled `PROVIDER_STAGGER_S` after the previous one (at once when that one
failed), the first session to come up is used, and dials still under way are cancelled (a
cancelled dial leaves nothing behind; one that completed in the same instant stays in the pool
for reuse and idles out there). Only one request is sent: the race is over sessions, not over
generations, so no node does work for nothing.

A provider whose dial failed, or was still unfinished when one dialled after it had already
won, goes into the ranker's backoff: a long-lived client (the gateway) stops paying the stagger
for it on every request. Losing to a later provider means its handshake took at least one
stagger longer than the winner's; an honest node that is merely farther away backs off for
`ranking.BACKOFF_BASE_S` and is tried again after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import attrs

from p2p.client.network import Client
from p2p.client.ranking import Provider
from p2p.session.pool import MultiplexedSession, staggered_race

# Between starting one provider's dial and the next one's. Under RFC 8305's 250 ms (its figure
# for one host's addresses) because here each step is a whole other node, and issue #14's target
# is that ten tarpits ranked first cost under 3 s: 10 x 200 ms = 2 s, and an honest node still
# has 200 ms (a handshake is 1.5 round trips) to win before a second handshake is started.
PROVIDER_STAGGER_S = 0.2


@attrs.frozen
class Dialled:
    """What one race over providers gave: the session that came up first (if any), the providers
    whose dial failed (with why) and those that lost to a provider dialled after them."""

    connected: tuple[Provider, MultiplexedSession] | None
    failed: tuple[tuple[Provider, str], ...] = ()
    slow: tuple[Provider, ...] = ()


async def _keep(_session: MultiplexedSession) -> None:
    """A session that came up after the winner is already in the pool: leave it there."""


async def connect_first(client: Client, providers: Sequence[Provider]) -> Dialled:
    """Race sessions to *providers* (best first); the ranker learns each failure."""
    attempts = [
        # a relayed node's relays join its addresses (p2p/session/pool.py dials them last)
        partial(client.pool.get, p.record.peer_id, p.record.addresses, p.record.relays)
        if p.record.relays
        else partial(client.pool.get, p.record.peer_id, p.record.addresses)
        for p in providers
    ]
    # No deadline of its own: each dial has the pool's, and the request has the caller's.
    race = await staggered_race(attempts, PROVIDER_STAGGER_S, math.inf, _keep)
    failed = tuple(
        (providers[i], f"{providers[i].record.peer_id[:12]}: {exc}")
        for i, exc in sorted(race.failures.items())
    )
    # Still dialling when one started after it had won: had a head start and lost.
    lost = race.winner if race.winner is not None else -1
    slow = tuple(providers[i] for i in sorted(race.unfinished) if i < lost)
    for provider in (*(p for p, _ in failed), *slow):
        client.ranker.record_failure(provider.record.peer_id)
    won = None
    if race.winner is not None and race.value is not None:
        won = (providers[race.winner], race.value)
    return Dialled(won, failed, slow)
