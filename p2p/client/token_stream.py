"""One provider's answer to one request: tokens to the caller, a stall caught, the outcome named.

`receive_answer` reads the messages of one request on a multiplexed session until it ends: a
`wire.Done`, or a string saying why this provider did not finish (the failover tries the next
one), or `AskError` when the provider refused the request with a code no other provider would
answer differently (`bad_request`, `too_long`). `Progress` is what the caller has received so
far, across providers: the failover replays its token ids on the next node.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from inference.token_logprobs import TokenLogprob
from p2p.client.network import AskError
from p2p.errors import RETRYABLE
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError

# The first token waits for the prompt's prefill (long prompts on slow CPUs take a while); later
# ones come every few ms. Past these the node is treated as stalled and the request moves on.
FIRST_TOKEN_TIMEOUT_S = 120.0
TOKEN_TIMEOUT_S = 30.0


class LoggedText(str):
    """A Token's text that came with its tokens' log-probabilities (the request asked for
    them): still the `str` every `on_text` receives, so the failover and the gateway's queue
    pass it on unchanged, with `logprobs` for the API (p2p/api/logprob_shape.py) to read. A
    failover's later segments bring their own: the replayed tokens' entries were delivered
    with the first node's text."""

    logprobs: tuple[TokenLogprob, ...] = ()

    @classmethod
    def of(cls, text: str, logprobs: tuple[TokenLogprob, ...]) -> LoggedText:
        logged = cls(text)
        logged.logprobs = logprobs
        return logged


@attrs.define
class Progress:
    """What the caller has received so far, across providers."""

    token_ids: list[int] = attrs.field(factory=list)
    chunks: int = 0
    replayable: bool = True  # every delivered chunk came with its token ids


async def receive_answer(
    session: MultiplexedSession,
    request: wire.Generate,
    progress: Progress,
    on_text: Callable[[str], None],
) -> wire.Done | str:
    """The node's answer to *request*; a string saying what went wrong when it failed in a way
    another provider may not. "node stalled" when nothing came for FIRST_TOKEN_TIMEOUT_S before
    the first message, or for TOKEN_TIMEOUT_S since the latest one."""
    async with session.request(request) as (_rid, inbox):
        heard = trio.current_time()
        timeout = FIRST_TOKEN_TIMEOUT_S
        while True:
            # One scope for many messages, not one per token: its deadline is moved only when
            # it fires (to the latest message's time + timeout), since entering a scope and
            # moving a deadline per token are CPU the node's llama.cpp threads would wait for
            # where they share the cores (docs/benchmarks.md).
            with trio.CancelScope(deadline=heard + timeout) as waiting:
                while True:
                    msg = await inbox.receive()
                    heard = trio.current_time()
                    if timeout != TOKEN_TIMEOUT_S:
                        timeout = TOKEN_TIMEOUT_S
                        waiting.deadline = heard + timeout
                    outcome = _take(msg, progress, on_text)
                    if outcome is not None:
                        return outcome
            if trio.current_time() >= heard + timeout:
                return "node stalled"


def _take(
    msg: wire.Message | SessionError, progress: Progress, on_text: Callable[[str], None]
) -> wire.Done | str | None:
    """Handle one message of the answer; the outcome once the answer is over."""
    if isinstance(msg, SessionError):
        return str(msg)
    if isinstance(msg, wire.Token):
        on_text(LoggedText.of(msg.text, msg.logprobs) if msg.logprobs else msg.text)
        progress.chunks += 1
        progress.token_ids.extend(msg.token_ids)
        progress.replayable = progress.replayable and bool(msg.token_ids)
        return None
    if isinstance(msg, wire.Done):
        return msg
    if isinstance(msg, wire.Error):
        if msg.code in RETRYABLE:
            return f"{msg.code.value}: {msg.message}"
        raise AskError(f"{msg.code.value}: {msg.message}", msg.code)
    return None  # a message of no request (a pong): nothing to do
