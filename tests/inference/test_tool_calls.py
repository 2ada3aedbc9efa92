"""Tool calls in model output (inference/tool_calls.py): each common syntax parses into OpenAI's
shape, only declared functions with object arguments count, the grammars llama.cpp accepts, and
tool definitions are checked as a request sends them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.tool_calls import (
    ToolCall,
    check_tools,
    held_from,
    parse_tool_calls,
    tool_call_format,
    tool_call_grammar,
    tools_from_json,
)
from tests.inference.test_chat_render import QWEN_TOOLS_TEMPLATE, WEATHER_TOOL

NAMES = {"get_weather", "get_time"}
PARIS = ToolCall("get_weather", '{"city": "paris"}')


def test_hermes_calls_with_text_before_them() -> None:
    text = (
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    content, calls = parse_tool_calls(text, NAMES)
    assert content == "Let me look."
    assert calls == [PARIS, ToolCall("get_time", "{}")]


def test_a_hermes_call_cut_before_its_closing_tag_still_counts_when_its_json_is_whole() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}'
    assert parse_tool_calls(text, NAMES) == ("", [PARIS])


def test_calls_before_one_cut_off_by_max_tokens_still_count() -> None:
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "argu'
    )
    assert parse_tool_calls(text, NAMES) == ("", [PARIS])


def test_llama3_json_with_parameters_and_python_tag() -> None:
    for text in (
        '{"name": "get_weather", "parameters": {"city": "paris"}}',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "paris"}}',
        '  {"name": "get_weather", "parameters": "{\\"city\\": \\"paris\\"}"}\n',
    ):
        assert parse_tool_calls(text, NAMES) == ("", [PARIS])


def test_mistral_tool_calls_list() -> None:
    text = (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "paris"}}, '
        '{"name": "get_time", "arguments": {"zone": "utc"}}]'
    )
    content, calls = parse_tool_calls(text, NAMES)
    assert content == ""
    assert calls == [PARIS, ToolCall("get_time", '{"zone": "utc"}')]


@pytest.mark.parametrize(
    "text",
    [
        "The weather is fine.",
        '{"name": "delete_everything", "parameters": {}}',  # not a declared function
        '{"name": "get_weather", "parameters": [1, 2]}',  # arguments not an object
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "par',  # cut short
        '{"answer": 42}',
        "[TOOL_CALLS] not json",
    ],
)
def test_text_that_is_no_call_of_a_declared_function_stays_text(text: str) -> None:
    assert parse_tool_calls(text, NAMES) == (text, [])


def test_held_from_marks_where_a_call_may_begin() -> None:
    assert held_from("Hello there") == len("Hello there")
    assert held_from("Hello <tool") == len("Hello ")  # may still become <tool_call>
    assert held_from("Hello <tool_call>{") == len("Hello ")
    assert held_from('{"name"') == 0
    assert held_from("  ") == 0  # the answer may still open with JSON
    assert held_from("a < b") == len("a < b")


def test_the_format_a_template_teaches() -> None:
    assert tool_call_format(QWEN_TOOLS_TEMPLATE) == "hermes"
    assert tool_call_format("{{ '[TOOL_CALLS]' }}") == "mistral"
    assert tool_call_format("{{ '<|python_tag|>' }}{% if m.role == 'ipython' %}") == "llama3"
    assert tool_call_format(None) == "hermes"


@pytest.fixture(scope="module")
def parses(tiny_gguf: Path) -> Callable[[str], bool]:
    """Whether llama.cpp's grammar sampler accepts a grammar (its init returns NULL if not)."""
    import llama_cpp

    model = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)

    def check(grammar: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(
            model._model.vocab, grammar.encode(), b"root"
        )
        if sampler:
            llama_cpp.llama_sampler_free(sampler)
        return bool(sampler)

    return check


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral"])
@pytest.mark.parametrize("parallel", [True, False])
def test_tool_call_grammars_are_valid_gbnf(
    fmt: str, parallel: bool, parses: Callable[[str], bool]
) -> None:
    assert not parses("root ::= undefined-rule")
    time_tool = {"type": "function", "function": {"name": "get_time"}}
    grammar = tool_call_grammar([WEATHER_TOOL, time_tool], fmt, parallel=parallel)
    assert grammar.startswith("root ::= ")
    assert ("*" in grammar.splitlines()[0]) == (parallel and fmt != "llama3")
    assert parses(grammar)
    named = tool_call_grammar([WEATHER_TOOL, time_tool], fmt, only="get_time")
    assert "get_weather" not in named and "get_time" in named and parses(named)
    with pytest.raises(ValueError):
        tool_call_grammar([WEATHER_TOOL], fmt, only="nope")


def test_tool_definitions_are_checked_and_normalised() -> None:
    assert check_tools([WEATHER_TOOL]) == [WEATHER_TOOL]
    bare = check_tools([{"type": "function", "function": {"name": "f", "extra": 1}}])
    assert bare == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    deep: dict[str, object] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    bad = [
        [],
        "tools",
        [{"type": "code_interpreter"}],
        [{"type": "function", "function": {"name": "has space"}}],
        [{"type": "function", "function": {"name": "f"}}] * 2,
        [{"type": "function", "function": {"name": "f", "parameters": deep}}],
        [{"type": "function", "function": {"name": "f", "description": 3}}],
    ]
    for tools in bad:
        with pytest.raises(ValueError):
            check_tools(tools)
    with pytest.raises(ValueError):
        tools_from_json("[" * 60_000)  # nesting past the parser's recursion
    assert tools_from_json(json.dumps([WEATHER_TOOL])) == [WEATHER_TOOL]
