"""A chat request's prompt on this node: its messages (tool calls and results included) and
tool definitions rendered with the model's chat format, and the grammar that `tool_choice`
"required" or a named function asks for.

The node checks for itself what the gateway already checked from the record (a peer may send
anything): tools to a model whose template cannot render them are refused as bad_request, not
dropped. The calls in the answer are parsed by whoever receives it (p2p/api/tool_params.py):
the node streams text as for any request.
"""

from __future__ import annotations

import json
from typing import Any

from inference.chat import render_chat
from inference.tool_calls import tool_call_format, tool_call_grammar, tools_from_json
from p2p.errors import BadRequest
from p2p.node.models import ServedModel
from p2p.protocol import wire
from p2p.protocol.tool_wire import NAMED_CHOICE

TOOLS_CAPABILITY = "tools"


def message_dict(m: wire.ChatMessage) -> dict[str, Any]:
    """A wire message as Hugging Face templates expect it (call arguments as dicts)."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.loads(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name:
        out["name"] = m.name
    return out


def _tool_grammar(msg: wire.Generate, served: ServedModel, tools: list[dict[str, Any]]) -> str:
    if msg.tool_choice != "required" and not msg.tool_choice.startswith(NAMED_CHOICE):
        return msg.grammar
    if msg.grammar:
        raise BadRequest(
            "tool_choice required or a named function cannot be combined with a grammar or "
            "response_format",
            field="tool_choice",
        )
    named = msg.tool_choice.removeprefix(NAMED_CHOICE) if msg.tool_choice != "required" else ""
    try:
        return tool_call_grammar(
            tools,
            tool_call_format(served.info.chat_template),
            only=named,
            parallel=msg.parallel_tool_calls,
        )
    except ValueError as exc:
        raise BadRequest(str(exc), field="tools") from exc


def chat_prompt(msg: wire.Generate, served: ServedModel) -> tuple[str, str]:
    """The prompt and the grammar (GBNF, "" for none) the worker is asked for *msg*'s chat."""
    tools = tools_from_json(msg.tools) if msg.tools and msg.tool_choice != "none" else []
    if tools and TOOLS_CAPABILITY not in served.capabilities:
        raise BadRequest(
            f"model {served.info.name} does not support tools: its chat template does not "
            "render tool definitions",
            field="tools",
        )
    try:
        prompt = render_chat(
            [message_dict(m) for m in msg.messages],
            architecture=served.info.architecture,
            chat_template=served.info.chat_template,
            tools=tools or None,
            format=served.chat_format or None,
        )
    except ValueError as exc:
        raise BadRequest(str(exc), field="messages") from exc
    return prompt, _tool_grammar(msg, served, tools) if tools else msg.grammar
