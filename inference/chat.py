"""Turn chat messages into one prompt string for a completion model.

llama-cpp-python's automatic chat format is wrong for the default model: it is a base model with
no `tokenizer.chat_template`, llama-cpp picks the llama-2 format for it and the answer comes back
empty. So we choose the format ourselves:

1. the GGUF's own template, rendered in a sandboxed jinja2 (templates come from volunteers'
   files, so they are untrusted code) when jinja2 is importable;
2. Gemma's turn markers for the gemma family;
3. a plain "### User / ### Assistant" layout otherwise.

Base models continue text rather than answer; a format only makes their continuation likelier to
look like a reply.
"""

from __future__ import annotations

from typing import Any

GEMMA_ARCHITECTURES = frozenset({"gemma", "gemma2", "gemma3", "gemma3n"})
ROLES = frozenset({"system", "user", "assistant"})


def _check(messages: list[dict[str, str]]) -> None:
    for message in messages:
        if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ValueError(f"each message needs a role in {sorted(ROLES)} and string content")


def _render_template(
    template: str, messages: list[dict[str, str]], bos_token: str, eos_token: str
) -> str | None:
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return None

    def raise_exception(message: str) -> Any:
        raise ValueError(message)

    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(template).render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
            raise_exception=raise_exception,
        )
    except Exception:  # a template jinja2 cannot parse or that rejects these messages
        return None


def _render_gemma(messages: list[dict[str, str]]) -> str:
    """Gemma has no system role: the system text opens the first user turn."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    parts = []
    for message in messages:
        if message["role"] == "system":
            continue
        content = message["content"]
        if system and message["role"] == "user":
            content, system = f"{system}\n\n{content}", ""
        role = "model" if message["role"] == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    if system:  # only system messages were given
        parts.append(f"<start_of_turn>user\n{system}<end_of_turn>\n")
    return "".join(parts) + "<start_of_turn>model\n"


def _render_generic(messages: list[dict[str, str]]) -> str:
    parts = [f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages]
    return "".join(parts) + "### Assistant:\n"


def chat_format(architecture: str, chat_template: str | None) -> str:
    """Which of the formats above `render_chat` uses for this model (what its record publishes,
    p2p.dht.records.CHAT_FORMATS): "template" when the GGUF's template renders a plain
    exchange, else "gemma" or "generic"."""
    probe = [{"role": "user", "content": "hi"}]
    if chat_template and _render_template(chat_template, probe, "", "") is not None:
        return "template"
    return "gemma" if architecture in GEMMA_ARCHITECTURES else "generic"


def render_chat(
    messages: list[dict[str, str]],
    *,
    architecture: str,
    chat_template: str | None,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """One prompt string ending where the assistant's reply should begin.

    `bos_token` defaults to "" because the worker's tokenizer adds BOS itself; a template that
    also wrote it would give the model two.
    """
    _check(messages)
    if chat_template:
        rendered = _render_template(chat_template, messages, bos_token, eos_token)
        if rendered is not None:
            return rendered
    if architecture in GEMMA_ARCHITECTURES:
        return _render_gemma(messages)
    return _render_generic(messages)
