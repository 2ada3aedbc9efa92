"""A paused node: why it takes no new requests (its owner's `gpunet pause`, or the hours outside
`--serve-hours`), the task that follows the schedule, and the one that republishes the record
when that changes.

A paused node refuses new requests with `paused` (retryable: the client moves on), finishes the
ones in flight, stays in the DHT and publishes its record with no free slot, so clients that
look it up rank it last (p2p/node/capability.py `load_entry`). Owner and schedule are separate
reasons: `gpunet resume` lifts the owner's pause only, and outside its hours the node stays
paused until the next start of a range (`gpunet status` says so).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2p.node.serve_hours import ServeHours

log = logging.getLogger(__name__)

# The schedule task wakes at least this often: a wall clock set back or forward (NTP, DST, a
# laptop waking up) moves an edge, and a re-check finds it within this long.
RECHECK_S = 60.0
# A republish after a change gets this long; one that waits on DHT contacts that never answer
# must not hold back the next change (the periodic republish follows anyway).
PUBLISH_WAIT_S = 5.0


class PauseState:
    """Whether the node takes new requests. `version` counts changes (for waiters)."""

    def __init__(self, hours: ServeHours | None = None) -> None:
        self.hours = hours
        self.by_owner = False
        self.by_schedule = False
        self.next_change: dt.datetime | None = None  # the schedule's next edge, if any
        self.version = 0
        self._changed = trio.Event()

    @property
    def paused(self) -> bool:
        return self.by_owner or self.by_schedule

    def set_owner(self, paused: bool) -> None:
        if paused != self.by_owner:
            self.by_owner = paused
            log.warning("node %s by its owner", "paused" if paused else "resumed")
            self._touch()

    def set_schedule(self, outside: bool) -> None:
        if outside != self.by_schedule:
            self.by_schedule = outside
            what = "paused: outside" if outside else "serving: inside"
            log.warning("node %s its serve hours (%s)", what, self.hours)
            self._touch()

    def _touch(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, since: int) -> None:
        """Until the next change, or at once if *since* (a `version` read before) is stale."""
        if since == self.version:
            await self._changed.wait()

    def describe(self) -> dict[str, Any]:
        """The pause as `gpunet status --json` shows it."""
        reasons = [
            r for r, on in (("owner", self.by_owner), ("serve_hours", self.by_schedule)) if on
        ]
        return {
            "paused": self.paused,
            "reasons": reasons,
            "serve_hours": str(self.hours) if self.hours is not None else None,
            "next_change": self.next_change.isoformat(timespec="minutes")
            if self.next_change is not None
            else None,
        }

    def refusal_text(self) -> str:
        if self.by_owner:
            return "node is paused by its owner"
        return f"node serves only during its hours ({self.hours}, local time)"


def local_now() -> dt.datetime:
    return dt.datetime.now()


def apply_serve_hours(state: PauseState, hours: ServeHours, at: dt.datetime) -> float:
    """Pause *state* if *at* is outside *hours* (else lift the schedule's pause); the seconds
    until it should be looked at again."""
    state.next_change = hours.next_change(at)
    state.set_schedule(not hours.inside(at))
    wait = RECHECK_S
    if state.next_change is not None:
        wait = min(RECHECK_S, (state.next_change - at).total_seconds())
    return max(0.05, wait)


async def follow_serve_hours(
    state: PauseState, hours: ServeHours, now: Callable[[], dt.datetime] = local_now
) -> None:
    """Pause *state* outside *hours* and lift it inside, at each edge, until cancelled."""
    while True:
        await trio.sleep(apply_serve_hours(state, hours, now()))


async def publish_changes(
    state: PauseState, publish: Callable[[], Awaitable[object]], since: int | None = None
) -> None:
    """After each pause or resume (since `state.version` was *since*, default now), a fresh
    record at once (free slots 0 while paused)."""
    seen = state.version if since is None else since
    while True:
        await state.wait_changed(seen)
        seen = state.version
        with trio.move_on_after(PUBLISH_WAIT_S):
            await publish()
