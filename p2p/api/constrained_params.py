"""Constrained output in an OpenAI request body: `response_format` (OpenAI's `json_object` and
`json_schema`, on chat and completions) and llama-server's `grammar` (GBNF) and `json_schema`,
as the one GBNF grammar `wire.Generate.grammar` carries.

The gateway converts (inference/json_schema_grammar.py), so a node only ever sees GBNF and
every node enforces the same grammar. A schema the converter cannot honour exactly, a grammar
over the wire's limit, or two of these parameters at once is a 400 naming the parameter; a
GBNF grammar llama.cpp cannot parse is refused by the node (`bad_request`, a 400 too). Pure
functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from inference.generation import MAX_GRAMMAR_BYTES
from inference.grammar import MAX_GRAMMAR_NESTING, grammar_nesting
from inference.json_schema_grammar import SchemaError, any_object_gbnf, schema_to_gbnf
from p2p.api.openai_errors import bad_request, internal_error

PARAMETERS = ("response_format", "grammar", "json_schema")
# OpenAI's rule for json_schema.name.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RESPONSE_FORMAT_KEYS = {
    "text": {"type"},
    "json_object": {"type", "schema"},  # llama-server takes a schema here too
    "json_schema": {"type", "json_schema", "schema"},
}
_JSON_SCHEMA_KEYS = {"name", "schema", "strict", "description"}


def constrained_grammar(body: dict[str, Any]) -> str:
    """The GBNF grammar the body asks for; "" when it asks for none."""
    asked = [
        name
        for name in PARAMETERS
        if body.get(name) not in (None, "")
        and not (name == "response_format" and body.get(name) == {"type": "text"})
    ]
    if len(asked) > 1:
        both = " and ".join(asked)
        raise bad_request(
            f"{asked[1]}: only one of {', '.join(PARAMETERS)} per request (got {both})", asked[1]
        )
    if not asked:
        _response_format(body.get("response_format"))  # still checked: {"type": "text"}
        return ""
    name = asked[0]
    if name == "grammar":
        grammar = _grammar(body["grammar"])
    elif name == "json_schema":
        grammar = _schema(body["json_schema"], "json_schema")
    else:
        grammar = _response_format(body["response_format"])
    return grammar


def _grammar(value: object) -> str:
    if not isinstance(value, str):
        raise bad_request("grammar must be a string (GBNF, llama.cpp's grammar format)", "grammar")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise bad_request("grammar is not valid Unicode (a lone surrogate?)", "grammar") from exc
    if size > MAX_GRAMMAR_BYTES:
        raise bad_request(
            f"grammar takes {size} bytes as UTF-8; at most {MAX_GRAMMAR_BYTES}", "grammar"
        )
    if "\0" in value:
        raise bad_request("grammar must not contain NUL characters", "grammar")
    if grammar_nesting(value) > MAX_GRAMMAR_NESTING:
        raise bad_request(f"grammar: parentheses nest over {MAX_GRAMMAR_NESTING} deep", "grammar")
    return value


def _schema(value: object, param: str) -> str:
    if not isinstance(value, dict):
        raise bad_request(f"{param} must be a JSON schema (an object)", param)
    try:
        return schema_to_gbnf(value)
    except SchemaError as exc:
        raise bad_request(f"{param}: the schema cannot be enforced: {exc}", param) from exc


def _response_format(value: object) -> str:
    param = "response_format"
    if value is None:
        return ""
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or kind not in _RESPONSE_FORMAT_KEYS:
        raise bad_request(
            f"{param} must be {{'type': 'text' | 'json_object' | 'json_schema', ...}}", param
        )
    extra = set(value) - _RESPONSE_FORMAT_KEYS[kind]
    if extra:
        raise bad_request(f"{param}: unknown field {sorted(extra)[0]!r} for type {kind}", param)
    if kind == "text":
        return ""
    if kind == "json_object":
        return _schema(value["schema"], param) if "schema" in value else _any_object()
    spec = value.get("json_schema")
    if spec is None:  # llama-server's shorthand: the schema beside the type
        if "schema" not in value:
            raise bad_request(f"{param}: json_schema needs a json_schema object", param)
        return _schema(value["schema"], param)
    if not isinstance(spec, dict) or set(spec) - _JSON_SCHEMA_KEYS:
        raise bad_request(
            f"{param}: json_schema must be an object of {', '.join(sorted(_JSON_SCHEMA_KEYS))}",
            param,
        )
    name = spec.get("name")
    if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise bad_request(f"{param}: json_schema.name: 1-64 of a-z, A-Z, 0-9, _ and -", param)
    if spec.get("strict") not in (None, True, False):
        raise bad_request(f"{param}: json_schema.strict must be true or false", param)
    if spec.get("description") is not None and not isinstance(spec["description"], str):
        raise bad_request(f"{param}: json_schema.description must be a string", param)
    # strict or not, the output follows the schema exactly (a grammar cannot do less)
    return _schema(spec["schema"], param) if "schema" in spec else _any_object()


def _any_object() -> str:
    try:
        return any_object_gbnf()
    except SchemaError as exc:  # not for this fixed schema: a broken converter install
        raise internal_error(exc) from exc
