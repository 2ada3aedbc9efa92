"""Session messages: msgpack maps with a type tag, validated as they become attrs objects.

One message per encrypted frame. Every message carries ``v`` (protocol version) and ``t`` (type);
requests and their answers carry ``id`` so several requests can share one connection.

Decoding reads the ``id`` first. A message whose id cannot be read raises `ProtocolError`: it
belongs to no request, and the session that carried it may be closed. A message whose id was read
but whose other fields are invalid raises `InvalidMessage`, which names the request and the field,
so the receiver answers `bad_request` for that one request and the others on the connection go on
(`Malformed` is the value the request state machines receive for it).

Every field is checked here, with the worker's own bounds (inference/generation.py, shared with
the OpenAI parser and `gpunet ask`) and the rules between fields (a replay shorter than
max_tokens, a prompt or messages but not both, sizes in UTF-8 bytes as frames count them), so a
`Generate` that decodes is one the worker accepts: no value can make the node raise while it
builds the request (issue #14, attack 3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import msgpack

# A signed receipt in `Done` is bounded by the largest valid one (crypto/receipts.py).
from crypto.receipts import MAX_RECEIPT_BYTES as MAX_RECEIPT_BYTES
from inference.generation import FINISH_REASONS
from inference.token_logprobs import TokenLogprob
from p2p.errors import ErrorCode
from p2p.protocol import control_wire, embed_wire, score_wire, share_wire
from p2p.protocol.control_wire import Control as Control
from p2p.protocol.control_wire import ControlReply as ControlReply
from p2p.protocol.embed_wire import Embed as Embed
from p2p.protocol.embed_wire import Embeddings as Embeddings

# The generation request and the request bounds (inference.generation's, the worker's own) live
# in generate_wire.py, the field readers in wire_fields.py; re-exported for the wire's users.
from p2p.protocol.generate_wire import *  # noqa: F403
from p2p.protocol.generate_wire import (
    MAX_PROMPT_BYTES,
    MAX_SEED,
    MAX_TOKENS_LIMIT,
    Generate,
    decode_generate,
    generate_body,
)
from p2p.protocol.generate_wire import (
    ChatMessage as ChatMessage,
)
from p2p.protocol.logprob_wire import (
    add_prompt_logprobs,
    decode_logprobs,
    decode_prompt_logprobs,
    encode_logprobs,
)
from p2p.protocol.score_wire import Scores as Scores
from p2p.protocol.share_wire import Chunk as Chunk
from p2p.protocol.share_wire import FetchChunk as FetchChunk
from p2p.protocol.share_wire import FetchManifest as FetchManifest
from p2p.protocol.share_wire import ManifestPage as ManifestPage
from p2p.protocol.wire_fields import Fields, is_int
from p2p.protocol.wire_fields import InvalidMessage as InvalidMessage
from p2p.protocol.wire_fields import Malformed as Malformed
from p2p.protocol.wire_fields import ProtocolError as ProtocolError

PROTOCOL_VERSION = 1

# The old name of MAX_PROMPT_BYTES (the limit was once counted in characters; frames count bytes).
MAX_PROMPT_CHARS = MAX_PROMPT_BYTES
MAX_TEXT_CHARS = 64 * 1024
# Ids are integers a JSON number can hold exactly (2**53), so tools that log them lose nothing.
MAX_ID = 2**53
MAX_ERROR_MESSAGE_CHARS = 4096


@attrs.frozen
class Token:
    id: int
    text: str
    token_ids: tuple[int, ...] = ()  # the tokens whose text this chunk releases
    # One entry per token id when the request asked for logprobs (p2p/protocol/logprob_wire.py).
    logprobs: tuple[TokenLogprob, ...] = ()


@attrs.frozen
class Done:
    id: int
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    decode_tok_s: float
    # Generated tokens no Token message carried (held back by a stop string, then dropped):
    # the Token messages' ids plus these are every token the node generated.
    token_ids: tuple[int, ...] = ()
    cached_tokens: int = 0  # prompt tokens the node reused from its prompt-prefix cache
    # The node's signed receipt of this segment (crypto/receipts.py encoding; b"" from a node
    # that signs none) and the seed its sampler used, so the client can have the run re-checked.
    receipt: bytes = b""
    seed: int | None = None
    # The prompt's entries when the request asked for them (p2p/protocol/logprob_wire.py).
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    prompt_first: bytes = b""


@attrs.frozen
class Error:
    id: int
    code: ErrorCode
    message: str


@attrs.frozen
class Cancel:
    id: int


@attrs.frozen
class Ping:
    id: int


@attrs.frozen
class Pong:
    id: int


@attrs.frozen
class Score:
    """Score `tokens` as the continuation of `request`'s prompt (or chat) under its sampler
    settings and seed, answered by `score_wire.Scores` (a spot check's verifier; `request`'s
    max_tokens and replay_tokens are not used)."""

    id: int
    request: Generate
    tokens: tuple[int, ...]
    top_logprobs: int = 0
    only: tuple[int, ...] = ()  # indices into tokens to score, increasing; empty: all of them


# What a client may start a request with, and the messages that end one (besides `Error`, and
# `Done` for a generation): a Score, an Embed, a share fetch and a control op each get exactly
# one final answer.
Request = Generate | Score | Embed | FetchManifest | FetchChunk | Control
OneAnswer = Scores | Embeddings | ManifestPage | Chunk | ControlReply
Final = Done | Error | OneAnswer
Answer = Token | Final

Message = Request | Answer | Cancel | Ping | Pong
Received = Message | Malformed

_TAGS: dict[type, str] = {
    Generate: "generate",
    Token: "token",
    Done: "done",
    Error: "error",
    Cancel: "cancel",
    Ping: "ping",
    Pong: "pong",
    Score: "score",
    Scores: "scores",
    Embed: "embed",  # p2p/protocol/embed_wire.py
    Embeddings: "embeddings",
    FetchManifest: "fetch_manifest",  # p2p/protocol/share_wire.py
    ManifestPage: "manifest_page",
    FetchChunk: "fetch_chunk",
    Chunk: "chunk",
    Control: "control",  # p2p/protocol/control_wire.py
    ControlReply: "control_reply",
}

_BODIES: dict[type, Callable[[Any], dict[str, Any]]] = {
    Score: lambda m: _score_body(m),
    Scores: score_wire.scores_body,
    Generate: generate_body,
    Embed: embed_wire.embed_body,
    Embeddings: embed_wire.embeddings_body,
    FetchManifest: share_wire.fetch_manifest_body,
    ManifestPage: share_wire.manifest_page_body,
    FetchChunk: share_wire.fetch_chunk_body,
    Chunk: share_wire.chunk_body,
    Control: control_wire.control_body,
    ControlReply: control_wire.control_reply_body,
}


def encode(msg: Message) -> bytes:
    if type(msg) is Token:  # one per generated token: skip attrs.asdict's generic walk
        token: dict[str, Any] = {"id": msg.id, "text": msg.text, "token_ids": list(msg.token_ids)}
        token["v"], token["t"] = PROTOCOL_VERSION, "token"
        if msg.logprobs:
            token["logprobs"] = encode_logprobs(msg.logprobs)
        packed_token: bytes = msgpack.packb(token, use_bin_type=True)
        return packed_token
    body_of = _BODIES.get(type(msg))
    if body_of is not None:
        return _pack(body_of(msg), msg)
    body: dict[str, Any] = attrs.asdict(msg)
    if isinstance(msg, Token | Done):
        body["token_ids"] = list(msg.token_ids)
    if isinstance(msg, Done):
        add_prompt_logprobs(body, msg.prompt_logprobs, msg.prompt_first)
    if isinstance(msg, Error):
        body["code"] = msg.code.value
    return _pack(body, msg)


def _pack(body: dict[str, Any], msg: Message) -> bytes:
    body["v"] = PROTOCOL_VERSION
    body["t"] = _TAGS[type(msg)]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _score_body(msg: Score) -> dict[str, Any]:
    request = msgpack.unpackb(encode(msg.request), raw=False)
    for key in ("id", "v", "t"):
        del request[key]
    body = {"id": msg.id, "request": request, "tokens": list(msg.tokens), "top": msg.top_logprobs}
    return {**body, "only": list(msg.only)}


def decode(data: bytes) -> Message:
    """The message in *data*. Raises `InvalidMessage` when its id was readable, else
    `ProtocolError`."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError("message is not valid msgpack") from exc
    if not isinstance(body, dict):
        raise ProtocolError("message is not a map")
    rid = body.get("id")
    if not is_int(rid, 0, MAX_ID):
        raise ProtocolError("id must be a non-negative integer", field="id")
    assert isinstance(rid, int)
    tag = body.get("t")
    fields = Fields(body, rid, tag if isinstance(tag, str) else None)
    if body.get("v") != PROTOCOL_VERSION:
        fields.fail("v", f"unsupported protocol version {body.get('v')!r:.20}")
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        fields.fail("t", f"unknown message type {tag!r:.40}")
    return decoder(fields)


def decode_received(data: bytes) -> Received:
    """Like `decode`, but a message invalid past its id comes back as `Malformed`."""
    try:
        return decode(data)
    except InvalidMessage as exc:
        return exc.malformed


def _token(f: Fields) -> Token:
    ids = f.token_ids("token_ids", MAX_TEXT_CHARS)
    return Token(f.id, f.string("text", MAX_TEXT_CHARS), ids, decode_logprobs(f, ids))


def _done(f: Fields) -> Done:
    finish = f.string("finish_reason", 32)
    if finish not in FINISH_REASONS:
        f.fail("finish_reason", f"finish_reason must be one of {', '.join(FINISH_REASONS)}")
    return Done(
        f.id,
        finish,
        f.integer("prompt_tokens", 0, 2**31),
        f.integer("completion_tokens", 0, 2**31),
        f.number("ttft_s", 0, 1e6),
        f.number("decode_tok_s", 0, 1e9),
        f.token_ids("token_ids", MAX_TOKENS_LIMIT),
        f.integer("cached_tokens", 0, 2**31, 0),
        _receipt(f),
        None if f.body.get("seed") is None else f.integer("seed", 0, MAX_SEED),
        *decode_prompt_logprobs(f),
    )


def _receipt(f: Fields) -> bytes:
    v = f.body.get("receipt", b"")
    if not isinstance(v, bytes) or len(v) > MAX_RECEIPT_BYTES:
        f.fail("receipt", f"receipt must be at most {MAX_RECEIPT_BYTES} bytes")
    return v


def _score(f: Fields) -> Score:
    """The scored request is a Generate's fields in a map (its bounds and rules, named as its
    fields); tokens x alternatives are bounded so the answer fits one frame."""
    inner = f.body.get("request")
    if not isinstance(inner, dict):
        f.fail("request", "request must be a map of a generate request's fields")
    request = attrs.evolve(decode_generate(Fields(inner, f.id, f.tag)), id=0)  # its id is unused
    tokens = f.token_ids("tokens", score_wire.MAX_SCORE_TOKENS)
    if not tokens:
        f.fail("tokens", "tokens: at least one token to score")
    top = f.integer("top", 0, score_wire.MAX_TOP_LOGPROBS, 0)
    if len(tokens) * max(top, 1) > score_wire.MAX_SCORE_CELLS:
        f.fail("top", f"tokens x top over {score_wire.MAX_SCORE_CELLS}: ask for fewer")
    return Score(f.id, request, tokens, top, score_wire.decode_only(f, len(tokens)))


def _error(f: Fields) -> Error:
    code = ErrorCode.from_wire(f.string("code", 64))
    return Error(f.id, code, f.string("message", MAX_ERROR_MESSAGE_CHARS))


_DECODERS: dict[str, Callable[[Fields], Message]] = {
    "generate": decode_generate,
    "token": _token,
    "done": _done,
    "error": _error,
    "cancel": lambda f: Cancel(f.id),
    "ping": lambda f: Ping(f.id),
    "pong": lambda f: Pong(f.id),
    "score": _score,
    "scores": lambda f: score_wire.decode_scores(f, f.id),
    "embed": lambda f: embed_wire.decode_embed(f, f.id),
    "embeddings": lambda f: embed_wire.decode_embeddings(f, f.id),
    "fetch_manifest": lambda f: share_wire.decode_fetch_manifest(f, f.id),
    "manifest_page": lambda f: share_wire.decode_manifest_page(f, f.id),
    "fetch_chunk": lambda f: share_wire.decode_fetch_chunk(f, f.id),
    "chunk": lambda f: share_wire.decode_chunk(f, f.id),
    "control": lambda f: control_wire.decode_control(f, f.id),
    "control_reply": lambda f: control_wire.decode_control_reply(f, f.id),
}
