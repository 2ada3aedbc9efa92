"""The volunteer's request log (one line per admitted request) and the connection wrapper that
notes each request's final message for it."""

from __future__ import annotations

import logging

from p2p.protocol import wire
from p2p.session.local import Connection

# One line per served request, shown at the default log level (p2p/cli/common.py): what a
# volunteer reads to see that the node works for others.
request_log = logging.getLogger("p2p.node.requests")

# Final messages a connection keeps for the request log until collected: far more than the
# requests one connection may have live (p2p/node/connection.py).
MAX_NOTED_FINALS = 256


class FinalMessages:
    """A connection that notes the final message (Done or Error) of each request it carries,
    by request id, for the request log; everything else passes through."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.finals: dict[int, wire.Message] = {}

    @property
    def remote_peer_id(self) -> str:
        return self._conn.remote_peer_id

    async def send(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.Done | wire.Error | wire.Scores | wire.Embeddings):
            self.finals[msg.id] = msg
            if len(self.finals) > MAX_NOTED_FINALS:  # one nobody collected (a refusal's, say)
                del self.finals[next(iter(self.finals))]
        await self._conn.send(msg)

    async def receive(self) -> wire.Received | None:
        return await self._conn.receive()

    async def aclose(self) -> None:
        await self._conn.aclose()

    def requests_changed(self, live: int) -> None:
        self._conn.requests_changed(live)


def short_name(text: str) -> str:
    """A requested model name as the log shows it: printable, at most 40 characters."""
    return "".join(c if c.isprintable() else "?" for c in text[:40])


def log_request(model: str, peer_id: str, final: wire.Message | None, took: float) -> None:
    """The request log's line for one admitted request (*model* by the name it is served as:
    requests often name it by sha256)."""
    who = peer_id[:12]
    if isinstance(final, wire.Done):
        request_log.info(
            "served %s to %s: %d prompt + %d tokens, %.1f tok/s, %.2f s, ok (%s)",
            model,
            who,
            final.prompt_tokens,
            final.completion_tokens,
            final.decode_tok_s,
            took,
            final.finish_reason,
        )
    elif isinstance(final, wire.Scores):
        scored = len(final.token_ids)
        request_log.info("scored %d tokens of %s for %s, %.2f s", scored, model, who, took)
    elif isinstance(final, wire.Embeddings):
        inputs, tokens = len(final.vectors), final.prompt_tokens
        request_log.info("embedded %d texts (%d tokens) of %s for %s", inputs, tokens, model, who)
    elif isinstance(final, wire.Error):
        request_log.info("failed %s for %s after %.2f s: %s", model, who, took, final.code.value)
    else:
        request_log.info("stopped %s for %s after %.2f s (cancelled or gone)", model, who, took)
