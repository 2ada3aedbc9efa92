"""OpenAI request bodies into `wire.Generate`: validation and defaults.

Pure functions, no I/O: each check of a /v1 request body can be tested with a plain call, and the
ASGI code in p2p/api/app.py only reads the body and hands it here. A refused parameter is a
`bad_request` (p2p/api/openai_errors.py) naming it.

Sizes are counted as the session counts them, in UTF-8 bytes: a prompt (or the messages of a
chat) over the wire's prompt limit is a 400 `too_long` (OpenAI's `context_length_exceeded`),
and the encoded request must fit one session frame (`crypto.secure_session.MAX_FRAME_PLAINTEXT`)
— counted in characters, a prompt of 3-byte characters passed the gateway and broke the frame
limit in the session (a 500). Every string must be encodable as UTF-8 (JSON allows lone
surrogates such as "\ud800"; msgpack does not). No body, however shaped, gets a 500 here
(tests/p2p/api/test_gateway_limits.py fuzzes it).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from crypto.secure_session import MAX_FRAME_PLAINTEXT
from p2p.api.openai_errors import ApiError, bad_request
from p2p.errors import ErrorCode
from p2p.protocol import wire

# OpenAI's documented default for /v1/completions; chat has no documented number (it runs to the
# context's end), which on a volunteer's small context would fail more often than help.
DEFAULT_COMPLETION_MAX_TOKENS = 16
DEFAULT_CHAT_MAX_TOKENS = 256
# OpenAI's ranges for sampling parameters (the wire allows temperature up to 10).
MAX_TEMPERATURE = 2.0
# The wire's prompt limit (UTF-8 bytes, half a session frame: inference/generation.py), checked
# here first so that an over-long prompt is a `too_long` naming its field.
PROMPT_LIMIT_BYTES = wire.MAX_PROMPT_BYTES


@attrs.frozen
class GenerationCall:
    """One parsed /v1 generation request. `request.id` is 0 until the gateway assigns one."""

    kind: str  # "completion" or "chat"
    model: str
    request: wire.Generate
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{name} must be a number", name)
    # compared before float(): an integer of 400 digits is valid JSON and overflows a float
    if (isinstance(value, float) and not math.isfinite(value)) or not lo <= value <= hi:
        raise bad_request(f"{name} must be between {lo:g} and {hi:g}", name)
    return float(value)


def _utf8_size(text: str, name: str) -> int:
    """How many bytes *text* takes on the wire; a lone surrogate is a 400 naming *name*."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise bad_request(f"{name} is not valid Unicode (a lone surrogate?)", name) from exc


def _prompt_fits(size: int, name: str) -> None:
    if size > PROMPT_LIMIT_BYTES:
        raise ApiError.from_code(
            ErrorCode.TOO_LONG,
            f"{name} takes {size} bytes as UTF-8; the network carries at most "
            f"{PROMPT_LIMIT_BYTES}",
            name,
        )


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer", name)
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}, got {value}", name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false", name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stops) > wire.MAX_STOP_STRINGS:
        raise bad_request(f"stop: at most {wire.MAX_STOP_STRINGS} strings", "stop")
    for text in stops:
        if len(text) > wire.MAX_STOP_CHARS:
            raise bad_request(
                f"stop: each string at most {wire.MAX_STOP_CHARS} characters", "stop"
            )
        _utf8_size(text, "stop")
    return tuple(s for s in stops if s)


def _refuse_unsupported(body: dict[str, Any], kind: str) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("n: only one choice per request is supported", "n")
    if body.get("logprobs") not in (None, False, 0):
        raise bad_request("logprobs are not supported", "logprobs")
    if kind == "completion":
        if body.get("echo"):
            raise bad_request("echo is not supported", "echo")
        if body.get("suffix"):
            raise bad_request("suffix is not supported", "suffix")
        if body.get("best_of") not in (None, 1):
            raise bad_request("best_of is not supported", "best_of")
    else:
        if body.get("tools") or body.get("functions"):
            raise bad_request("tools and function calling are not supported", "tools")
        fmt = body.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            raise bad_request(
                "only response_format {'type': 'text'} is supported", "response_format"
            )


def _text_content(content: object, index: int) -> str:
    """A message's content: a string, or a list of text parts (OpenAI's content-part form)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise bad_request(
                    f"messages[{index}].content: only text parts are supported", "messages"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"messages[{index}].content: text must be a string", "messages")
            texts.append(text)
        return "".join(texts)
    raise bad_request(f"messages[{index}].content must be a string", "messages")


# OpenAI's newer "developer" role is the system role of older models.
_ROLE_ALIASES = {"developer": "system"}


def _messages(body: dict[str, Any]) -> tuple[wire.ChatMessage, ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    if len(raw) > wire.MAX_MESSAGES:
        raise bad_request(f"messages: at most {wire.MAX_MESSAGES}", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in wire.CHAT_ROLES:
            raise bad_request(
                f"messages[{i}].role must be one of {', '.join(wire.CHAT_ROLES)}", "messages"
            )
        out.append(wire.ChatMessage(role, _text_content(m.get("content"), i)))
    _prompt_fits(sum(_utf8_size(m.content, "messages") for m in out), "messages")
    return tuple(out)


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request(
            "prompt must be a string (one prompt per request; no token ids)", "prompt"
        )
    _prompt_fits(_utf8_size(prompt, "prompt"), "prompt")
    return prompt


def parse_generation(body: object, kind: str) -> GenerationCall:
    """Validate an OpenAI request body; raises ApiError(400) with the offending parameter."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model must be a non-empty string", "model")
    _utf8_size(model, "model")
    _refuse_unsupported(body, kind)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    default_max = DEFAULT_CHAT_MAX_TOKENS if kind == "chat" else DEFAULT_COMPLETION_MAX_TOKENS
    max_tokens = _integer(body, "max_tokens", 1, wire.MAX_TOKENS_LIMIT)
    if kind == "chat" and max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1, wire.MAX_TOKENS_LIMIT)
    request = wire.Generate(
        id=0,
        model=model,
        prompt=_prompt(body) if kind == "completion" else "",
        max_tokens=default_max if max_tokens is None else max_tokens,
        # OpenAI's default temperature is 1 (sampling); send 0 for greedy, deterministic output.
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=_integer(body, "seed", 0, wire.MAX_SEED),
        stop=_stop(body),
        messages=_messages(body) if kind == "chat" else (),
        reproducible=_flag(body, "reproducible"),
    )
    if request.top_p <= 0:
        raise bad_request("top_p must be greater than 0", "top_p")
    encoded = wire.encode(request)
    if len(encoded) > MAX_FRAME_PLAINTEXT:
        raise ApiError.from_code(
            ErrorCode.TOO_LONG,
            f"the request takes {len(encoded)} bytes; one session frame carries "
            f"{MAX_FRAME_PLAINTEXT}",
        )
    try:  # the wire's own rules (lengths, ranges) are the last word: one place decides
        wire.decode(encoded)
    except wire.ProtocolError as exc:
        raise bad_request(str(exc), exc.field) from exc
    return GenerationCall(
        kind=kind,
        model=model,
        request=request,
        stream=stream,
        include_usage=bool(stream and options.get("include_usage")),
    )
