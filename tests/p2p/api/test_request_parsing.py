"""OpenAI request bodies into `wire.Generate`: defaults, limits, refusals naming the field."""

from __future__ import annotations

import pytest

from p2p.api.openai_errors import ApiError
from p2p.api.request_parsing import parse_generation
from p2p.metrics import Outcome
from p2p.protocol import wire


def test_parse_generation_defaults_and_limits() -> None:
    call = parse_generation({"model": "m", "prompt": ["hi"]}, "completion")
    assert call.request.prompt == "hi" and call.request.max_tokens == 16
    assert call.request.temperature == 1.0 and not call.stream
    chat = parse_generation(
        {
            "model": "m",
            "messages": [{"role": "developer", "content": "be brief"}],
            "max_completion_tokens": 7,
            "stop": "\n",
            "seed": 3,
        },
        "chat",
    )
    assert chat.request.messages == (wire.ChatMessage("system", "be brief"),)
    assert chat.request.max_tokens == 7 and chat.request.stop == ("\n",)
    assert chat.request.seed == 3 and not chat.request.reproducible
    exact = parse_generation({"model": "m", "prompt": "x", "reproducible": True}, "completion")
    assert exact.request.reproducible
    for bad in (
        {"model": "m", "prompt": "x", "reproducible": "yes"},
        {"model": "m", "prompt": [1, 2]},
        {"model": "m", "prompt": "x", "n": 9},
        {"model": "m", "prompt": "x", "top_p": 0},
        {"model": "m", "prompt": "x", "max_tokens": 0},
        {"model": "m", "prompt": "x", "seed": -1},
        {"model": "m", "prompt": "x", "stream": "yes"},
        {"model": "", "prompt": "x"},
        ["not", "an", "object"],
    ):
        with pytest.raises(ApiError) as info:
            parse_generation(bad, "completion")
        assert info.value.status == 400


def test_a_refused_parameter_is_a_400_naming_it() -> None:
    with pytest.raises(ApiError) as info:
        parse_generation({"model": "m", "prompt": "x", "temperature": 5}, "completion")
    error = info.value
    assert (error.status, error.param, error.type) == (400, "temperature", "invalid_request_error")
    assert error.outcome is Outcome.BAD_REQUEST
    assert error.body()["error"]["param"] == "temperature"


def test_top_p_below_the_wire_minimum_is_a_400_naming_top_p() -> None:
    """The wire refuses top_p under MIN_TOP_P; the API says so itself, naming the parameter."""
    with pytest.raises(ApiError) as info:
        parse_generation({"model": "m", "prompt": "x", "top_p": wire.MIN_TOP_P / 2}, "completion")
    assert info.value.param == "top_p"
    call = parse_generation({"model": "m", "prompt": "x", "top_p": wire.MIN_TOP_P}, "completion")
    assert call.request.top_p == wire.MIN_TOP_P
