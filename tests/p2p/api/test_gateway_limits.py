"""Attack 6 of issue #14: no client input gets a 500 from the gateway.

Before: a 1.5 MB prompt of 3-byte characters passed the gateway (its 500,000 characters were
under the wire's 524,288-*character* limit) and broke the 1 MiB session frame in the session
(500 `FrameError`); a body of 100,000 `[` made `json.loads` raise RecursionError (500); so did a
lone surrogate (`"\\ud800"`, UnicodeEncodeError in msgpack) and an integer of 400 digits as the
temperature (OverflowError). After: 400 with the parameter, `context_length_exceeded` for sizes.

Through the real app on a real network (`LiveNetwork` of test_gateway.py: two nodes on loopback
serving tiny GGUFs, the gateway in front), and fuzzed there with Hypothesis.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.secure_session import MAX_FRAME_PLAINTEXT
from p2p.api.json_body import MAX_BODY_BYTES, MAX_JSON_DEPTH, nesting_depth, parse_json_body
from p2p.api.openai_errors import ApiError
from p2p.api.request_parsing import PROMPT_LIMIT_BYTES, parse_generation
from tests.p2p.api.test_gateway import LiveNetwork, live_network_fixture

HTTP_TIMEOUT_S = 60.0


net = live_network_fixture(api_key=None)


def post(net: LiveNetwork, route: str, body: bytes) -> httpx.Response:
    return httpx.post(
        net.url + route,
        content=body,
        headers={"content-type": "application/json"},
        timeout=HTTP_TIMEOUT_S,
    )


def utf8_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


# --- the attack, as it was run ------------------------------------------------------------------


def test_a_prompt_over_the_frame_limit_in_bytes_is_400_too_long(net: LiveNetwork) -> None:
    prompt = "€" * 500_000  # 1.5 MB as UTF-8, 500,000 characters
    size = len(prompt.encode())
    assert len(prompt) < PROMPT_LIMIT_BYTES < size and size > MAX_FRAME_PLAINTEXT
    answer = post(net, "/v1/completions", utf8_json({"model": "tiny-llama", "prompt": prompt}))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
    chat = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "€" * 100_000}] * 3,  # 900 kB in all
    }
    answer = post(net, "/v1/chat/completions", utf8_json(chat))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "context_length_exceeded"


def test_deeply_nested_json_is_400(net: LiveNetwork) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"model": "tiny-llama", "prompt": "x", "stop": ' + deep + b"}"):
        answer = post(net, "/v1/completions", body)
        assert answer.status_code == 400, answer.text
        assert "deeper than" in answer.json()["error"]["message"]
    # UTF-16, which json.loads would decode: U+0122 is the bytes 22 01, a fake quote to a byte
    # scan, and the depth behind it would be hidden from one
    hidden = '["\u0122", ' + "[" * 100_000 + "]" * 100_000 + ', "x"]'
    answer = post(net, "/v1/completions", hidden.encode("utf-16-le"))
    assert answer.status_code == 400, answer.text


def test_unencodable_text_and_huge_numbers_are_400_naming_the_parameter(
    net: LiveNetwork,
) -> None:
    for body, param in (
        (b'{"model": "tiny-llama", "prompt": "\\ud800"}', "prompt"),
        (b'{"model": "\\udfff", "prompt": "x"}', "model"),
        (
            b'{"model": "tiny-llama", "prompt": "x", "temperature": 1' + b"0" * 400 + b"}",
            "temperature",
        ),
    ):
        answer = post(net, "/v1/completions", body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param


def test_the_network_still_serves_after_the_attack(net: LiveNetwork) -> None:
    answer = post(
        net,
        "/v1/completions",
        utf8_json({"model": "tiny-llama", "prompt": "The", "max_tokens": 4, "temperature": 0}),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] >= 1


# --- fuzzing: any body, status < 500 -------------------------------------------------------------

FIELDS = (
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "seed", "stop", "stream", "stream_options", "n", "logprobs", "echo", "suffix",
    "best_of", "tools", "functions", "response_format", "reproducible",
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=10**300, max_value=10**301)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)  # lone surrogates
    | st.sampled_from(["tiny-llama", "tiny-busy", "user", "system", "text"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]) | VALUES},
        optional={"content": VALUES | st.text(max_size=40)},
    ),
    max_size=4,
)
BODIES = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8) | st.fixed_dictionaries(
    {"model": st.sampled_from(["tiny-llama", "tiny-busy", "nope"])},
    optional={
        "prompt": st.text(max_size=40) | VALUES,
        "messages": MESSAGES,
        # small, so that a valid request generates only a few tokens on the tiny model
        "max_tokens": st.integers(1, 4) | VALUES,
        "temperature": st.floats(0, 2) | VALUES,
        "stop": st.lists(st.text(max_size=4), max_size=3) | VALUES,
        "stream": st.booleans() | VALUES,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | VALUES,
        "seed": st.integers(-1, 2**33) | VALUES,
    },
)


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bodies that are not `json.dumps` of something: junk, deep, huge, multi-byte."""
    kind = draw(st.sampled_from(["junk", "deep", "huge", "nested_field"]))
    if kind == "junk":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        n = draw(st.integers(1, 200_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * n + b"1" + closer * draw(st.sampled_from([n, 0, n // 2]))
    if kind == "huge":
        char = draw(st.sampled_from(["a", "é", "€", "😀", "\\u0000"]))
        size = draw(st.integers(PROMPT_LIMIT_BYTES - 8, MAX_BODY_BYTES))
        field = draw(st.sampled_from(["prompt", "model", "stop"]))
        text = char * (size // len(char.encode()))
        return f'{{"model": "tiny-llama", "{field}": "{text}"}}'.encode()
    depth = draw(st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2))
    field = draw(st.sampled_from(FIELDS))
    return f'{{"model": "tiny-llama", "{field}": {"[" * depth}{"]" * depth}}}'.encode()


def encoded(body: object) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: surrogates travel as \ud800 escapes


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    route=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    body=BODIES.map(encoded) | VALUES.map(encoded) | raw_bodies(),
)
def test_no_request_body_gets_a_500(net: LiveNetwork, route: str, body: bytes) -> None:
    answer = post(net, route, body)
    # 503: the tiny-busy model's node refuses every request as busy, as intended
    assert answer.status_code < 500 or answer.status_code == 503, (answer.status_code, answer.text)
    if answer.status_code >= 400:
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


# --- the pure parts, with plain calls ------------------------------------------------------------


def test_nesting_depth_counts_structure_not_strings() -> None:
    assert nesting_depth(b'{"a": [1, {"b": "[[[[[[[[[["}]}') == 3
    assert nesting_depth(b'"\\"[[[["') == 0  # an escaped quote does not end the string
    assert nesting_depth(b"[" * 10_000, limit=32) == 33  # counted only past the limit
    assert nesting_depth(b"[]" * 10_000) == 1
    with pytest.raises(ApiError) as info:
        parse_json_body(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert info.value.status == 400
    assert isinstance(parse_json_body(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH), list)


def test_prompt_sizes_are_counted_in_utf8_bytes() -> None:
    fits = "é" * (PROMPT_LIMIT_BYTES // 2)
    assert parse_generation({"model": "m", "prompt": fits}, "completion").request.prompt == fits
    for body, kind in (
        ({"model": "m", "prompt": fits + "é"}, "completion"),
        ({"model": "m", "messages": [{"role": "user", "content": fits}] * 2}, "chat"),
    ):
        with pytest.raises(ApiError) as info:
            parse_generation(body, kind)
        assert (info.value.status, info.value.code) == (400, "context_length_exceeded")
