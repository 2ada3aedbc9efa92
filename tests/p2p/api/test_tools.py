"""Tools and function calling (issue #17) through the official `openai` client against a live
network (tests/p2p/api/test_models_truth.py's `ToolsNetwork`), and the pieces under it: the
request's tool fields, the wire's checks, the node's refusal, the streamed hold-back."""

from __future__ import annotations

import json
from typing import Any

import attrs
import msgpack
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.p2p.api.test_models_truth import ToolsNetwork, tools_network_fixture

net = tools_network_fixture()
# Short definitions: the tiny model's context is 512 tokens, and its vocabulary spells JSON
# punctuation a byte at a time.
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["paris", "rome"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["utc", "cet"]}},
            "required": ["zone"],
        },
    },
}
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 80}


@pytest.fixture(scope="module")
def api(net: ToolsNetwork) -> openai.OpenAI:
    return net.openai()


def chat(api: openai.OpenAI, model: str = "tiny-tools", **params: Any) -> ChatCompletion:
    answer = api.chat.completions.create(
        model=model, messages=params.pop("messages", ASK), **{**GREEDY, **params}
    )
    return ChatCompletion.model_validate(answer.model_dump())  # the package's own types


def test_tools_to_a_model_without_tool_support_are_refused_by_name(api: openai.OpenAI) -> None:
    for model in ("tiny-plain", "tiny-broken"):
        with pytest.raises(openai.BadRequestError) as caught:
            chat(api, model, tools=[WEATHER_TOOL])
        assert "does not support tools" in str(caught.value)
        assert caught.value.body["param"] == "tools"  # type: ignore[index]
    # tool_choice none asks for no call: the model answers as without tools
    answer = chat(api, "tiny-plain", tools=[WEATHER_TOOL], tool_choice="none", max_tokens=4)
    assert answer.choices[0].message.tool_calls is None


def test_tools_are_rendered_into_the_prompt_unless_tool_choice_is_none(api: openai.OpenAI) -> None:
    bare = chat(api, max_tokens=1).usage
    with_tools = chat(api, tools=[WEATHER_TOOL], max_tokens=1).usage
    none = chat(api, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=1).usage
    assert bare and with_tools and none
    assert with_tools.prompt_tokens > bare.prompt_tokens + 20  # the definition's JSON
    assert none.prompt_tokens == bare.prompt_tokens


def _weather_call(message: Any) -> dict[str, Any]:
    (call,) = message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments, dict)
    return arguments


def test_tool_choice_required_gives_a_parsed_call_with_valid_arguments(api: openai.OpenAI) -> None:
    answer = chat(api, tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert _weather_call(choice.message)["city"] in ("paris", "rome")
    assert not choice.message.content  # all the model wrote was the call


def test_a_named_tool_choice_calls_that_function(api: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "time"}}
    sampling: list[dict[str, Any]] = [{}, {"temperature": 1.0, "seed": 5}]
    for sampled in sampling:
        answer = chat(
            api,
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice=named,
            parallel_tool_calls=False,
            **sampled,
        )
        calls: Any = answer.choices[0].message.tool_calls
        assert calls and [c.function.name for c in calls] == ["time"]
        assert json.loads(calls[0].function.arguments)["zone"] in ("utc", "cet")


def test_a_streamed_tool_call_comes_as_one_tool_calls_delta(api: openai.OpenAI) -> None:
    stream = api.chat.completions.create(
        model="tiny-tools",
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        stream=True,
        **GREEDY,
    )
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) for c in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls: Any = [call for d in deltas for call in d.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function
    assert calls[0].function.name == "weather"
    assert json.loads(calls[0].function.arguments or "")["city"] in ("paris", "rome")
    assert not "".join(d.content or "" for d in deltas)  # nothing of the call leaked as text
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    whole = chat(api, tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False)
    whole_calls: Any = whole.choices[0].message.tool_calls
    assert whole_calls and whole_calls[0].function.arguments == calls[0].function.arguments


def test_a_conversation_with_a_call_and_its_result_renders(api: openai.OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "paris"}'},
    }
    turns = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny and warm, 21 degrees"},
    ]
    before = chat(api, tools=[WEATHER_TOOL], max_tokens=1).usage
    after = chat(api, messages=turns, tools=[WEATHER_TOOL], max_tokens=1).usage
    assert before and after
    # the call's JSON and the tool's result both reached the prompt
    assert after.prompt_tokens > before.prompt_tokens + 25


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "x"}},
            },
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        ({"tools": [WEATHER_TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": [WEATHER_TOOL], "logprobs": True}, "logprobs"),
        ({"functions": [{"name": "f"}]}, "functions"),
        (  # a schema keyword the grammar could not enforce
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"x": {"type": "integer", "multipleOf": 3}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": "required", "grammar": 'root ::= "x"'},
            "tool_choice",
        ),
    ],
)
def test_bad_tool_parameters_are_a_400_naming_them(
    api: openai.OpenAI, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(
            model="tiny-tools", messages=ASK, max_tokens=1, extra_body=params
        )
    assert caught.value.body["param"] == param  # type: ignore[index]


def test_tools_on_a_completion_are_refused(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.completions.create(
            model="tiny-tools", prompt="x", max_tokens=1, extra_body={"tools": [WEATHER_TOOL]}
        )
    assert caught.value.body["param"] == "tools"  # type: ignore[index]


# --- the pieces, without a network -----------------------------------------------------------


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 3, 50])
def test_streamed_text_is_held_only_where_a_call_may_begin(size: int) -> None:
    from p2p.api.tool_params import ToolCallStream

    names = ("weather",)
    for text in ("Hello world, a < b and [1] too.", '{"answer": 1}', "  ", "[TOOL_CALLS"):
        stream = ToolCallStream(names)
        out = "".join(stream.feed(p) for p in _pieces(text, size))
        rest, calls = stream.finish()
        assert out + rest == text and calls == []  # no call: every character goes out
    stream = ToolCallStream(names)
    call = '<tool_call>\n{"name": "weather", "arguments": {"city": "rome"}}\n</tool_call>'
    out = "".join(stream.feed(p) for p in _pieces("Let me see. " + call, size))
    rest, calls = stream.finish()
    assert (out + rest).strip() == "Let me see."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", {"city": "rome"})]


def test_text_before_any_opener_is_not_held() -> None:
    from p2p.api.tool_params import ToolCallStream

    stream = ToolCallStream(("weather",))
    assert stream.feed("Hello") == "Hello"
    assert stream.feed(" <tool") == " "
    assert stream.feed("_call>") == ""
    assert stream.feed(" anything") == ""  # held until the end


def _generate(**fields: Any) -> bytes:
    from p2p.protocol import wire

    body = {"v": wire.PROTOCOL_VERSION, "t": "generate", "id": 1, "model": "m", "prompt": ""}
    body["messages"] = [["user", "hi"]]
    return msgpack.packb({**body, **fields})  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": json.dumps([WEATHER_TOOL]), "messages": [], "prompt": "x"}, "tools"),
        ({"tools": "not json"}, "tools"),
        ({"tools": json.dumps([{"type": "function", "function": {"name": "a b"}}])}, "tools"),
        ({"tools": json.dumps([WEATHER_TOOL]), "tool_choice": "function:nope"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [["assistant", "", [["c1", "weather", "[1]"]], "", ""]]}, "messages"),
        ({"messages": [["assistant", "", [["c1", "weather"]], "", ""]]}, "messages"),
        ({"messages": [["tool", "x", []]]}, "messages"),
        ({"messages": [["robot", "x"]]}, "messages"),
        ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
    ],
)
def test_the_wire_checks_tool_fields_at_decode(fields: dict[str, Any], field: str) -> None:
    from p2p.protocol import wire

    received = wire.decode_received(_generate(**fields))
    assert isinstance(received, wire.Malformed) and received.field == field


def test_tool_messages_round_trip_and_the_short_form_still_decodes() -> None:
    from p2p.protocol import wire
    from p2p.protocol.tool_wire import ToolCallMessage

    msg = wire.Generate(
        id=3,
        model="m",
        prompt="",
        messages=(
            wire.ChatMessage("user", "hi"),
            wire.ChatMessage("assistant", "", (ToolCallMessage("c1", "weather", '{"city":"x"}'),)),
            wire.ChatMessage("tool", "sunny", (), "c1", "weather"),
        ),
        tools=json.dumps([WEATHER_TOOL]),
        tool_choice="function:weather",
        parallel_tool_calls=False,
    )
    assert wire.decode(wire.encode(msg)) == msg
    old = wire.decode(_generate())  # a peer that knows nothing of tools
    assert isinstance(old, wire.Generate)
    assert (old.tools, old.tool_choice, old.parallel_tool_calls) == ("", "auto", True)


def test_the_node_refuses_tools_its_model_cannot_render(make_tiny_gguf: Any, tmp_path: Any) -> None:
    from inference.model_file import inspect_gguf
    from p2p.errors import BadRequest
    from p2p.node.chat_prompt import chat_prompt
    from p2p.node.models import ServedModel
    from p2p.protocol import wire

    info = inspect_gguf(make_tiny_gguf(tmp_path / "plain.gguf"))
    served = ServedModel(info, worker=None, chat_format="generic")  # type: ignore[arg-type]
    msg = wire.Generate(
        id=1,
        model="m",
        prompt="",
        messages=(wire.ChatMessage("user", "hi"),),
        tools=json.dumps([WEATHER_TOOL]),
    )
    with pytest.raises(BadRequest, match="does not support tools") as caught:
        chat_prompt(msg, served)
    assert caught.value.field == "tools"
    prompt, grammar = chat_prompt(attrs.evolve(msg, tool_choice="none"), served)
    assert prompt == "### User:\nhi\n\n### Assistant:\n" and grammar == ""


def test_the_gateway_reads_tool_calls_and_results_in_messages() -> None:
    from p2p.api.openai_errors import ApiError
    from p2p.api.request_parsing import parse_generation

    call = {"id": "c9", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c9", "content": "rain"},
        ],
    }
    messages = parse_generation(body, "chat").request.messages
    assert messages[1].content == "" and messages[1].tool_calls[0].name == "weather"
    assert (messages[2].role, messages[2].tool_call_id, messages[2].name) == (
        "tool",
        "c9",
        "weather",
    )
    bad_messages: list[Any] = [
        {"role": "tool", "content": "rain"},  # no tool_call_id
        {"role": "assistant", "content": None, "tool_calls": 5},
        {
            "role": "assistant",
            "tool_calls": [{**call, "function": {"name": "w", "arguments": "[]"}}],
        },
        {"role": "assistant", "tool_calls": [{**call, "id": "\ud800"}]},
        {"role": "assistant", "content": None},  # no content and no calls
    ]
    for message in bad_messages:
        with pytest.raises(ApiError) as caught:
            parse_generation({"model": "m", "messages": [*ASK, message]}, "chat")
        assert caught.value.param == "messages"


def test_n_choices_each_get_their_tool_calls(api: openai.OpenAI) -> None:
    answer = chat(
        api,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        n=2,
        temperature=1.0,
        seed=3,
    )
    assert len(answer.choices) == 2
    for choice in answer.choices:
        assert choice.finish_reason == "tool_calls"
        assert _weather_call(choice.message)["city"] in ("paris", "rome")
