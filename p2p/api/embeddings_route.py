"""`POST /v1/embeddings`: OpenAI's embeddings endpoint, served by the network's embedding models.

The body is checked here, every parameter OpenAI's API takes either honoured or refused with a
400 naming it (issue #17's rule):

- `input`: a string or a list of strings (at most `MAX_EMBED_INPUTS`, `MAX_EMBED_BYTES` in all,
  none empty, as OpenAI refuses empty ones). Token arrays (a list of integers, or of lists of
  them) are refused: nodes embed text.
- `model`: the embedding model's name or sha256.
- `encoding_format`: "float" (lists of numbers) or "base64" (the float32 little-endian bytes of
  each vector, base64: what the wire carries, and what the `openai` client asks for by default).
- `dimensions`: accepted only equal to the model's width (nothing is truncated): the node
  refuses any other value with a 400 naming `dimensions`.
- `user`: a string, checked and passed on to no one (OpenAI's use of it is abuse monitoring).

It then goes into the network as one `wire.Embed` (p2p/client/embeddings.py) and comes back in
OpenAI's shape: {object: "list", data: [{object: "embedding", index, embedding}], model, usage}.
An input longer than the node's context is a 400 `context_length_exceeded`; a model that serves
no embeddings is a 400 saying so.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.responses import JSONResponse, Response

from inference.embedding import MAX_EMBED_BYTES, MAX_EMBED_DIMENSIONS, MAX_EMBED_INPUTS
from p2p.api.openai_errors import ApiError, bad_request, error_from_ask
from p2p.client.embeddings import embed
from p2p.client.network import AskError, Client
from p2p.metrics import NO_MODEL, Metrics, Outcome
from p2p.protocol import wire
from p2p.protocol.embed_wire import MAX_MODEL_CHARS
from p2p.protocol.wire_fields import utf8_len

ENCODINGS = ("float", "base64")
MAX_USER_CHARS = 256


def parse_embedding(body: object) -> tuple[wire.Embed, str]:
    """The `Embed` a body asks for and its encoding_format; a 400 naming the field if invalid."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_CHARS:
        raise bad_request("model: the name (or sha256) of an embedding model", "model")
    inputs = _inputs(body.get("input"))
    encoding = body.get("encoding_format", "float")
    if encoding is None:
        encoding = "float"
    if encoding not in ENCODINGS:
        raise bad_request("encoding_format: 'float' or 'base64'", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = 0
    elif (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= MAX_EMBED_DIMENSIONS
    ):
        raise bad_request(
            f"dimensions: a whole number from 1 to {MAX_EMBED_DIMENSIONS}", "dimensions"
        )
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_CHARS):
        raise bad_request(f"user: a string of at most {MAX_USER_CHARS} characters", "user")
    return wire.Embed(0, model, inputs, dimensions), str(encoding)


def _inputs(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = raw
    elif isinstance(raw, list) and raw and all(_is_tokens(t) for t in raw):
        raise bad_request("input: token arrays are not supported; send the text", "input")
    else:
        raise bad_request("input: a string or a list of strings", "input")
    if len(texts) > MAX_EMBED_INPUTS:
        raise bad_request(f"input: at most {MAX_EMBED_INPUTS} texts per request", "input")
    if any(not t for t in texts):
        raise bad_request("input: an empty string cannot be embedded", "input")
    if sum(utf8_len(t) for t in texts) > MAX_EMBED_BYTES:
        raise bad_request(f"input: at most {MAX_EMBED_BYTES} bytes of text in all", "input")
    return tuple(texts)


def _is_tokens(v: object) -> bool:
    """An integer (one token of a token array) or a list of integers."""
    if isinstance(v, list):
        return bool(v) and all(_is_tokens(t) and not isinstance(t, list) for t in v)
    return isinstance(v, int) and not isinstance(v, bool)


def embedding_body(answer: wire.Embeddings, model: str, encoding: str) -> dict[str, Any]:
    """OpenAI's embeddings response for *answer*."""
    data = []
    for i, vector in enumerate(answer.vectors):
        value: object
        if encoding == "base64":
            value = base64.b64encode(vector).decode("ascii")
        else:
            value = np.frombuffer(vector, dtype="<f4").tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


async def embeddings_response(client: Client, metrics: Metrics, body: object) -> Response:
    """Parse *body*, embed it through the network, answer in OpenAI's shape."""
    try:
        request, encoding = parse_embedding(body)
    except ApiError as exc:
        metrics.count_request(NO_MODEL, exc.outcome)
        raise
    try:
        answer, provider = await embed(client, request)
    except AskError as exc:
        error = error_from_ask(exc)
        metrics.count_request(request.model, error.outcome)
        raise error from None
    metrics.count_request(provider.model.name, Outcome.OK)
    headers = {"x-gpunet-provider": provider.record.peer_id}  # as generation answers carry
    return JSONResponse(embedding_body(answer, provider.model.name, encoding), headers=headers)
