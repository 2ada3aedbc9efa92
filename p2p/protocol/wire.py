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

import math
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import msgpack

# A signed receipt in `Done` is bounded by the largest valid one (crypto/receipts.py).
from crypto.receipts import MAX_RECEIPT_BYTES as MAX_RECEIPT_BYTES

# The request bounds are inference.generation's (the worker's own), re-exported for the wire's
# users: one definition, so what this decoder accepts the worker never refuses.
from inference.generation import DEFAULT_MIN_P as DEFAULT_MIN_P
from inference.generation import DEFAULT_PENALTY_LAST_N as DEFAULT_PENALTY_LAST_N
from inference.generation import DEFAULT_TOP_K as DEFAULT_TOP_K
from inference.generation import FINISH_REASONS
from inference.generation import MAX_FREQUENCY_PENALTY as MAX_FREQUENCY_PENALTY
from inference.generation import MAX_LOGIT_BIAS as MAX_LOGIT_BIAS
from inference.generation import MAX_LOGIT_BIAS_ENTRIES as MAX_LOGIT_BIAS_ENTRIES
from inference.generation import MAX_PENALTY_LAST_N as MAX_PENALTY_LAST_N
from inference.generation import MAX_PRESENCE_PENALTY as MAX_PRESENCE_PENALTY
from inference.generation import MAX_PROMPT_BYTES as MAX_PROMPT_BYTES
from inference.generation import MAX_REPEAT_PENALTY as MAX_REPEAT_PENALTY
from inference.generation import MAX_SEED as MAX_SEED
from inference.generation import MAX_STOP_CHARS as MAX_STOP_CHARS
from inference.generation import MAX_STOP_STRINGS as MAX_STOP_STRINGS
from inference.generation import MAX_TEMPERATURE as MAX_TEMPERATURE
from inference.generation import MAX_TOKEN_ID as MAX_TOKEN_ID
from inference.generation import MAX_TOKENS_LIMIT as MAX_TOKENS_LIMIT
from inference.generation import MAX_TOP_K as MAX_TOP_K
from inference.generation import MIN_REPEAT_PENALTY as MIN_REPEAT_PENALTY
from inference.generation import MIN_TOP_P as MIN_TOP_P
from inference.generation import MIN_TYPICAL_P as MIN_TYPICAL_P
from p2p.errors import BadRequest, ErrorCode
from p2p.protocol import score_wire
from p2p.protocol.score_wire import Scores as Scores

PROTOCOL_VERSION = 1

# The old name of MAX_PROMPT_BYTES (the limit was once counted in characters; frames count bytes).
MAX_PROMPT_CHARS = MAX_PROMPT_BYTES
MAX_TEXT_CHARS = 64 * 1024
MAX_MESSAGES = 256
CHAT_ROLES = ("system", "user", "assistant")
# Ids are integers a JSON number can hold exactly (2**53), so tools that log them lose nothing.
MAX_ID = 2**53
MAX_MODEL_CHARS = 256
MAX_ERROR_MESSAGE_CHARS = 4096


class ProtocolError(BadRequest, ValueError):
    """The peer sent something that is not a valid message (`field` names the culprit, if one).

    Raised as such only when the message's id could not be read; see `InvalidMessage`."""


class InvalidMessage(ProtocolError):
    """A message whose `id` was read but whose `field` is invalid: an error of that one request."""

    def __init__(self, message: str, *, request_id: int, field: str, tag: str | None) -> None:
        super().__init__(message, field=field)
        self.request_id = request_id
        self.tag = tag

    @property
    def malformed(self) -> Malformed:
        return Malformed(self.request_id, self.tag, self.field or "?", str(self))


@attrs.frozen
class ChatMessage:
    role: str
    content: str


@attrs.frozen
class Generate:
    """A completion of `prompt`, or, when `messages` is not empty, a chat reply to them (the node
    renders them with the model's chat template; `prompt` is then empty)."""

    id: int
    model: str
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    messages: tuple[ChatMessage, ...] = ()
    # Failover by exact replay: tokens another node already generated for this request. The node
    # prefills the prompt as usual, feeds these one per decode step, then continues; max_tokens
    # counts them, so the total matches an uninterrupted run.
    replay_tokens: tuple[int, ...] = ()
    # Served alone, never batched with other requests: bit-identical to any other reproducible
    # run on the same build and hardware (what verification compares), at the cost of throughput.
    reproducible: bool = False
    # The sampler chain's other parameters (inference.generation.GenerationRequest). A peer
    # that sends none of them (an older one) gets the chain every request had before: top-k 40,
    # min-p 0.05, no typical-p, no penalties, no bias.
    top_k: int = DEFAULT_TOP_K
    min_p: float = DEFAULT_MIN_P
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = DEFAULT_PENALTY_LAST_N
    # (token id, bias) pairs, sent as a list of pairs (msgpack map keys are strings here).
    logit_bias: tuple[tuple[int, float], ...] = ()
    ignore_eos: bool = False


@attrs.frozen
class Token:
    id: int
    text: str
    token_ids: tuple[int, ...] = ()  # the tokens whose text this chunk releases


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


Message = Generate | Token | Done | Error | Cancel | Ping | Pong | Score | Scores


@attrs.frozen
class Malformed:
    """A received message whose id was readable but not the rest (`InvalidMessage` as a value).

    Never encoded: it exists on the receiving side only, so that the request state machines can
    answer for that id instead of the session closing."""

    id: int
    tag: str | None  # the type it claimed (``t``), when that was a string
    field: str
    reason: str


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
}


def encode(msg: Message) -> bytes:
    if type(msg) is Token:  # one per generated token: skip attrs.asdict's generic walk
        token: dict[str, Any] = {"id": msg.id, "text": msg.text, "token_ids": list(msg.token_ids)}
        token["v"], token["t"] = PROTOCOL_VERSION, "token"
        packed_token: bytes = msgpack.packb(token, use_bin_type=True)
        return packed_token
    if isinstance(msg, Score):
        return _pack(_score_body(msg), msg)
    if isinstance(msg, Scores):
        return _pack(score_wire.scores_body(msg), msg)
    body: dict[str, Any] = attrs.asdict(msg)
    if isinstance(msg, Generate):
        body["stop"] = list(msg.stop)
        body["messages"] = [[m.role, m.content] for m in msg.messages]
        body["replay_tokens"] = list(msg.replay_tokens)
        body["logit_bias"] = [[token, bias] for token, bias in msg.logit_bias]
    if isinstance(msg, Token | Done):
        body["token_ids"] = list(msg.token_ids)
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
    if not _is_int(rid, 0, MAX_ID):
        raise ProtocolError("id must be a non-negative integer", field="id")
    assert isinstance(rid, int)
    tag = body.get("t")
    fields = _Fields(body, rid, tag if isinstance(tag, str) else None)
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


def _is_int(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


class _Fields:
    """Typed reads of one message's fields; each failure names the field and the request."""

    def __init__(self, body: dict[Any, Any], rid: int, tag: str | None) -> None:
        self.body = body
        self.id = rid
        self.tag = tag

    def fail(self, field: str, reason: str) -> NoReturn:
        raise InvalidMessage(reason, request_id=self.id, field=field, tag=self.tag)

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        v = self.body.get(key, default)
        if not _is_int(v, lo, hi):
            self.fail(key, f"{key} must be an integer from {lo} to {hi}")
        assert isinstance(v, int)
        return v

    def number(self, key: str, lo: float, hi: float, default: float | None = None) -> float:
        v = self.body.get(key, default)
        number = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not (number and lo <= float(v) <= hi):  # type: ignore[arg-type]
            self.fail(key, f"{key} must be a number from {lo:g} to {hi:g}")
        return float(v)  # type: ignore[arg-type]

    def string(self, key: str, limit: int, default: str | None = None) -> str:
        return self.text(self.body.get(key, default), limit, key)

    def text(self, v: object, limit: int, field: str) -> str:
        if not isinstance(v, str) or len(v) > limit:
            self.fail(field, f"{field} must be a string of at most {limit} characters")
        return v

    def flag(self, key: str, default: bool) -> bool:
        v = self.body.get(key, default)
        if not isinstance(v, bool):
            self.fail(key, f"{key} must be true or false")
        return v

    def array(self, key: str, limit: int) -> list[Any]:
        v = self.body.get(key, [])
        if not isinstance(v, list) or len(v) > limit:
            self.fail(key, f"{key}: a list of at most {limit}")
        return v

    def token_ids(self, key: str, limit: int) -> tuple[int, ...]:
        raw = self.array(key, limit)
        for t in raw:
            if not _is_int(t, 0, 2**31 - 1):
                self.fail(key, f"{key}: token ids are non-negative integers")
        return tuple(raw)


def _generate(f: _Fields) -> Generate:
    """Every field within the worker's own bounds (inference.generation), and the rules between
    fields, so that what passes here is never refused by `GenerationRequest` later."""
    stop = f.array("stop", MAX_STOP_STRINGS)
    seed = f.body.get("seed")
    messages = tuple(_chat_message(f, m) for m in f.array("messages", MAX_MESSAGES))
    if sum(_utf8_len(m.content) for m in messages) > MAX_PROMPT_BYTES:
        f.fail("messages", f"messages: contents over {MAX_PROMPT_BYTES} bytes (UTF-8) together")
    prompt = f.string("prompt", MAX_PROMPT_BYTES)
    if _utf8_len(prompt) > MAX_PROMPT_BYTES:
        f.fail("prompt", f"prompt must be at most {MAX_PROMPT_BYTES} bytes (UTF-8)")
    if messages and prompt:
        f.fail("prompt", "prompt must be empty when messages are given")
    max_tokens = f.integer("max_tokens", 1, MAX_TOKENS_LIMIT, 128)
    replay = f.token_ids("replay_tokens", MAX_TOKENS_LIMIT)
    if len(replay) >= max_tokens:
        f.fail(
            "replay_tokens",
            f"replay_tokens holds {len(replay)} tokens: nothing left to generate within "
            f"max_tokens {max_tokens}",
        )
    return Generate(
        id=f.id,
        model=f.string("model", MAX_MODEL_CHARS),
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=f.number("temperature", 0.0, MAX_TEMPERATURE, 0.0),
        top_p=f.number("top_p", MIN_TOP_P, 1.0, 1.0),
        seed=None if seed is None else f.integer("seed", 0, MAX_SEED),
        stop=tuple(f.text(s, MAX_STOP_CHARS, "stop") for s in stop if s != ""),
        messages=messages,
        replay_tokens=replay,
        reproducible=f.flag("reproducible", False),
        top_k=f.integer("top_k", 0, MAX_TOP_K, DEFAULT_TOP_K),
        min_p=f.number("min_p", 0.0, 1.0, DEFAULT_MIN_P),
        typical_p=f.number("typical_p", MIN_TYPICAL_P, 1.0, 1.0),
        repeat_penalty=f.number("repeat_penalty", MIN_REPEAT_PENALTY, MAX_REPEAT_PENALTY, 1.0),
        presence_penalty=f.number(
            "presence_penalty", -MAX_PRESENCE_PENALTY, MAX_PRESENCE_PENALTY, 0.0
        ),
        frequency_penalty=f.number(
            "frequency_penalty", -MAX_FREQUENCY_PENALTY, MAX_FREQUENCY_PENALTY, 0.0
        ),
        penalty_last_n=f.integer("penalty_last_n", 0, MAX_PENALTY_LAST_N, DEFAULT_PENALTY_LAST_N),
        logit_bias=_logit_bias(f),
        ignore_eos=f.flag("ignore_eos", False),
    )


def _logit_bias(f: _Fields) -> tuple[tuple[int, float], ...]:
    """[[token id, bias], ...] with distinct token ids and biases within ±MAX_LOGIT_BIAS."""
    pairs = []
    for raw in f.array("logit_bias", MAX_LOGIT_BIAS_ENTRIES):
        if not (
            isinstance(raw, list)
            and len(raw) == 2
            and _is_int(raw[0], 0, MAX_TOKEN_ID)
            and isinstance(raw[1], int | float)
            and not isinstance(raw[1], bool)
            and -MAX_LOGIT_BIAS <= raw[1] <= MAX_LOGIT_BIAS  # NaN fails
        ):
            f.fail(
                "logit_bias",
                f"logit_bias: [token id, bias] pairs, biases from {-MAX_LOGIT_BIAS:g} to "
                f"{MAX_LOGIT_BIAS:g}",
            )
        pairs.append((raw[0], float(raw[1])))
    if len({token for token, _ in pairs}) != len(pairs):
        f.fail("logit_bias", "logit_bias: each token id at most once")
    return tuple(pairs)


def _utf8_len(text: str) -> int:
    """Bytes of *text* in UTF-8; a lone surrogate (msgpack can carry one) counts as 3."""
    return len(text.encode("utf-8", "surrogatepass"))


def _chat_message(f: _Fields, raw: object) -> ChatMessage:
    if not isinstance(raw, list) or len(raw) != 2:
        f.fail("messages", "messages: each is [role, content]")
    role = f.text(raw[0], 16, "messages")
    if role not in CHAT_ROLES:
        f.fail("messages", f"message role must be one of {', '.join(CHAT_ROLES)}")
    return ChatMessage(role, f.text(raw[1], MAX_PROMPT_BYTES, "messages"))


def _token(f: _Fields) -> Token:
    ids = f.token_ids("token_ids", MAX_TEXT_CHARS)
    return Token(f.id, f.string("text", MAX_TEXT_CHARS), ids)


def _done(f: _Fields) -> Done:
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
    )


def _receipt(f: _Fields) -> bytes:
    v = f.body.get("receipt", b"")
    if not isinstance(v, bytes) or len(v) > MAX_RECEIPT_BYTES:
        f.fail("receipt", f"receipt must be at most {MAX_RECEIPT_BYTES} bytes")
    return v


def _score(f: _Fields) -> Score:
    """The scored request is a Generate's fields in a map (its bounds and rules, named as its
    fields); tokens x alternatives are bounded so the answer fits one frame."""
    inner = f.body.get("request")
    if not isinstance(inner, dict):
        f.fail("request", "request must be a map of a generate request's fields")
    request = attrs.evolve(_generate(_Fields(inner, f.id, f.tag)), id=0)  # its id is unused
    tokens = f.token_ids("tokens", score_wire.MAX_SCORE_TOKENS)
    if not tokens:
        f.fail("tokens", "tokens: at least one token to score")
    top = f.integer("top", 0, score_wire.MAX_TOP_LOGPROBS, 0)
    if len(tokens) * max(top, 1) > score_wire.MAX_SCORE_CELLS:
        f.fail("top", f"tokens x top over {score_wire.MAX_SCORE_CELLS}: ask for fewer")
    return Score(f.id, request, tokens, top, score_wire.decode_only(f, len(tokens)))


def _error(f: _Fields) -> Error:
    code = ErrorCode.from_wire(f.string("code", 64))
    return Error(f.id, code, f.string("message", MAX_ERROR_MESSAGE_CHARS))


_DECODERS: dict[str, Callable[[_Fields], Message]] = {
    "generate": _generate,
    "token": _token,
    "done": _done,
    "error": _error,
    "cancel": lambda f: Cancel(f.id),
    "ping": lambda f: Ping(f.id),
    "pong": lambda f: Pong(f.id),
    "score": _score,
    "scores": lambda f: score_wire.decode_scores(f, f.id),
}
