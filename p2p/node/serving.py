"""Serving one admitted request on a model's worker: tokens out, then exactly one final message.

Every failure becomes a wire error through `p2p.errors.code_of` (the worker's `WorkerBusy`,
`PromptTooLong`, `GenerationError` each have their code there), never through its message text.
"""

from __future__ import annotations

import logging

from inference.chat import render_chat
from inference.generation import GenerationDone, GenerationRequest, WorkerBusy
from p2p.errors import BadRequest, ErrorCode, code_of
from p2p.node.connection import Reply
from p2p.node.models import ServedModel
from p2p.protocol import wire
from p2p.protocol.request_events import LocalProtocolError
from p2p.session.secure import SessionError

log = logging.getLogger(__name__)

BUSY_TEXT = "node is busy; try another"


def generation_request(msg: wire.Generate, served: ServedModel) -> GenerationRequest:
    """What the worker is asked for *msg*: its chat rendered with the model's template."""
    prompt = msg.prompt
    if msg.messages:
        try:
            prompt = render_chat(
                [{"role": m.role, "content": m.content} for m in msg.messages],
                architecture=served.info.architecture,
                chat_template=served.info.chat_template,
            )
        except ValueError as exc:
            raise BadRequest(str(exc), field="messages") from exc
    try:
        return GenerationRequest(
            prompt=prompt,
            max_tokens=msg.max_tokens,
            temperature=msg.temperature,
            top_p=msg.top_p,
            seed=msg.seed,
            stop=msg.stop,  # type: ignore[arg-type]  # attrs converter confuses mypy
            replay_tokens=msg.replay_tokens,
            reproducible=msg.reproducible,
            top_k=msg.top_k,
            min_p=msg.min_p,
            typical_p=msg.typical_p,
            repeat_penalty=msg.repeat_penalty,
            presence_penalty=msg.presence_penalty,
            frequency_penalty=msg.frequency_penalty,
            penalty_last_n=msg.penalty_last_n,
            logit_bias=msg.logit_bias,  # type: ignore[arg-type]  # attrs converter
            ignore_eos=msg.ignore_eos,
        )
    except ValueError as exc:  # the worker's own bounds (a seed, a replay as long as the limit)
        raise BadRequest(str(exc)) from exc


def done_message(request_id: int, item: GenerationDone) -> wire.Done:
    return wire.Done(
        request_id,
        item.finish_reason,
        item.prompt_tokens,
        item.completion_tokens,
        item.time_to_first_token_s,
        item.decode_tokens_per_s,
        item.token_ids,
        item.cached_prompt_tokens,
    )


def error_text(exc: Exception, code: ErrorCode) -> str:
    """What the client is told: the fault's own words, except where they are not for it."""
    if isinstance(exc, WorkerBusy):
        return BUSY_TEXT
    if code is ErrorCode.INTERNAL:  # our failure: its details are for our log, not the peer
        return f"internal error: {type(exc).__name__}"
    return str(exc)


async def serve_on_worker(served: ServedModel, msg: wire.Generate, reply: Reply) -> None:
    """Generate for *msg* on *served*'s worker, streaming to *reply*."""
    try:
        request = generation_request(msg, served)
        async with served.worker.generate(request) as stream:
            async for item in stream:
                if isinstance(item, GenerationDone):
                    await reply.send(done_message(msg.id, item))
                else:
                    await reply.send(wire.Token(msg.id, item.text, item.token_ids))
    except (SessionError, LocalProtocolError):
        raise
    except Exception as exc:
        code = code_of(exc)
        if code is ErrorCode.INTERNAL:
            log.exception("generation failed")
        await reply.fail(code, error_text(exc, code))
