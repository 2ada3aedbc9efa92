"""Tools and function calling at the gateway: OpenAI's `tools`, `tool_choice`,
`parallel_tool_calls` and the messages that carry tool calls and results, parsed into the wire's
form; and the model's answer turned back into OpenAI's `message.tool_calls`.

Pure functions and one small state machine, no I/O. The node renders the tools with the model's
chat template and, for `tool_choice` "required" or a named function, constrains the output with
a grammar of the model's own call syntax (p2p/node/chat_prompt.py). The answer's calls are
parsed here (inference/tool_calls.py knows the syntaxes), for the declared functions only.

Streaming: text goes out as it comes until something that may open a call appears (`<tool_call>`,
`[TOOL_CALLS]`, `<|python_tag|>`, or an answer that starts with JSON); from there on text is held
back, and at the end the calls go out as one `tool_calls` delta (finish_reason "tool_calls"), or
the held text goes out as text when it was no call after all.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from inference.tool_calls import (
    OPENERS,
    ToolCall,
    check_tools,
    held_from,
    parse_tool_calls,
    tool_call_grammar,
)
from p2p.api.openai_errors import bad_request
from p2p.model_match import model_matches
from p2p.protocol import wire
from p2p.protocol.tool_wire import NAMED_CHOICE, ToolCallMessage, tool_names

TOOLS_CAPABILITY = "tools"


def tool_fields(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """`wire.Generate`'s tools, tool_choice and parallel_tool_calls for *body*."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad_request("parallel_tool_calls must be true or false", "parallel_tool_calls")
    if tools is None or tools == []:
        if choice not in (None, "auto", "none"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return {"parallel_tool_calls": parallel}
    if kind != "chat":
        raise bad_request("tools: only for chat completions", "tools")
    if body.get("logprobs") not in (None, False):  # held-back text has no per-chunk logprobs
        raise bad_request("logprobs cannot be combined with tools", "logprobs")
    try:
        checked = check_tools(tools)
    except ValueError as exc:
        raise bad_request(str(exc), "tools") from exc
    text = json.dumps(checked, ensure_ascii=False, separators=(",", ":"))
    _unicode("tools", text)
    chosen = _choice(choice, [t["function"]["name"] for t in checked])
    if chosen not in ("auto", "none"):
        if _constrained(body):
            raise bad_request(
                "tool_choice required or a named function constrains the output itself: it "
                "cannot be combined with response_format, grammar or json_schema",
                "tool_choice",
            )
        try:  # the node builds the grammar in its model's syntax; the schemas are checked here
            only = "" if chosen == "required" else chosen.removeprefix(NAMED_CHOICE)
            tool_call_grammar(checked, "hermes", only=only)
        except ValueError as exc:
            raise bad_request(str(exc), "tools") from exc
    return {
        "tools": text,
        "tool_choice": chosen,
        "parallel_tool_calls": parallel,
    }


def _constrained(body: dict[str, Any]) -> bool:
    """Whether *body* asks for constrained output of its own (p2p/api/constrained_params.py)."""
    response_format = body.get("response_format")
    formatted = response_format is not None and response_format != {"type": "text"}
    return formatted or bool(body.get("grammar")) or bool(body.get("json_schema"))


def _unicode(where: str, *texts: str) -> None:
    """Each of *texts* encodable as UTF-8 (JSON allows lone surrogates; msgpack does not)."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            field = "tools" if where == "tools" else "messages"
            raise bad_request(f"{where} is not valid Unicode (a lone surrogate?)", field) from exc


def _choice(choice: object, names: list[str]) -> str:
    if choice is None:
        return "auto"
    if choice in ("auto", "none", "required"):
        return str(choice)
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and name in names):
        raise bad_request(
            "tool_choice: none, auto, required or {'type': 'function', 'function': {'name': "
            "...}} naming one of the tools",
            "tool_choice",
        )
    return NAMED_CHOICE + str(name)


def message_tool_fields(
    message: dict[str, Any], index: int, earlier: dict[str, str]
) -> tuple[tuple[ToolCallMessage, ...], str, str]:
    """An assistant message's `tool_calls`, a tool message's `tool_call_id` and `name` (the name
    of the call it answers when it gives none). *earlier* maps the call ids seen so far to
    their function names, and gains this message's."""
    where = f"messages[{index}]"
    raw_calls = message.get("tool_calls")
    if raw_calls is not None and not isinstance(raw_calls, list):
        raise bad_request(f"{where}.tool_calls must be a list", "messages")
    calls = []
    for call in raw_calls or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise bad_request(f"{where}.tool_calls: each is {{id, type, function}}", "messages")
        call_id, name = call.get("id", ""), function.get("name")
        arguments = function.get("arguments", "{}")
        try:
            ok = isinstance(arguments, str) and isinstance(json.loads(arguments), dict)
        except (ValueError, RecursionError):
            ok = False
        if not (isinstance(call_id, str) and isinstance(name, str) and ok):
            raise bad_request(
                f"{where}.tool_calls: an id, a function name and arguments as a JSON object",
                "messages",
            )
        _unicode(f"{where}.tool_calls", call_id, name, arguments)
        earlier[call_id] = name
        calls.append(ToolCallMessage(call_id, name, arguments))
    call_id, name = message.get("tool_call_id"), message.get("name")
    call_id, name = "" if call_id is None else call_id, "" if name is None else name
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise bad_request(f"{where}: tool_call_id and name must be strings", "messages")
    _unicode(where, call_id, name)
    if message.get("role") == "tool":
        if not call_id:
            raise bad_request(f"{where}: a tool message needs tool_call_id", "messages")
        name = name or earlier.get(call_id, "")
    return tuple(calls), call_id, name


def refuse_without_tools(request: wire.Generate, entries: list[dict[str, Any]]) -> None:
    """A 400 naming `tools` when the network's entry for the model (p2p/api/network_view.py
    `model_table`) says its providers cannot render tools. A model not listed is left to the
    generation (its 404)."""
    if not request.tools or request.tool_choice == "none":
        return
    for e in entries:
        if request.model == e["id"] or model_matches(request.model, e["sha256"], e["name"]):
            if TOOLS_CAPABILITY not in e.get("capabilities", ()):
                raise bad_request(
                    f"model {e['id']} does not support tools: its chat template "
                    f"({e.get('chat_format') or 'unknown'}) does not render tool definitions",
                    "tools",
                )
            return


def parsed_names(request: wire.Generate) -> tuple[str, ...]:
    """The functions whose calls the answer is searched for: none with tool_choice "none"."""
    if not request.tools or request.tool_choice == "none":
        return ()
    return tuple(tool_names(request.tools))


def calls_json(calls: list[ToolCall], *, streamed: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls):
        entry: dict[str, Any] = {
            "id": "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        out.append({"index": i, **entry} if streamed else entry)
    return out


def assistant_message(text: str, names: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
    """The chat answer's `message`, and whether it holds tool calls."""
    content, calls = parse_tool_calls(text, names) if names else (text, [])
    if not calls:
        return {"role": "assistant", "content": text}, False
    return {"role": "assistant", "content": content or None, "tool_calls": calls_json(calls)}, True


class ToolCallStream:
    """Streamed text with tool calls held back (module docstring): `feed` returns what may go
    out now, `finish` what is left as text and the calls."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.sent = 0  # characters of `text` already released
        self.text = ""
        self.holding = False  # an opener was seen: everything after it waits for the end

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.holding:
            return ""
        start = held_from(self.text)
        if start < len(self.text) and self._opens_at(start):
            self.holding = True
        out, self.sent = self.text[self.sent : max(start, self.sent)], max(start, self.sent)
        return out

    def _opens_at(self, start: int) -> bool:
        """Whether the held tail is an opener already, not a prefix that may still become text."""
        tail = self.text[start:].lstrip()
        return tail.startswith(("{", "[", *OPENERS))

    def finish(self) -> tuple[str, list[ToolCall]]:
        _content, calls = parse_tool_calls(self.text, self.names)
        if not calls:
            return self.text[self.sent :], []
        cut = held_from(self.text)  # where the calls begin: the text before it is content
        return self.text[self.sent : cut].rstrip() if cut > self.sent else "", calls
