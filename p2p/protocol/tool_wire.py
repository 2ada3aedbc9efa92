"""Tools on the wire: the tool definitions and `tool_choice` a `Generate` carries, and the tool
calls and tool results in its chat messages, each validated at decode (generate_wire.py calls
these readers).

`Generate.tools` is OpenAI's `tools` list as JSON text (inference/tool_calls.py `check_tools`
says what a valid one is); the node renders it with the model's template. `tool_choice` is
"auto", "none", "required" or "function:NAME" for one of the declared functions. A chat message
is `[role, content]`, or `[role, content, [[id, name, arguments], ...], tool_call_id, name]`
when it carries an assistant's tool calls (arguments: a JSON object as text) or is a tool's
result, so a peer that sends only the short form still works.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from inference.tool_calls import MAX_TOOLS_BYTES, tools_from_json
from p2p.protocol.wire_fields import Fields, utf8_len

MAX_CALLS_PER_MESSAGE = 64
MAX_CALL_ID_CHARS = 128
MAX_NAME_CHARS = 64
TOOL_CHOICES = ("auto", "none", "required")
NAMED_CHOICE = "function:"


@attrs.frozen
class ToolCallMessage:
    """A tool call an assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str  # a JSON object, as text (OpenAI's function.arguments)


def message_extra(
    tool_calls: tuple[ToolCallMessage, ...], tool_call_id: str, name: str
) -> list[Any]:
    """What follows [role, content] on the wire: nothing for a plain message."""
    if not tool_calls and not tool_call_id and not name:
        return []
    return [[[c.id, c.name, c.arguments] for c in tool_calls], tool_call_id, name]


def decode_message_extra(
    f: Fields, raw: list[Any], limit: int
) -> tuple[tuple[ToolCallMessage, ...], str, str]:
    """The tool calls, tool_call_id and name after [role, content] (none for 2 items)."""
    if len(raw) == 2:
        return (), "", ""
    if len(raw) != 5 or not isinstance(raw[2], list) or len(raw[2]) > MAX_CALLS_PER_MESSAGE:
        f.fail("messages", "messages: each is [role, content] or [role, content, calls, id, name]")
    calls = []
    for call in raw[2]:
        if not isinstance(call, list) or len(call) != 3:
            f.fail("messages", "messages: each tool call is [id, name, arguments]")
        arguments = f.text(call[2], limit, "messages")
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):
            f.fail("messages", "messages: tool call arguments must be a JSON object")
        calls.append(
            ToolCallMessage(
                f.text(call[0], MAX_CALL_ID_CHARS, "messages"),
                f.text(call[1], MAX_NAME_CHARS, "messages"),
                arguments,
            )
        )
    return (
        tuple(calls),
        f.text(raw[3], MAX_CALL_ID_CHARS, "messages"),
        f.text(raw[4], MAX_NAME_CHARS, "messages"),
    )


def message_bytes(message: Any) -> int:
    """A chat message's text in UTF-8 bytes, its calls' arguments included (the prompt bound)."""
    calls = sum(utf8_len(c.arguments) for c in message.tool_calls)
    return int(utf8_len(message.content)) + calls


def decode_tools(f: Fields) -> str:
    """`tools`: "" or a valid tools list as JSON text."""
    text = f.string("tools", MAX_TOOLS_BYTES, "")
    if text and not f.body.get("messages"):
        f.fail("tools", "tools: only with messages (a chat)")
    if text:
        try:
            tools_from_json(text)
        except ValueError as exc:
            f.fail("tools", str(exc))
    return text


def tool_names(tools: str) -> list[str]:
    """The function names a valid `tools` text (decode_tools's) declares."""
    return [t["function"]["name"] for t in tools_from_json(tools)] if tools else []


def decode_tool_choice(f: Fields, tools: str) -> str:
    choice = f.string("tool_choice", MAX_NAME_CHARS + len(NAMED_CHOICE), "auto")
    if choice in ("auto", "none"):
        return choice
    if not tools:
        f.fail("tool_choice", "tool_choice: only auto or none without tools")
    if choice == "required" or (
        choice.startswith(NAMED_CHOICE) and choice[len(NAMED_CHOICE) :] in tool_names(tools)
    ):
        return choice
    f.fail("tool_choice", "tool_choice: auto, none, required or function:NAME of a declared tool")
