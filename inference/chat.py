"""Turn chat messages (and tool definitions) into one prompt string for a completion model.

llama-cpp-python's automatic chat format is wrong for the default model: it is a base model with
no `tokenizer.chat_template`, llama-cpp picks the llama-2 format for it and the answer comes back
empty. So we choose the format ourselves (`chat_format`, what the model's record publishes):

1. "template": the GGUF's own template, rendered in the bounded sandbox of
   inference/template_sandbox.py (templates come from volunteers' files: untrusted code), when it
   renders a plain exchange;
2. "gemma": Gemma's turn markers for the gemma family;
3. "generic": a plain "### User / ### Assistant" layout otherwise.

A template that cannot be used is logged once, with the reason, where the model is loaded
(`chat_format`), and the record says which format the node really uses: never a silent
fallback. Once a template is the format, a template that refuses a conversation (its
`raise_exception`, e.g. roles that do not alternate) is an error for that request, not a reason
to switch formats.

Messages are dicts as Hugging Face templates expect them: `role` (system, user, assistant,
tool), `content` (a string), and optionally `tool_calls` on an assistant message (OpenAI's shape
with `arguments` as a dict), `tool_call_id` and `name` on a tool message. Base models continue
text rather than answer; a format only makes their continuation likelier to look like a reply.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from inference.template_sandbox import TemplateRefused, render_template

log = logging.getLogger(__name__)

GEMMA_ARCHITECTURES = frozenset({"gemma", "gemma2", "gemma3", "gemma3n"})
ROLES = frozenset({"system", "user", "assistant", "tool"})
# A tool the probe renders: a template that supports tools writes its name into the prompt.
_PROBE_TOOL_NAME = "gpunet_probe_tool_7f3a"
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": _PROBE_TOOL_NAME,
            "description": "probe",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
]
_PROBE_MESSAGES = [{"role": "user", "content": "hi"}]


def _check(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ValueError(f"each message needs a role in {sorted(ROLES)} and string content")


def _render_template(
    template: str,
    messages: list[dict[str, Any]],
    bos_token: str,
    eos_token: str,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The template's prompt; TemplateRefused with the reason when it cannot give one."""
    return render_template(
        template,
        messages=messages,
        tools=tools or None,  # templates test `if tools`; HF passes None when there are none
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def _calls_text(message: dict[str, Any]) -> str:
    """An assistant message's tool calls as JSON lines, for the formats without a template."""
    calls = message.get("tool_calls") or []
    return "".join(
        "\n" + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
        for c in calls
    )


def _render_gemma(messages: list[dict[str, Any]]) -> str:
    """Gemma has no system role: the system text opens the first user turn; tool results are
    user turns."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    parts = []
    for message in messages:
        if message["role"] == "system":
            continue
        content = message["content"] + _calls_text(message)
        if system and message["role"] == "user":
            content, system = f"{system}\n\n{content}", ""
        role = "model" if message["role"] == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    if system:  # only system messages were given
        parts.append(f"<start_of_turn>user\n{system}<end_of_turn>\n")
    return "".join(parts) + "<start_of_turn>model\n"


def _render_generic(messages: list[dict[str, Any]]) -> str:
    parts = [f"### {m['role'].capitalize()}:\n{m['content']}{_calls_text(m)}\n\n" for m in messages]
    return "".join(parts) + "### Assistant:\n"


def template_problem(chat_template: str | None) -> str | None:
    """Why *chat_template* cannot be this model's format (None when it can)."""
    if not chat_template:
        return "the model file has no chat template"
    try:
        _render_template(chat_template, _PROBE_MESSAGES, "", "")
    except TemplateRefused as exc:
        return str(exc)
    return None


def chat_format(architecture: str, chat_template: str | None, name: str = "") -> str:
    """Which of the formats above `render_chat` uses for this model (what its record publishes,
    p2p.dht.records.CHAT_FORMATS): "template" when the GGUF's template renders a plain
    exchange, else "gemma" or "generic". A template that fails is logged with the reason."""
    problem = template_problem(chat_template)
    if problem is None:
        return "template"
    chosen = "gemma" if architecture in GEMMA_ARCHITECTURES else "generic"
    if chat_template:
        log.warning(
            "%s: chat template not used (%s); chat format %s", name or "model", problem, chosen
        )
    return chosen


def supports_tools(chat_template: str | None) -> bool:
    """Whether the template renders tool definitions: a probe tool's name appears in its prompt
    (a template that ignores `tools` would drop every definition a request sends)."""
    if not chat_template or template_problem(chat_template) is not None:
        return False
    try:
        prompt = _render_template(chat_template, _PROBE_MESSAGES, "", "", _PROBE_TOOLS)
    except TemplateRefused:
        return False
    return _PROBE_TOOL_NAME in prompt


def render_chat(
    messages: list[dict[str, Any]],
    *,
    architecture: str,
    chat_template: str | None,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
    format: str | None = None,
) -> str:
    """One prompt string ending where the assistant's reply should begin.

    *format* is the model's `chat_format` (computed here when None). `bos_token` defaults to ""
    because the worker's tokenizer adds BOS itself; a template that also wrote it would give the
    model two. ValueError when the messages are malformed or the template refuses them.
    """
    _check(messages)
    chosen = chat_format(architecture, chat_template) if format is None else format
    if chosen == "template" and chat_template:
        try:
            return _render_template(chat_template, messages, bos_token, eos_token, tools)
        except TemplateRefused as exc:
            raise ValueError(f"the model's chat template refused these messages: {exc}") from exc
    if chosen == "gemma":
        return _render_gemma(messages)
    return _render_generic(messages)
