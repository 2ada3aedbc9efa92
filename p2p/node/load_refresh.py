"""When the node republishes its record: every TTL/3, at once on a reach change, and soon after
its load changed, so the load clients rank by is at most ~10 s old (issue #18, "live state").

A load republish is debounced: at most one per `LOAD_REPUBLISH_MIN_S` after the last publish,
and none when the load is back to what was published (a request that came and went between two
publishes). It reuses the closest nodes the last full publish found (`reuse_closest_s`), so it
costs the stores and no crawl. The traffic this costs is measured in p2p/dht/records.py's note.

Why republish and not a load query over the session (a `Pong` carrying load): a republish reaches
every reader (lookups of every client, `gpunet peers`, the dashboard); a query helps only a
client already holding a session to the node, and every client would need a ping loop.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

import trio

from crypto.identity import Identity
from p2p.dht.node import Dht
from p2p.dht.records import CapabilityRecord, LoadEntry, SignedRecord, sign_record
from p2p.node.config import NodeConfig
from p2p.reach.state import ReachState

log = logging.getLogger(__name__)

# The shortest gap between the last publish and one for a load change. A busy node's load moves
# with every request; 5 s bounds what that costs (p2p/dht/records.py) while a client's view
# stays within ~10 s (this, ~1 s of publish, the client's 5 s lookup cache).
LOAD_REPUBLISH_MIN_S = 5.0


class Why(enum.Enum):
    """What ended `wait_for_republish`."""

    INTERVAL = "interval"  # the periodic republish (TTL/3)
    REACH = "reach"  # a new address or relay: published at once, with a fresh crawl
    LOAD = "load"  # the load moved: published without a crawl


class LoadChanges:
    """A counter the node bumps whenever a load figure may have changed (a request admitted or
    ended); the republisher waits on it instead of polling. (Pause and resume publish at once
    on their own: p2p/node/pause.py.)"""

    def __init__(self) -> None:
        self.version = 0
        self._event = trio.Event()

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = trio.Event()

    async def wait_changed(self, seen: int) -> None:
        """Return once `version` differs from *seen*."""
        while self.version == seen:
            await self._event.wait()


async def load_moved(
    changes: LoadChanges,
    load_now: Callable[[], LoadEntry],
    published: LoadEntry,
    not_before: float,
) -> None:
    """Return once the load differs from *published*, no sooner than *not_before* (trio time),
    and only if it still differs then."""
    while True:
        seen = changes.version
        if load_now() != published:
            if trio.current_time() >= not_before:
                return
            await trio.sleep_until(not_before)  # the debounce; the load is read again after it
            continue
        await changes.wait_changed(seen)


async def wait_for_republish(
    *,
    interval_s: float,
    reach_changed: Callable[[], Awaitable[None]],
    changes: LoadChanges,
    load_now: Callable[[], LoadEntry],
    published: LoadEntry,
    min_gap_s: float = LOAD_REPUBLISH_MIN_S,
) -> Why:
    """Wait until the record should be published again and say why. *published* is the load
    of the record published last, *reach_changed* returns on a change of address or relay."""
    why = Why.INTERVAL
    not_before = trio.current_time() + min_gap_s
    with trio.move_on_after(interval_s):
        async with trio.open_nursery() as nursery:

            async def until(wait: Callable[[], Awaitable[None]], reason: Why) -> None:
                nonlocal why
                await wait()
                why = reason
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, reach_changed, Why.REACH)
            moved = partial(load_moved, changes, load_now, published, not_before)
            nursery.start_soon(until, moved, Why.LOAD)
    return why


class Publisher(Protocol):
    """What the republisher needs of the node (p2p/node/runtime.py `Node`)."""

    config: NodeConfig
    identity: Identity
    reach: ReachState
    load_changes: LoadChanges

    def build_record(self, session_address: str) -> CapabilityRecord: ...

    def current_load(self) -> LoadEntry: ...


async def publish_forever(
    node: Publisher,
    dht: Dht,
    session_address: str,
    *,
    published: LoadEntry,
    min_gap_s: float = LOAD_REPUBLISH_MIN_S,
) -> None:
    """Republish until cancelled: every TTL/3, at once on a reach change, and after a load
    change (debounced). *published*: the load of the record published before this starts.

    Two publishes may run at once: one that waits on contacts that never answer does not hold
    back the record of a change (a newer seq supersedes an older one wherever both land)."""
    interval = node.config.ttl_s / 3
    slots = trio.Semaphore(2)
    warned = False

    async def publish(signed: SignedRecord, reuse_closest_s: float) -> None:
        nonlocal warned
        try:
            accepted = await dht.publish(signed, reuse_closest_s=reuse_closest_s)
            if accepted == 0 and dht.routing_table_size() > 0 and not warned:
                warned = True  # once: it repeats every round while the clock is wrong
                # records live 60 s: one from a clock a minute behind arrives expired
                log.warning(
                    "no peer stored this node's record (seq %d); if this machine's clock is "
                    "off by a minute or more, set it right (NTP)",
                    signed.record.seq,
                )
            # a busy node's load republishes come every few seconds: not for the -v log
            level = logging.DEBUG if reuse_closest_s else logging.INFO
            log.log(
                level,
                "published record seq %d (%d remote stores accepted)",
                signed.record.seq,
                accepted,
            )
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        while True:
            seen = node.reach.version
            why = await wait_for_republish(
                interval_s=interval,
                reach_changed=partial(node.reach.wait_changed, seen),
                changes=node.load_changes,
                load_now=node.current_load,
                published=published,
                min_gap_s=min_gap_s,
            )
            await slots.acquire()
            record = node.build_record(session_address)
            published = record.load
            # a load change stores where the last full publish did (no crawl); the others crawl
            reuse = interval if why is Why.LOAD else 0.0
            nursery.start_soon(publish, sign_record(record, node.identity), reuse)
