"""Serving one admitted request on a model's worker: tokens out, then exactly one final message.

Every failure becomes a wire error through `p2p.errors.code_of` (the worker's `WorkerBusy`,
`PromptTooLong`, `GenerationError` each have their code there), never through its message text.

A generation's `Done` carries the node's signed receipt of it (crypto/receipts.py): the request's
hash, the model sha256 the node claims, the sampler settings, the seed the run used, and every
token it generated, so that a client can have the output re-checked elsewhere and keep the proof.
A `Score` request (a spot check of another node's output) is answered with `Scores`.

The receipt also commits to the node's own log-probability of each token it generated (crypto/
receipts.py `pack_logprobs`): the worker is asked for logprobs (no alternatives) on every request
and the entries are sent on only when the client asked for them. Measured cost: one log-sum-exp
over the vocabulary per token (tools/bench_verification.py --commit-cost).

The receipt commits as well to the node's log-probability at each prompt position the request's
probe draws name (inference/prompt_probes.py): proof that it computed the whole prompt.

`ServedModel.cheat` (tests only, docs/security.md) makes the node lie on purpose
(p2p/node/cheats.py).
"""

from __future__ import annotations

import logging
import time

import attrs

from crypto.identity import Identity
from crypto.receipts import Receipt, encode, pack_logprobs, sign_receipt
from inference.generation import GenerationDone, GenerationRequest, WorkerBusy
from inference.scoring import ScoreRequest
from p2p.errors import BadRequest, ErrorCode, code_of
from p2p.node.chat_prompt import chat_prompt
from p2p.node.cheats import cheat_request, commitments, probe_commitments
from p2p.node.connection import Reply
from p2p.node.models import ServedModel
from p2p.protocol import wire
from p2p.protocol.request_events import LocalProtocolError
from p2p.protocol.request_hash import request_hash, sampler_settings
from p2p.protocol.score_wire import scores_message
from p2p.session.secure import SessionError

log = logging.getLogger(__name__)

BUSY_TEXT = "node is busy; try another"


def generation_request(msg: wire.Generate, served: ServedModel) -> GenerationRequest:
    """What the worker is asked for *msg*: its chat rendered with the model's template."""
    # a chat: messages, tools and tool_choice's grammar (p2p/node/chat_prompt.py)
    prompt, grammar = chat_prompt(msg, served) if msg.messages else (msg.prompt, msg.grammar)
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
            grammar=grammar,
            logprobs=msg.logprobs,
            prompt_logprobs=msg.prompt_logprobs,
            probes=msg.probes,
        )
    except ValueError as exc:  # the worker's own bounds (a seed, a replay as long as the limit)
        raise BadRequest(str(exc)) from exc


def committing(request: GenerationRequest) -> GenerationRequest:
    """*request* with the chosen tokens' log-probabilities computed (for the commitments)."""
    return request if request.logprobs >= 0 else attrs.evolve(request, logprobs=0)


def signed_receipt(
    identity: Identity,
    served: ServedModel,
    msg: wire.Generate,
    item: GenerationDone,
    generated: list[int],
    logprobs: list[float | None] | None = None,
    probes: tuple[float, ...] | None = None,
) -> bytes:
    """The receipt of one served segment: *generated* is every token this run produced,
    *logprobs* the node's log-probability of each (None where it has none), *probes* its values
    at the prompt probes (default: the worker's, `item.probe_logprobs`)."""
    receipt = Receipt(
        peer_id=identity.peer_id,
        model_sha256=served.info.sha256,
        request_hash=request_hash(msg),
        sampler=sampler_settings(msg),
        seed=item.seed if item.seed is not None else msg.seed,
        replayed=len(msg.replay_tokens),
        prompt_tokens=item.prompt_tokens,
        output_tokens=tuple(generated),
        issued_at=time.time(),
        logprobs=pack_logprobs(logprobs) if logprobs else b"",
        probe_logprobs=pack_logprobs(item.probe_logprobs if probes is None else probes),
    )
    return encode(sign_receipt(receipt, identity))


def done_message(request_id: int, item: GenerationDone, receipt: bytes = b"") -> wire.Done:
    return wire.Done(
        request_id,
        item.finish_reason,
        item.prompt_tokens,
        item.completion_tokens,
        item.time_to_first_token_s,
        item.decode_tokens_per_s,
        item.token_ids,
        item.cached_prompt_tokens,
        receipt,
        item.seed,
        item.prompt_logprobs,
        item.prompt_first,
    )


def error_text(exc: Exception, code: ErrorCode) -> str:
    """What the client is told: the fault's own words, except where they are not for it."""
    if isinstance(exc, WorkerBusy):
        return BUSY_TEXT
    if code is ErrorCode.INTERNAL:  # our failure: its details are for our log, not the peer
        return f"internal error: {type(exc).__name__}"
    return str(exc)


async def reply_failure(reply: Reply, exc: Exception, what: str) -> None:
    """Answer *exc* with its stable wire code (`p2p.errors.code_of`) and `error_text`; one of
    ours (internal) goes to the log with its traceback, as "<what> failed"."""
    code = code_of(exc)
    if code is ErrorCode.INTERNAL:
        log.error("%s failed", what, exc_info=exc)
    await reply.fail(code, error_text(exc, code))


async def serve_on_worker(
    served: ServedModel, msg: wire.Generate, reply: Reply, identity: Identity | None = None
) -> None:
    """Generate for *msg* on *served*'s worker, streaming to *reply*; the `Done` carries a
    receipt signed by *identity* (none without one)."""
    try:
        request, dropped = cheat_request(
            generation_request(msg, served), served.cheat, str(served.worker.model_path)
        )
        generated: list[int] = []
        entries: list[float | None] = []  # the committed log-probabilities, per generated token
        async with served.worker.generate(committing(request)) as stream:
            async for item in stream:
                if isinstance(item, GenerationDone):
                    generated.extend(item.token_ids)
                    entries.extend([None] * len(item.token_ids))  # a stop string's: no entries
                    receipt = b""
                    if identity is not None:
                        try:
                            lps = commitments(entries, served.cheat)
                            probes = probe_commitments(item.probe_logprobs, served.cheat, dropped)
                            receipt = signed_receipt(
                                identity, served, msg, item, generated, lps, probes
                            )
                        except ValueError:  # a bug of ours: the answer still goes out, unsigned
                            log.exception("could not sign the receipt")
                    await reply.send(done_message(msg.id, item, receipt))
                else:
                    generated.extend(item.token_ids)
                    if len(item.logprobs) == len(item.token_ids):
                        entries.extend(e.logprob for e in item.logprobs)
                    else:
                        entries.extend([None] * len(item.token_ids))
                    asked = item.logprobs if request.logprobs >= 0 else ()
                    await reply.send(wire.Token(msg.id, item.text, item.token_ids, asked))
    except (SessionError, LocalProtocolError):
        raise
    except Exception as exc:
        await reply_failure(reply, exc, "generation")


async def serve_score(served: ServedModel, msg: wire.Score, reply: Reply) -> None:
    """Score *msg*'s tokens on *served*'s worker (a spot check of another node's output)."""
    try:
        request = attrs.evolve(generation_request(msg.request, served), replay_tokens=())
        try:
            score = ScoreRequest(request, msg.tokens, msg.top_logprobs, msg.only)
        except ValueError as exc:
            raise BadRequest(str(exc), field="tokens") from exc
        result = await served.worker.score(score)
        await reply.send(scores_message(msg.id, result))
    except (SessionError, LocalProtocolError):
        raise
    except Exception as exc:
        await reply_failure(reply, exc, "scoring")
