from __future__ import annotations

import pytest

from inference.chat import render_chat

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
        render_chat([{"role": "tool", "content": "x"}], architecture="gemma3", chat_template=None)
