"""The one place where asyncio meets trio.

The `kademlia` package is asyncio code; gpunet is a trio program. trio-asyncio hosts an asyncio
loop inside the trio run. Kept in one small module because trio-asyncio leans on asyncio's policy
system, which Python 3.14 deprecates: swapping the bridge (an asyncio thread, or trio guest mode)
must touch only this file.

Trap handled here: trio-asyncio's default exception handler re-raises any unhandled asyncio error
into the trio nursery, so one malformed datagram from a stranger would kill the node. The handler
installed below logs and drops instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio_asyncio

log = logging.getLogger(__name__)

T = TypeVar("T")


def _log_and_drop(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.debug("asyncio error dropped: %s %r", context.get("message"), exc)


@asynccontextmanager
async def open_asyncio_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_and_drop)
        yield loop


async def run_aio(
    loop: asyncio.AbstractEventLoop, fn: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """Await an asyncio coroutine function on *loop* from trio (cancellable from trio's side).

    The loop is explicit because one trio program may host several DHT nodes (tests, tools),
    each on its own loop; the implicit "current loop" would be the innermost one.
    """
    result: T = await trio_asyncio.aio_as_trio(fn, loop=loop)(*args)
    return result
