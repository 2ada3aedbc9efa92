"""What an embedding request and its answer are made of, and their bounds: the one definition.

Pure data (attrs, frozen, validated at construction), nothing of llama.cpp or trio, so the wire
(p2p/protocol/embed_wire.py) and the OpenAI route share these bounds with the worker
(inference/embedding_worker.py) and a value one layer accepts is never refused by the next.

Vectors are L2-normalised, as OpenAI's and llama-server's /v1/embeddings give them (a client
compares them by dot product), and kept as float32 little-endian bytes: what the wire carries
unchanged and what the API's base64 encoding is.
"""

from __future__ import annotations

import attrs
import numpy as np

# --- Bounds of one request, shared by the wire (p2p/protocol/embed_wire.py) and the API. ---
# OpenAI takes up to 2048 inputs; 128 keep the work and the answer of one request bounded.
MAX_EMBED_INPUTS = 128
# All inputs together, in UTF-8 bytes: half a session frame, as a generation's prompt.
MAX_EMBED_BYTES = 512 * 1024
# Widest vector a node may announce (the largest embedding models are 4096-8192 wide).
MAX_EMBED_DIMENSIONS = 16384
# Floats of one answer: inputs x dimensions x 4 bytes stays under 3/4 of a 1 MiB frame.
MAX_ANSWER_FLOATS = 192 * 1024
# llama.cpp's LLAMA_POOLING_TYPE_*: what a pooled vector is made of.
POOLING_NAMES = {1: "mean", 2: "cls", 3: "last"}


@attrs.frozen
class EmbeddingRequest:
    """Embed each of *inputs* (texts) as one vector."""

    inputs: tuple[str, ...]

    def __attrs_post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("input: at least one text to embed")
        if len(self.inputs) > MAX_EMBED_INPUTS:
            raise ValueError(f"input: at most {MAX_EMBED_INPUTS} texts per request")
        if not all(isinstance(t, str) for t in self.inputs):
            raise ValueError("input: texts (strings)")
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in self.inputs)
        if size > MAX_EMBED_BYTES:
            raise ValueError(f"input: at most {MAX_EMBED_BYTES} bytes of text in all")


@attrs.frozen
class EmbeddingResult:
    """One vector per input, in order: float32 little-endian bytes, L2-normalised."""

    vectors: tuple[bytes, ...]
    dimensions: int
    prompt_tokens: int
    seconds: float

    def floats(self, i: int) -> list[float]:
        return [float(x) for x in np.frombuffer(self.vectors[i], dtype="<f4")]


def max_inputs(dimensions: int) -> int:
    """The most inputs one answer of *dimensions*-wide vectors may hold (frame-bound)."""
    return max(1, min(MAX_EMBED_INPUTS, MAX_ANSWER_FLOATS // max(1, dimensions)))
