"""Session messages: msgpack maps with a type tag, validated as they become attrs objects.

One message per encrypted frame. Every message carries ``v`` (protocol version) and ``t`` (type);
requests and their answers carry ``id`` so several requests can share one connection.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import msgpack

PROTOCOL_VERSION = 1

MAX_PROMPT_CHARS = 512 * 1024
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256
MAX_TOKENS_LIMIT = 32768
MAX_TEXT_CHARS = 64 * 1024


class ErrorCode:
    """Stable codes clients act on (retry elsewhere, give up, fix the request)."""

    UNKNOWN_MODEL = "unknown_model"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    SHUTTING_DOWN = "shutting_down"
    BAD_REQUEST = "bad_request"
    TOO_LONG = "too_long"
    INTERNAL = "internal"


class ProtocolError(ValueError):
    """The peer sent something that is not a valid message."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ProtocolError(what)


def _int(v: object, lo: int, hi: int, what: str) -> int:
    _check(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, what)
    assert isinstance(v, int)
    return v


def _float(v: object, lo: float, hi: float, what: str) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    _check(ok and lo <= float(v) <= hi, what)  # type: ignore[arg-type]
    return float(v)  # type: ignore[arg-type]


def _str(v: object, limit: int, what: str) -> str:
    _check(isinstance(v, str) and len(v) <= limit, what)
    assert isinstance(v, str)
    return v


MAX_MESSAGES = 256
CHAT_ROLES = ("system", "user", "assistant")


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


@attrs.frozen
class Error:
    id: int
    code: str
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


Message = Generate | Token | Done | Error | Cancel | Ping | Pong

_TAGS: dict[type, str] = {
    Generate: "generate",
    Token: "token",
    Done: "done",
    Error: "error",
    Cancel: "cancel",
    Ping: "ping",
    Pong: "pong",
}


def encode(msg: Message) -> bytes:
    if type(msg) is Token:  # one per generated token: skip attrs.asdict's generic walk
        token: dict[str, Any] = {"id": msg.id, "text": msg.text, "token_ids": list(msg.token_ids)}
        token["v"], token["t"] = PROTOCOL_VERSION, "token"
        packed_token: bytes = msgpack.packb(token, use_bin_type=True)
        return packed_token
    body: dict[str, Any] = attrs.asdict(msg)
    if isinstance(msg, Generate):
        body["stop"] = list(msg.stop)
        body["messages"] = [[m.role, m.content] for m in msg.messages]
        body["replay_tokens"] = list(msg.replay_tokens)
    if isinstance(msg, Token | Done):
        body["token_ids"] = list(msg.token_ids)
    body["v"] = PROTOCOL_VERSION
    body["t"] = _TAGS[type(msg)]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def decode(data: bytes) -> Message:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError("message is not valid msgpack") from exc
    _check(isinstance(body, dict), "message is not a map")
    _check(body.get("v") == PROTOCOL_VERSION, f"unsupported protocol version {body.get('v')!r}")
    tag = body.get("t")
    rid = _int(body.get("id"), 0, 2**53, "id must be a non-negative integer")
    if tag == "generate":
        return _generate(body, rid)
    if tag == "token":
        ids = _token_ids(body.get("token_ids", []), MAX_TEXT_CHARS, "token_ids")
        return Token(rid, _str(body.get("text"), MAX_TEXT_CHARS, "text"), ids)
    if tag == "done":
        return Done(
            rid,
            _str(body.get("finish_reason"), 32, "finish_reason"),
            _int(body.get("prompt_tokens"), 0, 2**31, "prompt_tokens"),
            _int(body.get("completion_tokens"), 0, 2**31, "completion_tokens"),
            _float(body.get("ttft_s"), 0, 1e6, "ttft_s"),
            _float(body.get("decode_tok_s"), 0, 1e9, "decode_tok_s"),
            _token_ids(body.get("token_ids", []), MAX_TOKENS_LIMIT, "token_ids"),
            _int(body.get("cached_tokens", 0), 0, 2**31, "cached_tokens"),
        )
    if tag == "error":
        return Error(rid, _str(body.get("code"), 64, "code"), _str(body.get("message"), 4096, "m"))
    if tag == "cancel":
        return Cancel(rid)
    if tag == "ping":
        return Ping(rid)
    if tag == "pong":
        return Pong(rid)
    raise ProtocolError(f"unknown message type {tag!r:.40}")


def _generate(body: dict[str, Any], rid: int) -> Generate:
    stop = body.get("stop", [])
    _check(isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS, "stop: too many strings")
    seed = body.get("seed")
    raw_messages = body.get("messages", [])
    _check(
        isinstance(raw_messages, list) and len(raw_messages) <= MAX_MESSAGES,
        f"messages: at most {MAX_MESSAGES}",
    )
    messages = tuple(_chat_message(m) for m in raw_messages)
    _check(
        sum(len(m.content) for m in messages) <= MAX_PROMPT_CHARS, "messages: too long (≤ 512 KiB)"
    )
    return Generate(
        id=rid,
        model=_str(body.get("model"), 256, "model must be a string"),
        prompt=_str(body.get("prompt"), MAX_PROMPT_CHARS, "prompt must be a string (≤ 512 KiB)"),
        max_tokens=_int(body.get("max_tokens", 128), 1, MAX_TOKENS_LIMIT, "max_tokens"),
        temperature=_float(body.get("temperature", 0.0), 0.0, 10.0, "temperature"),
        top_p=_float(body.get("top_p", 1.0), 1e-6, 1.0, "top_p must be in (0, 1]"),
        seed=None if seed is None else _int(seed, 0, 2**32 - 1, "seed"),
        stop=tuple(_str(s, MAX_STOP_CHARS, "stop string") for s in stop if s != ""),
        messages=messages,
        replay_tokens=_token_ids(body.get("replay_tokens", []), MAX_TOKENS_LIMIT, "replay_tokens"),
        reproducible=_bool(body.get("reproducible", False), "reproducible must be true or false"),
    )


def _bool(raw: object, what: str) -> bool:
    _check(isinstance(raw, bool), what)
    return bool(raw)


def _token_ids(raw: object, limit: int, what: str) -> tuple[int, ...]:
    _check(isinstance(raw, list) and len(raw) <= limit, f"{what}: at most {limit} token ids")
    assert isinstance(raw, list)
    for t in raw:
        _check(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31,
            f"{what}: token ids are non-negative integers",
        )
    return tuple(raw)


def _chat_message(raw: object) -> ChatMessage:
    _check(isinstance(raw, list) and len(raw) == 2, "messages: each is [role, content]")
    assert isinstance(raw, list)
    role = _str(raw[0], 16, "message role")
    _check(role in CHAT_ROLES, f"message role must be one of {', '.join(CHAT_ROLES)}")
    return ChatMessage(role, _str(raw[1], MAX_PROMPT_CHARS, "message content"))
