"""Chat formats (inference/chat.py) and the template sandbox (inference/template_sandbox.py):
what GGUF templates use renders as Hugging Face renders it, tools and tool messages included,
hostile templates are stopped within their bounds, and a fallback is logged with its reason."""

from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Any

import pytest

from inference.chat import chat_format, render_chat, supports_tools
from inference.template_sandbox import RENDER_DEADLINE_S, TemplateRefused, render_template

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Capital of France?"},
]


def test_gemma_turns_with_system_text_in_the_first_user_turn() -> None:
    prompt = render_chat(MESSAGES, architecture="gemma3", chat_template=None)
    assert prompt == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_generic_format_for_unknown_architectures() -> None:
    prompt = render_chat(MESSAGES[1:2], architecture="llama", chat_template=None)
    assert prompt == "### User:\nHi\n\n### Assistant:\n"


def test_the_models_own_template_wins() -> None:
    template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    prompt = render_chat(MESSAGES[1:2], architecture="gemma3", chat_template=template)
    assert prompt == "<|user|>Hi\n<|assistant|>"


def test_a_broken_or_unsafe_template_falls_back() -> None:
    broken = "{% for m in messages %}"
    unsafe = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    for template in (broken, unsafe):
        prompt = render_chat(MESSAGES[1:2], architecture="gemma3", chat_template=template)
        assert prompt == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(ValueError):
        render_chat([{"role": "robot", "content": "x"}], architecture="gemma3", chat_template=None)


# A Qwen-2.5-style template with tools (written for these tests, in the shape such templates
# have): tool definitions as JSON in the system turn, calls in <tool_call> tags, tool results
# as <tool_response> in a user turn.
QWEN_TOOLS_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else '' }}
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Calls go in <tool_call></tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}\
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{{ message.content }}
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["paris", "rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_tools_and_tool_messages_render_as_hf_templates_expect() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "paris"}},
                }
            ],
        },
        {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1", "name": "get_weather"},
    ]
    prompt = render_chat(
        messages, architecture="qwen2", chat_template=QWEN_TOOLS_TEMPLATE, tools=[WEATHER_TOOL]
    )
    assert '{"type": "function", "function": {"name": "get_weather"' in prompt
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n</tool_call>'
        in prompt
    )
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    plain = render_chat(messages[:1], architecture="qwen2", chat_template=QWEN_TOOLS_TEMPLATE)
    assert "<tools>" not in plain  # no tools: the template's plain branch


def test_a_template_supports_tools_when_it_renders_their_definitions() -> None:
    assert supports_tools(QWEN_TOOLS_TEMPLATE)
    assert not supports_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not supports_tools(None)
    assert not supports_tools("{% for m in messages %}")


def test_what_gguf_templates_use_is_provided() -> None:
    year = str(datetime.datetime.now().year)
    assert render_template("{{ strftime_now('%Y') }}") == year
    # HF's tojson: no HTML escaping, indent and ensure_ascii as json.dumps
    assert render_template("{{ x | tojson }}", x={"a": "<b>é"}) == '{"a": "<b>é"}'
    assert render_template("{{ x | tojson(indent=2) }}", x={"a": 1}) == '{\n  "a": 1\n}'
    assert render_template("{{ x | tojson(ensure_ascii=True) }}", x="é") == '"\\u00e9"'
    loop = "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"
    assert render_template(loop) == "01"
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    prompt = render_chat(
        MESSAGES[1:2],
        architecture="llama",
        chat_template=template,
        bos_token="<s>",
        eos_token="</s>",
    )
    assert prompt == "<s>Hi</s>"


HOSTILE = {
    "a loop without output": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "a huge repeat": "{{ 'x' * 10**9 }}",
    "a huge width": "{{ 'x' | center(10**9) }}",
    "a huge method argument": "{{ 'x'.ljust(10**9) }}",
    "a huge format width": "{{ '{:>999999999}'.format(1) }}",
    "a huge %-width": "{{ '%0999999999d' % 1 }}",
    "doubling with ~": "{% set ns = namespace(x='xxxxxxxx') %}{% for i in range(60) %}"
    "{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x | length }}",
    "doubling in a block": "{% set ns = namespace(x='xxxxxxxx') %}{% for i in range(60) %}"
    "{% set y %}{{ ns.x }}{{ ns.x }}{% endset %}{% set ns.x = y %}{% endfor %}",
    "endless output": "{% for i in range(100000) %}{% for j in range(100) %}xxxxxxxx"
    "{% endfor %}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_template_is_stopped_within_bounds(name: str) -> None:
    tracer = sys.gettrace()
    started = time.monotonic()
    with pytest.raises(TemplateRefused):
        render_template(HOSTILE[name], messages=[])
    assert time.monotonic() - started < RENDER_DEADLINE_S + 5  # stopped, not run to its end
    assert sys.gettrace() is tracer  # the caller's tracer (a coverage tool's) is back
    assert chat_format("llama", HOSTILE[name]) == "generic"


def test_a_fallback_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="inference.chat"):
        assert chat_format("gemma3", "{{ raise_exception('no system role') }}", "m1") == "gemma"
    assert "m1" in caplog.text and "no system role" in caplog.text
    assert chat_format("llama", QWEN_TOOLS_TEMPLATE) == "template"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inference.chat"):
        assert chat_format("llama", None, "m2") == "generic"  # no template: nothing to report
    assert not caplog.text


def test_a_template_that_refuses_a_conversation_is_an_error_not_a_fallback() -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}"
    )
    assert chat_format("llama", template) == "template"  # the probe's plain exchange renders
    with pytest.raises(ValueError, match="System role not supported"):
        render_chat(MESSAGES, architecture="llama", chat_template=template, format="template")


def test_message_text_that_looks_like_a_format_is_not_refused() -> None:
    text = " %0999999d {:>9999999} "
    template = "{{ m | trim }}|{{ '%s!' % m }}|{{ '{}'.format(m) }}|{{ n | string }}"
    assert render_template(template, m=text, n=10**7) == f"{text.strip()}|{text}!|{text}|10000000"
