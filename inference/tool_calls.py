"""Tool calls in a model's output: finding them (OpenAI's `message.tool_calls`) and the grammar
that makes a model write one (`tool_choice` "required" or a named function).

Models write tool calls in their family's own syntax; the common ones:

- "hermes" (Hermes, Qwen 2.5/3, many fine-tunes): `<tool_call>{"name": .., "arguments": ..}
  </tool_call>`, once per call;
- "llama3" (Llama 3.1+): the whole answer is `{"name": .., "parameters": ..}`, optionally after
  `<|python_tag|>`;
- "mistral": `[TOOL_CALLS][{"name": .., "arguments": ..}, ...]`.

`parse_tool_calls` tries them all (the gateway, which parses, does not know the template) and
accepts only calls of the functions the request declared, with an object of arguments: text
that merely looks like a call of something else stays text. `tool_call_format` reads which one a
template uses (for the grammar, which must match what the model was trained to write); the
grammar's JSON part is inference/json_schema_grammar.py's, from the tools' parameter schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from typing import Any

import attrs

from inference.json_schema_grammar import schema_to_gbnf

FORMATS = ("hermes", "llama3", "mistral")
# Where a call may begin in streamed text: text from the first of these on is held back until
# the answer ends (a call is only known complete at the end). "{" only at the very start.
OPENERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@attrs.frozen
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's `function.arguments`)


def tool_call_format(chat_template: str | None) -> str:
    """Which syntax *chat_template* teaches its model (hermes when it does not say)."""
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or "ipython" in template or '"parameters"' in template:
        return "llama3"
    return "hermes"


def _call(obj: object, names: Collection[str]) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(args, dict):
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def _json_values(text: str) -> list[Any] | None:
    """*text* as a sequence of JSON values separated by whitespace or ';', or None."""
    decoder, at = json.JSONDecoder(), 0
    values: list[Any] = []
    while True:
        while at < len(text) and text[at] in " \t\r\n;":
            at += 1
        if at == len(text):
            return values
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            return None
        values.append(value)


def _calls_of(values: Sequence[Any], names: Collection[str]) -> list[ToolCall] | None:
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    calls = [_call(v, names) for v in flat]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def parse_tool_calls(text: str, names: Collection[str]) -> tuple[str, list[ToolCall]]:
    """The content left once the calls are taken out, and the calls of functions in *names*
    that *text* makes (none: the text unchanged)."""
    if "<tool_call>" in text:
        calls: list[ToolCall] = []
        for match in _HERMES.finditer(text):
            values = _json_values(match.group(1))
            found = _calls_of(values, names) if values else None
            cut_short = not match.group(0).endswith("</tool_call>")  # the answer ended in it
            if found is None and cut_short and calls:
                break  # the calls before the one max_tokens cut off still stand
            if found is None:
                return text, []
            calls.extend(found)
        return text[: text.index("<tool_call>")].strip(), calls
    if "[TOOL_CALLS]" in text:
        head, _, tail = text.partition("[TOOL_CALLS]")
        values = _json_values(tail)
        found = _calls_of(values, names) if values else None
        return (head.strip(), found) if found else (text, [])
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if body.startswith(("{", "[")):
        values = _json_values(body)
        found = _calls_of(values, names) if values else None
        if found:
            return "", found
    return text, []


def held_from(text: str) -> int:
    """Where streamed *text* must start being held back (len(text): nothing held): at an opener,
    at a tail that could still become one, or from the start when the answer opens with JSON."""
    if text.lstrip().startswith(("{", "[")):
        return 0
    at = min((i for i in (text.find(o) for o in OPENERS) if i >= 0), default=-1)
    if at >= 0:
        return at
    for start in range(max(0, len(text) - max(map(len, OPENERS))), len(text)):
        if any(o.startswith(text[start:]) for o in OPENERS):
            return start
    if not text.strip():
        return 0  # only whitespace yet: the answer may still open with JSON
    return len(text)


# --- the grammar of tool_choice "required" / a named function --------------------------------


def _schema(tools: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    choices = []
    for tool in tools:
        function = tool["function"]
        parameters = function.get("parameters") or {"type": "object"}
        choices.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, key: parameters},
                "required": ["name", key],
                "additionalProperties": False,
            }
        )
    return choices[0] if len(choices) == 1 else {"anyOf": choices}  # disjoint: names differ


def tool_call_grammar(
    tools: Sequence[dict[str, Any]], fmt: str, *, only: str = "", parallel: bool = True
) -> str:
    """A GBNF grammar (root `root`) of one call — or several when *parallel* — of *tools* (of
    the function named *only*, when given) in syntax *fmt*. ValueError when a tool's parameters
    are a schema the converter cannot turn into a grammar."""
    chosen = [t for t in tools if not only or t["function"]["name"] == only]
    if not chosen:
        raise ValueError(f"no tool named {only!r}")
    schema = _schema(chosen, "parameters" if fmt == "llama3" else "arguments")
    try:
        rules = schema_to_gbnf(schema)
    except ValueError as exc:  # SchemaError: a keyword the grammar could not honour exactly
        raise ValueError(f"a tool's parameters cannot be used as a grammar: {exc}") from exc
    rules = re.sub(r"^root ::=", "tool-call ::=", rules, flags=re.MULTILINE)
    if fmt == "mistral":
        more = ' ("," tool-call)*' if parallel else ""
        root = f'root ::= "[TOOL_CALLS][" tool-call{more} "]"'
    elif fmt == "llama3":  # its template has no syntax for several calls in one answer
        root = "root ::= tool-call"
    else:
        one = r'"<tool_call>\n" tool-call "\n</tool_call>"'
        more = f' ("\\n" {one})*' if parallel else ""
        root = f"root ::= {one}{more}"
    return f"{root}\n{rules}"


# --- tool definitions, as a request sends them -----------------------------------------------

MAX_TOOLS = 64
MAX_TOOLS_BYTES = 64 * 1024  # the tools' JSON text, UTF-8
MAX_SCHEMA_DEPTH = 16
# OpenAI's rule for function names; it also keeps names out of grammar and template syntax.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _depth(value: object, limit: int) -> bool:
    """Whether *value* nests at most *limit* containers deep (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level >= limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((v, level + 1) for v in children)
    return True


def check_tools(tools: object) -> list[dict[str, Any]]:
    """OpenAI's `tools` as [{"type": "function", "function": {"name", "description"?,
    "parameters"?}}], bounded, names distinct and well formed; ValueError saying what is
    wrong. Returns them normalised (only those keys)."""
    if not isinstance(tools, list) or not 0 < len(tools) <= MAX_TOOLS:
        raise ValueError(f"tools must be a list of 1 to {MAX_TOOLS} tools")
    out, names = [], set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
        ):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        name, parameters = function.get("name"), function.get("parameters", {"type": "object"})
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"tools[{i}].function.name: 1 to 64 of a-z, A-Z, 0-9, _ and -")
        if name in names:
            raise ValueError(f"tools[{i}].function.name: {name} is declared twice")
        names.add(name)
        if not isinstance(parameters, dict) or not _depth(parameters, MAX_SCHEMA_DEPTH):
            raise ValueError(
                f"tools[{i}].function.parameters: a JSON schema object, at most "
                f"{MAX_SCHEMA_DEPTH} levels deep"
            )
        entry: dict[str, Any] = {"name": name, "parameters": parameters}
        description = function.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise ValueError(f"tools[{i}].function.description must be a string")
            entry["description"] = description
        out.append({"type": "function", "function": entry})
    return out


def tools_from_json(text: str) -> list[dict[str, Any]]:
    """`check_tools` of the JSON text *text* (at most MAX_TOOLS_BYTES); ValueError if not."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TOOLS_BYTES:
        raise ValueError(f"tools: at most {MAX_TOOLS_BYTES} bytes of JSON")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError("tools: not valid JSON") from exc
    return check_tools(value)
