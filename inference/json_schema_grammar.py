"""JSON schemas (OpenAI's response_format, llama-server's json_schema) as GBNF grammars, so that
constrained output (inference/grammar.py) validates against the schema it was asked for.

The conversion is llama-cpp-python's (`llama_cpp.llama_grammar.SchemaConverter`, a port of
llama.cpp's json-schema-to-grammar), behind a check of our own, because that converter ignores
what it does not understand and has a few unsound corners (read in its source, version 0.3.x):
it drops `minimum`/`maximum` and other keywords silently, takes `oneOf` for `anyOf`, merges only
the properties of `allOf`, emits patterns as raw regular expressions inside JSON strings, lets
raw control characters into strings, and mis-escapes literals holding `"` or `\\`. So
`schema_to_gbnf` first walks the schema and refuses, naming the keyword and where it is, every
validation keyword the branch the converter takes does not honour, and literals it cannot
spell; it bounds the schema's size, depth and repetition counts (the grammar of `maxItems: N`
grows with N); refuses references outside the document (the converter would fetch https ones);
and fixes the string-character rule. What it lets through converts to a grammar whose every
output parses as JSON and validates against the schema (the grammar may be stricter: no
additional properties unless the schema names them, one optional space between tokens).

Pure Python, no llama.cpp calls: the gateway converts before a request reaches any node.
"""

from __future__ import annotations

from typing import Any

from inference.generation import MAX_GRAMMAR_BYTES

# Subschemas per schema, and nesting: what a real response schema needs many times over.
MAX_SCHEMA_NODES = 1000
MAX_SCHEMA_DEPTH = 32
# minItems/maxItems/minLength/maxLength: the grammar spells out each optional repetition, as
# parentheses nested that deep (inference/grammar.py MAX_GRAMMAR_NESTING bounds them).
MAX_REPEAT = 256

TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
# Keywords that only annotate (a validator ignores them): dropped before conversion.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_DEFINITIONS = ("$defs", "definitions")
_STRING_FORMATS = ("date", "time", "date-time", "uuid", *(f"uuid{i}" for i in range(1, 6)))
# The converter's character rule lets control characters into strings, which JSON forbids.
_LOOSE_CHAR = r'char ::= [^"\\] | '
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | '


class SchemaError(ValueError):
    """The schema cannot be honoured exactly; the message names the keyword and where."""


def schema_to_gbnf(schema: object) -> str:
    """A GBNF grammar (root rule `root`) whose outputs are JSON documents valid under
    `schema`; SchemaError when the schema uses what cannot be honoured exactly."""
    budget = [MAX_SCHEMA_NODES]
    cleaned = _clean(schema, "", 0, budget)
    try:
        from llama_cpp import llama_grammar

        make: Any = llama_grammar.SchemaConverter  # untyped
        converter = make(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        resolved = converter.resolve_refs(cleaned, "input")
        converter.visit(resolved, "")
        grammar = str(converter.format_grammar())
    except RecursionError as e:
        raise SchemaError("the schema's references nest too deeply") from e
    except Exception as e:  # the converter's asserts and lookups on what it cannot convert
        raise SchemaError(f"could not be converted to a grammar ({type(e).__name__})") from e
    lines = [
        _JSON_CHAR + line[len(_LOOSE_CHAR) :] if line.startswith(_LOOSE_CHAR) else line
        for line in grammar.split("\n")
    ]
    if any(line.startswith("char ::=") and not line.startswith(_JSON_CHAR) for line in lines):
        raise SchemaError("could not be converted to a grammar (unexpected string rule)")
    grammar = "\n".join(lines)
    size = len(grammar.encode("utf-8"))
    if size > MAX_GRAMMAR_BYTES:
        raise SchemaError(
            f"its grammar takes {size} bytes; at most {MAX_GRAMMAR_BYTES} (a smaller schema, or "
            "smaller maxItems/maxLength)"
        )
    return grammar


def any_object_gbnf() -> str:
    """response_format json_object: any JSON object."""
    return schema_to_gbnf({"type": "object"})


def _where(path: str) -> str:
    return path or "the schema's root"


def _clean(node: object, path: str, depth: int, budget: list[int]) -> dict[str, Any]:
    """`node` without annotations, every keyword checked (see the module docstring)."""
    if not isinstance(node, dict):
        raise SchemaError(f"{_where(path)}: a schema must be a JSON object")
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"{_where(path)}: nested more than {MAX_SCHEMA_DEPTH} deep")
    budget[0] -= 1
    if budget[0] < 0:
        raise SchemaError(f"more than {MAX_SCHEMA_NODES} subschemas")
    out: dict[str, Any] = {}
    for key in _DEFINITIONS:
        if key in node:
            defs = node[key]
            if not isinstance(defs, dict):
                raise SchemaError(f"{path}/{key} must be an object of schemas")
            out[key] = {
                n: _clean(s, f"{path}/{key}/{n}", depth + 1, budget) for n, s in defs.items()
            }
    body = {k: v for k, v in node.items() if k not in ANNOTATIONS and k not in _DEFINITIONS}
    allowed = _branch(body, path, depth, budget, out)
    for key in body:
        if key not in allowed:
            raise SchemaError(f"{path}/{key}: not supported here (it would not be enforced)")
    return out


def _branch(
    body: dict[str, Any], path: str, depth: int, budget: list[int], out: dict[str, Any]
) -> tuple[str, ...]:
    """Fill `out` with the keywords of the converter's branch for `body` (the order of its
    `visit`); the keywords that branch honours."""
    kind = body.get("type")
    if "$ref" in body:
        ref = body["$ref"]
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaError(f"{path}/$ref: only references inside the schema (#/...)")
        out["$ref"] = ref
        return ("$ref",)
    if "oneOf" in body or "allOf" in body:
        key = "oneOf" if "oneOf" in body else "allOf"
        raise SchemaError(f"{path}/{key}: not supported (anyOf is)")
    if "anyOf" in body:
        options = body["anyOf"]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{path}/anyOf must be a non-empty list of schemas")
        out["anyOf"] = [
            _clean(s, f"{path}/anyOf/{i}", depth + 1, budget) for i, s in enumerate(options)
        ]
        return ("anyOf",)
    if isinstance(kind, list):
        if not kind or len(set(map(str, kind))) != len(kind) or any(t not in TYPES for t in kind):
            raise SchemaError(f"{path}/type: distinct names among {', '.join(TYPES)}")
        out["type"] = list(kind)
        return ("type",)
    if kind is not None and kind not in TYPES:
        raise SchemaError(f"{path}/type: one of {', '.join(TYPES)}")
    if kind is not None:
        out["type"] = kind
    if "const" in body or "enum" in body:
        key = "const" if "const" in body else "enum"
        values = [body["const"]] if key == "const" else body["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{path}/enum must be a non-empty list")
        for value in values:
            _spellable(value, f"{path}/{key}")
        out[key] = body[key]
        return (key, "type")
    if kind in (None, "object") and (
        "properties" in body
        or "required" in body
        or body.get("additionalProperties", True) is not True
    ):
        return _object(body, path, depth, budget, out)
    if kind in (None, "array") and ("items" in body or "prefixItems" in body):
        return _array(body, path, depth, budget, out)
    if kind in (None, "string") and "format" in body:
        if body["format"] not in _STRING_FORMATS:
            raise SchemaError(f"{path}/format: only {', '.join(_STRING_FORMATS)}")
        out["format"] = body["format"]
        return ("type", "format")
    if kind == "string" and ("minLength" in body or "maxLength" in body):
        _lengths(body, out, path, "minLength", "maxLength")
        return ("type", "minLength", "maxLength")
    if kind is None and body:
        raise SchemaError(f"{_where(path)}: says no type (or uses what is not supported)")
    return ("type",)


def _object(
    body: dict[str, Any], path: str, depth: int, budget: list[int], out: dict[str, Any]
) -> tuple[str, ...]:
    properties = body.get("properties", {})
    if not isinstance(properties, dict):
        raise SchemaError(f"{path}/properties must be an object of schemas")
    for name in properties:
        _spellable(name, f"{path}/properties")
    out["properties"] = {
        n: _clean(s, f"{path}/properties/{n}", depth + 1, budget) for n, s in properties.items()
    }
    required = body.get("required", [])
    if (
        not isinstance(required, list)
        or not all(isinstance(n, str) and n in properties for n in required)
        or len(set(required)) != len(required)
    ):
        raise SchemaError(f"{path}/required: distinct names of the listed properties")
    out["required"] = list(required)
    if "additionalProperties" in body:
        extra = body["additionalProperties"]
        if not isinstance(extra, bool):
            extra = _clean(extra, f"{path}/additionalProperties", depth + 1, budget)
        out["additionalProperties"] = extra
    return ("type", "properties", "required", "additionalProperties")


def _array(
    body: dict[str, Any], path: str, depth: int, budget: list[int], out: dict[str, Any]
) -> tuple[str, ...]:
    if "items" in body and "prefixItems" in body:
        raise SchemaError(f"{path}/prefixItems: not supported together with items")
    key = "items" if "items" in body else "prefixItems"
    items = body[key]
    if isinstance(items, list):  # a tuple: exactly these, in order
        if not items:
            raise SchemaError(f"{path}/{key} must not be empty")
        out[key] = [_clean(s, f"{path}/{key}/{i}", depth + 1, budget) for i, s in enumerate(items)]
        return ("type", key)
    if key == "prefixItems":
        raise SchemaError(f"{path}/prefixItems must be a list of schemas")
    out["items"] = _clean(items, f"{path}/items", depth + 1, budget)
    _lengths(body, out, path, "minItems", "maxItems")
    return ("type", "items", "minItems", "maxItems")


def _lengths(body: dict[str, Any], out: dict[str, Any], path: str, lo: str, hi: str) -> None:
    for key in (lo, hi):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPEAT:
            raise SchemaError(f"{path}/{key}: a whole number from 0 to {MAX_REPEAT}")
        out[key] = value
    if out.get(hi, MAX_REPEAT) < out.get(lo, 0):
        raise SchemaError(f"{path}/{hi} is less than {lo}")


def _spellable(value: object, where: str) -> None:
    """A literal the converter writes into the grammar correctly: strings (values, keys) free
    of quotes, backslashes, control characters and characters beyond U+FFFF."""
    if isinstance(value, str):
        if any(c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F or ord(c) > 0xFFFF for c in value):
            raise SchemaError(
                f"{where}: strings with quotes, backslashes, control characters or characters "
                "beyond U+FFFF are not supported"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _spellable(k, where)
            _spellable(v, where)
    elif isinstance(value, list):
        for v in value:
            _spellable(v, where)
    elif isinstance(value, float) and value != value:
        raise SchemaError(f"{where}: not a JSON value")
