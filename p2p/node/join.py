"""Joining the DHT through the bootstrap peers, retried with growing waits while none answers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from p2p.dht.node import Dht
from p2p.host_port import format_host_port
from p2p.node.config import NodeError

log = logging.getLogger("p2p.node.runtime")

# Waits between tries while no bootstrap peer answers, growing to the last, for at most
# `NodeConfig.join_timeout_s` in all.
JOIN_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


async def join(
    dht: Dht,
    bootstrap: Sequence[tuple[str, int]],
    timeout_s: float,
    on_retry: Callable[[float], None] = lambda _wait: None,
) -> None:
    """Join through *bootstrap*; while none answers, retry with growing waits (logged) for up
    to *timeout_s*, then raise NodeError. Unlike `gpunet ask`, a node waits: a service may start
    before its bootstrap peer, and nodes started together on a slow machine answer late."""
    if not bootstrap:
        return
    listed = ", ".join(format_host_port(h, p) for h, p in bootstrap)
    give_up_at = trio.current_time() + timeout_s
    for attempt in range(1000):  # bounded by the deadline long before this
        if await dht.bootstrap(list(bootstrap)) > 0:
            if attempt:
                log.warning("joined the network through %s", listed)
            return
        wait = JOIN_BACKOFF_S[min(attempt, len(JOIN_BACKOFF_S) - 1)]
        left = give_up_at - trio.current_time()
        if left <= 0:
            break
        wait = min(wait, left)
        log.warning(
            "no bootstrap peer answered yet (%s); retrying in %g s (for %.0f s more)",
            listed,
            wait,
            left,
        )
        on_retry(wait)
        await trio.sleep(wait)
    raise NodeError(
        f"no bootstrap peer answered ({listed}); is a gpunet node of this network "
        "running there (same --network-key, or none)?"
    )
