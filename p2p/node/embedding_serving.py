"""Serving one admitted `Embed` request on a model's embedding worker: one `Embeddings` back.

The request was admitted as a generation is (p2p/node/runtime.py: the node's caps and the
per-peer fair shares of p2p/protocol/admission.py), so embeddings cost a requester a slot like any
request. Here its model must be an embedding model (`ServedModel.worker` an `EmbeddingWorker`,
p2p/node/models.py), its `dimensions` that model's width or 0, and its inputs few enough that the
answer fits one frame (`inference.embedding.max_inputs`); every refusal names the field, and
every failure becomes a wire error through `p2p.errors.code_of` (an input longer than the
context is `too_long`).
"""

from __future__ import annotations

from inference.embedding import EmbeddingRequest, max_inputs
from inference.embedding_worker import EmbeddingWorker
from p2p.errors import BadRequest
from p2p.node.connection import Reply
from p2p.node.models import ServedModel
from p2p.node.serving import reply_failure
from p2p.protocol import wire
from p2p.protocol.request_events import LocalProtocolError
from p2p.session.secure import SessionError


def embedding_request(
    msg: wire.Embed, served: ServedModel
) -> tuple[EmbeddingWorker, EmbeddingRequest]:
    """The worker and the request *msg* asks of *served*; BadRequest naming what does not fit."""
    worker, name = served.worker, served.info.name
    if not isinstance(worker, EmbeddingWorker):
        raise BadRequest(f"model {name} does not serve embeddings", field="model")
    if msg.dimensions and msg.dimensions != worker.dimensions:
        raise BadRequest(
            f"dimensions: {name} gives {worker.dimensions}-dimensional vectors only "
            "(leave dimensions out, or send that)",
            field="dimensions",
        )
    most = max_inputs(worker.dimensions)
    if len(msg.inputs) > most:
        raise BadRequest(
            f"input: at most {most} texts per request for {name}'s {worker.dimensions} dimensions",
            field="input",
        )
    try:
        return worker, EmbeddingRequest(msg.inputs)
    except ValueError as exc:
        raise BadRequest(str(exc), field="input") from exc


async def serve_embed(served: ServedModel, msg: wire.Embed, reply: Reply) -> None:
    """Embed *msg*'s inputs on *served*'s worker and answer with the vectors."""
    try:
        worker, request = embedding_request(msg, served)
        result = await worker.embed(request)
        await reply.send(
            wire.Embeddings(
                msg.id, result.dimensions, result.vectors, result.prompt_tokens, result.seconds
            )
        )
    except (SessionError, LocalProtocolError):
        raise
    except Exception as exc:
        await reply_failure(reply, exc, "embedding")
