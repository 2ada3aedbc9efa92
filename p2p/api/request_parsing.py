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
from p2p.api.constrained_params import constrained_grammar
from p2p.api.logprob_params import LogprobParams, parse_logprobs
from p2p.api.openai_errors import ApiError, bad_request
from p2p.api.tool_params import message_tool_fields, tool_fields
from p2p.api.unsupported_params import refuse_unsupported
from p2p.errors import ErrorCode
from p2p.protocol import wire

# OpenAI's documented default for /v1/completions; chat has no documented number (it runs to the
# context's end), which on a volunteer's small context would fail more often than help.
DEFAULT_COMPLETION_MAX_TOKENS = 16
DEFAULT_CHAT_MAX_TOKENS = 256
# The most choices (`n`) one request may ask for.
MAX_CHOICES = 8
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
    # logprobs / top_logprobs / echo (p2p/api/logprob_params.py); the count is in request too.
    logprobs: LogprobParams = attrs.field(factory=LogprobParams)
    # OpenAI's `n`: choices to generate, each a request of its own (p2p/api/choices.py)
    n: int = 1


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
            f"{name} takes {size} bytes as UTF-8; the network carries at most {PROMPT_LIMIT_BYTES}",
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
            raise bad_request(f"stop: each string at most {wire.MAX_STOP_CHARS} characters", "stop")
        _utf8_size(text, "stop")
    return tuple(s for s in stops if s)


def _logit_bias(body: dict[str, Any]) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} (or llama-server's [[token id, bias], ...]): biases from -100
    to 100, -100 banning the token. Ids outside the model's vocabulary are refused by the
    node."""
    raw = body.get("logit_bias")
    if raw is None:
        return ()
    items = raw.items() if isinstance(raw, dict) else raw
    if not isinstance(items, list) and not isinstance(raw, dict):
        raise bad_request("logit_bias must map token ids to biases", "logit_bias")
    pairs: dict[int, float] = {}
    for item in items:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise bad_request("logit_bias must map token ids to biases", "logit_bias")
        key, bias = item
        token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else key
        if isinstance(token, bool) or not isinstance(token, int):
            raise bad_request("logit_bias: keys are token ids (whole numbers)", "logit_bias")
        if not 0 <= token <= wire.MAX_TOKEN_ID:
            raise bad_request(f"logit_bias: {key!s:.20} is not a token id", "logit_bias")
        number = isinstance(bias, int | float) and not isinstance(bias, bool)
        if not (number and -wire.MAX_LOGIT_BIAS <= bias <= wire.MAX_LOGIT_BIAS):
            raise bad_request(
                f"logit_bias: biases are numbers from {-wire.MAX_LOGIT_BIAS:g} to "
                f"{wire.MAX_LOGIT_BIAS:g}",
                "logit_bias",
            )
        pairs[token] = float(bias)
        if len(pairs) > wire.MAX_LOGIT_BIAS_ENTRIES:
            raise bad_request(
                f"logit_bias: at most {wire.MAX_LOGIT_BIAS_ENTRIES} tokens", "logit_bias"
            )
    return tuple(pairs.items())


def _top_k(body: dict[str, Any]) -> int:
    """llama-server's top_k: 0 or less keeps every token (sent as 0, llama.cpp's "off")."""
    top_k = _integer(body, "top_k", -(2**31), wire.MAX_TOP_K)
    return wire.DEFAULT_TOP_K if top_k is None else max(top_k, 0)


def _penalty_last_n(body: dict[str, Any]) -> int:
    """llama-server's repeat_last_n: -1 is "the whole context", here the longest window."""
    last_n = _integer(body, "repeat_last_n", -1, wire.MAX_PENALTY_LAST_N)
    if last_n is None:
        return wire.DEFAULT_PENALTY_LAST_N
    return wire.MAX_PENALTY_LAST_N if last_n == -1 else last_n


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
    earlier: dict[str, str] = {}  # tool call ids and their functions (p2p/api/tool_params.py)
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in wire.CHAT_ROLES:
            raise bad_request(
                f"messages[{i}].role must be one of {', '.join(wire.CHAT_ROLES)}", "messages"
            )
        calls, call_id, name = message_tool_fields(m, i, earlier)
        content = "" if m.get("content") is None and calls else m.get("content")
        out.append(wire.ChatMessage(role, _text_content(content, i), calls, call_id, name))
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
    refuse_unsupported(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    default_max = DEFAULT_CHAT_MAX_TOKENS if kind == "chat" else DEFAULT_COMPLETION_MAX_TOKENS
    logprobs = parse_logprobs(body, kind, stream)
    # echo with max_tokens 0 scores the prompt alone (lm-eval's way): see logprob_params.py
    max_tokens = _integer(body, "max_tokens", 0 if logprobs.echo else 1, wire.MAX_TOKENS_LIMIT)
    if kind == "chat" and max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1, wire.MAX_TOKENS_LIMIT)
    request = wire.Generate(
        id=0,
        model=model,
        prompt=_prompt(body) if kind == "completion" else "",
        max_tokens=default_max if max_tokens is None else max(max_tokens, 1),
        # OpenAI's default temperature is 1 (sampling); send 0 for greedy, deterministic output.
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0, wire.MIN_TOP_P, 1.0),
        seed=_integer(body, "seed", 0, wire.MAX_SEED),
        stop=_stop(body),
        messages=_messages(body) if kind == "chat" else (),
        reproducible=_flag(body, "reproducible"),
        presence_penalty=_number(
            body, "presence_penalty", 0.0, -wire.MAX_PRESENCE_PENALTY, wire.MAX_PRESENCE_PENALTY
        ),
        frequency_penalty=_number(
            body,
            "frequency_penalty",
            0.0,
            -wire.MAX_FREQUENCY_PENALTY,
            wire.MAX_FREQUENCY_PENALTY,
        ),
        logit_bias=_logit_bias(body),
        # llama-server's extras
        top_k=_top_k(body),
        min_p=_number(body, "min_p", wire.DEFAULT_MIN_P, 0.0, 1.0),
        typical_p=_number(body, "typical_p", 1.0, wire.MIN_TYPICAL_P, 1.0),
        repeat_penalty=_number(
            body, "repeat_penalty", 1.0, wire.MIN_REPEAT_PENALTY, wire.MAX_REPEAT_PENALTY
        ),
        penalty_last_n=_penalty_last_n(body),
        ignore_eos=_flag(body, "ignore_eos"),
        grammar=constrained_grammar(body),  # response_format, grammar, json_schema
        logprobs=logprobs.count,
        prompt_logprobs=logprobs.echo and logprobs.wanted,
        **tool_fields(body, kind),  # tools, tool_choice, parallel_tool_calls
    )
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
        logprobs=logprobs,
        n=_choices(body),
    )


def _choices(body: dict[str, Any]) -> int:
    """OpenAI's `n`, bounded: each choice is a generation of its own, and a node serves a few
    at a time (its slots), so more would mostly queue."""
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise bad_request(
            f"n must be a whole number from 1 to {MAX_CHOICES}: each choice is a generation of "
            "its own; send several requests for more",
            "n",
        )
    return n
