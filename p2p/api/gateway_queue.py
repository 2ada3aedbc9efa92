"""The gateway's queue in front of a busy network: a request waits here instead of failing.

A gateway is many users behind one identity, and nodes cap each peer's concurrent requests
(p2p/protocol/admission.py), so a burst through the gateway meets `busy` long before the network
is out of capacity. Failing those requests at once would make a gateway worse than a single
llama-server, which queues; so a request whose every provider refused it for want of room waits,
woken when another request of this gateway ends (a slot may have freed) or after a backoff,
whichever comes first. Nothing has been sent to the HTTP client while it waits, so an exhausted
wait is still a clean 503.

Which failures wait is decided by their `ErrorCode` (`WAITS_FOR_ROOM`), never by message text.

Every request also has an overall deadline, counted from its arrival: the queue's wait plus
`GENERATION_DEADLINE_S`. Each try passes what is left of it to `generate` (`deadline_s`), and a
cancel scope around all of it covers the waits between tries, so no provider (a tarpit that
accepts TCP and never answers, or one that streams a token a minute) can hold a request
longer; it then ends with `ErrorCode.TIMEOUT` (HTTP 504 from `p2p.errors.HTTP_STATUS`, or an
in-stream error once text went out).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
import trio

from inference.prompt_probes import DEFAULT_PROBES
from p2p.api.recent_history import RecentHistory
from p2p.client.background_checks import BackgroundChecks
from p2p.client.failover import generate
from p2p.client.network import AskError, Client
from p2p.client.ranking import Provider
from p2p.client.segments import Segment
from p2p.errors import ErrorCode
from p2p.protocol import wire

# How long a request waits at the gateway while every provider is busy before it gets a 503.
# A minute covers a burst of a few dozen 128-token requests at CPU speed; OpenAI clients wait
# 10 minutes for an answer, so they do not give up first.
DEFAULT_QUEUE_TIMEOUT_S = 60.0
# What a request may spend beyond its wait in the queue. With the default queue wait the whole
# request gets 600 s, the default timeout of OpenAI's Python client: by then its caller has
# given up anyway. 540 s is ~19,000 tokens at the 35 tok/s of the default model on 2 CPU cores.
GENERATION_DEADLINE_S = 540.0
QUEUE_RETRY_MIN_S = 0.05
QUEUE_RETRY_MAX_S = 1.0

# Failures that mean "no room now", not "this request cannot be served".
WAITS_FOR_ROOM = frozenset(
    {ErrorCode.BUSY, ErrorCode.RATE_LIMITED, ErrorCode.SHUTTING_DOWN, ErrorCode.UNAVAILABLE}
)


@attrs.define
class GatewayQueue:
    """The requests of one gateway: their ids, and the signal that one of them ended."""

    client: Client
    timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    generation_deadline_s: float = GENERATION_DEADLINE_S
    # Spot checks of a fraction of the finished requests (None: none).
    checks: BackgroundChecks | None = None
    # Prompt probes per request (p2p/client/failover.py `with_probes`; 0: none).
    probes: int = DEFAULT_PROBES
    # What the dashboard charts: each request as it ended (p2p/api/generation_response.py).
    history: RecentHistory = attrs.field(factory=RecentHistory)
    _finished: trio.Event = attrs.field(factory=trio.Event)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    def note_finished(self) -> None:
        """Wake the requests waiting for a busy network: a slot may have freed."""
        self._finished.set()
        self._finished = trio.Event()

    def next_request_id(self) -> int:
        # Each generate() opens its own request on a session, so ids need only be unique per
        # gateway.
        return next(self._ids)

    async def generate(
        self,
        model: str,
        request: wire.Generate,
        on_text: Callable[[str], None],
        on_provider: Callable[[Provider], None],
        delivered: Callable[[], bool],
    ) -> wire.Done:
        """`generate`, tried again while every provider is busy, for up to `timeout_s`.

        *delivered* says whether text already went to the caller: then nothing is retried
        (the failover has already done what could be done for a started stream).
        """
        limit_s = self.timeout_s + self.generation_deadline_s
        with trio.move_on_after(limit_s) as overall:
            return await self._generate(model, request, on_text, on_provider, delivered)
        assert overall.cancelled_caught
        raise AskError(
            f"the request did not finish within the gateway's deadline of {limit_s:g} s",
            ErrorCode.TIMEOUT,
        )

    async def _generate(
        self,
        model: str,
        request: wire.Generate,
        on_text: Callable[[str], None],
        on_provider: Callable[[Provider], None],
        delivered: Callable[[], bool],
    ) -> wire.Done:
        started = trio.current_time()
        deadline = started + self.timeout_s
        overall = deadline + self.generation_deadline_s
        backoff = QUEUE_RETRY_MIN_S
        while True:
            finished = self._finished
            numbered = attrs.evolve(request, id=self.next_request_id())
            try:
                # each try gets what is left of the request's overall deadline (without it,
                # generate's own default would cut a long generation short)
                segments: list[Segment] = []
                done = await generate(
                    self.client,
                    model,
                    numbered,
                    on_text,
                    on_provider,
                    deadline_s=max(0.0, overall - trio.current_time()),
                    on_segment=segments.append,
                    probes=self.probes,
                )
                if self.checks is not None:
                    self.checks.offer(segments)
                return done
            except AskError as exc:
                wait = min(backoff, deadline - trio.current_time())
                if exc.code not in WAITS_FOR_ROOM or delivered() or wait <= 0:
                    raise
            with trio.move_on_after(wait):
                await finished.wait()
            backoff = min(backoff * 2, QUEUE_RETRY_MAX_S)
