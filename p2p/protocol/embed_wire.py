"""The embedding request (`Embed`) and its answer (`Embeddings`): bounded, validated messages.

A gateway's `POST /v1/embeddings` becomes one `Embed` to a node serving the model (an embedding
GGUF, inference/embedding.py); the node answers with one `Embeddings`, its only and final message
(as `Scores` answers a `Score`), or an `Error`. Vectors travel as float32 little-endian bytes, one
`bytes` value per input: 4 bytes a dimension, a fraction of msgpack floats' 9, and the OpenAI
API's base64 encoding is these bytes as they are.

Bounds are the worker's own (inference/embedding.py): inputs per request, UTF-8 bytes in all,
dimensions, and floats per answer (inputs x dimensions) so that an answer fits one session frame.
A hostile node's answer is checked as strictly: one vector per input asked, each exactly
`dimensions` finite floats.

This file imports nothing of wire.py (wire.py imports it for its dispatch), so the field reader
is described by `FieldReader`, which wire's own satisfies.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

import attrs
import numpy as np

from inference.embedding import (
    MAX_ANSWER_FLOATS,
    MAX_EMBED_BYTES,
    MAX_EMBED_DIMENSIONS,
    MAX_EMBED_INPUTS,
)
from p2p.protocol.wire_fields import utf8_len

MAX_MODEL_CHARS = 256  # as a Generate's model (generate_wire.py)
MAX_EMBED_TOKENS = 2**31


class FieldReader(Protocol):
    """What the decoders need of wire_fields.py's `Fields`."""

    body: dict[Any, Any]

    def fail(self, field: str, reason: str) -> NoReturn: ...

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int: ...

    def number(self, key: str, lo: float, hi: float, default: float | None = None) -> float: ...

    def string(self, key: str, limit: int, default: str | None = None) -> str: ...

    def array(self, key: str, limit: int) -> list[Any]: ...


@attrs.frozen
class Embed:
    """Embed each of *inputs* with *model* (a name or sha256); *dimensions* 0 takes the model's
    width, any other value must equal it (nothing is truncated)."""

    id: int
    model: str
    inputs: tuple[str, ...]
    dimensions: int = 0


@attrs.frozen
class Embeddings:
    """One vector per input of the `Embed`, in order: float32 little-endian bytes."""

    id: int
    dimensions: int
    vectors: tuple[bytes, ...]
    prompt_tokens: int
    seconds: float = 0.0

    def floats(self, i: int) -> list[float]:
        return [float(x) for x in np.frombuffer(self.vectors[i], dtype="<f4")]


def embed_body(msg: Embed) -> dict[str, Any]:
    body = {"id": msg.id, "model": msg.model, "inputs": list(msg.inputs)}
    return {**body, "dimensions": msg.dimensions}


def embeddings_body(msg: Embeddings) -> dict[str, Any]:
    return {
        "id": msg.id,
        "dimensions": msg.dimensions,
        "vectors": list(msg.vectors),
        "prompt_tokens": msg.prompt_tokens,
        "seconds": msg.seconds,
    }


def decode_embed(f: FieldReader, request_id: int) -> Embed:
    model = f.string("model", MAX_MODEL_CHARS)
    raw = f.array("inputs", MAX_EMBED_INPUTS)
    if not raw:
        f.fail("inputs", "inputs: at least one text to embed")
    if not all(isinstance(t, str) for t in raw):
        f.fail("inputs", "inputs: texts (strings)")
    if sum(utf8_len(t) for t in raw) > MAX_EMBED_BYTES:
        f.fail("inputs", f"inputs: at most {MAX_EMBED_BYTES} bytes of text in all")
    dimensions = f.integer("dimensions", 0, MAX_EMBED_DIMENSIONS, 0)
    return Embed(request_id, model, tuple(raw), dimensions)


def decode_embeddings(f: FieldReader, request_id: int) -> Embeddings:
    dimensions = f.integer("dimensions", 1, MAX_EMBED_DIMENSIONS)
    raw = f.array("vectors", MAX_EMBED_INPUTS)
    if not raw or len(raw) * dimensions > MAX_ANSWER_FLOATS:
        f.fail("vectors", f"vectors: 1 to {MAX_ANSWER_FLOATS // dimensions} of them")
    for v in raw:
        if not isinstance(v, bytes) or len(v) != 4 * dimensions:
            f.fail("vectors", f"vectors: {dimensions} float32 values each, as bytes")
        if not np.isfinite(np.frombuffer(v, dtype="<f4")).all():
            f.fail("vectors", "vectors: finite numbers only")
    return Embeddings(
        request_id,
        dimensions,
        tuple(raw),
        f.integer("prompt_tokens", 0, MAX_EMBED_TOKENS),
        f.number("seconds", 0.0, 1e6, 0.0),
    )
