"""A fresh relayed session's wait for its hole punch, taken by its first request, not its dial.

The session pool (pool.py) hands out a relayed session as soon as its handshake is done, so the
race over providers (p2p/client/provider_race.py, 200 ms between providers) sees it up at once:
a punch wait inside the dial would make the race dial the next provider after 200 ms and count
the waiting one as slow. The first request on the session then waits here, up to the deadline
the prediction set (p2p/reach/punch_odds.py) and no longer than the punch lasts, and goes on the
punched session when one came up. The first request through reports the wait (`PunchWait`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import trio

S = TypeVar("S")


@attrs.frozen
class PunchWait:
    """How a fresh relayed session's first request waited for the punch: the prediction
    (`likely`, `reason`), the bound it waited under (from the session's handshake), how long the
    request waited, and whether it went on the punched session."""

    likely: bool
    reason: str
    bound_s: float
    waited_s: float
    punched: bool


class PunchGate(Generic[S]):
    """Set up with the punch's end (*ended*) and the *deadline* (trio time); `replacement` is the
    punched session once the pool installed it. `on_pass(waited_s, replacement)` is told once,
    by the first request through."""

    def __init__(
        self, ended: trio.Event, deadline: float, on_pass: Callable[[float, S | None], None]
    ) -> None:
        self._ended = ended
        self.deadline = deadline
        self._on_pass = on_pass
        self.replacement: S | None = None
        self.passed = False

    async def wait(self) -> S | None:
        """Wait until the punch ended or the deadline passed; the punched session, if any."""
        started = trio.current_time()
        with trio.move_on_at(self.deadline):
            await self._ended.wait()
        if not self.passed:
            self.passed = True
            self._on_pass(trio.current_time() - started, self.replacement)
        return self.replacement
