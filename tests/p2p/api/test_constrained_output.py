"""Constrained output through the official `openai` client against a live network on the tiny
model (issue #17): `response_format` json_schema and json_object on chat and completions,
llama-server's `grammar` and `json_schema`, streaming and whole, greedy and sampled, several at
once in one batch; and the 400s: a schema that cannot be enforced, an unparsable grammar (the
node's bad_request), two constraints at once.

The tiny model's output is random: every string of the schema is bounded (maxLength) so that
the grammar completes within max_tokens, and whatever the model would say, the answer must
validate (`valid`, a small validator of the keywords used here)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.p2p.api.test_gateway import LiveNetwork, live_network_fixture

MODEL = "tiny-llama"
PROMPT = "The capital of France is"
MESSAGES: Any = [{"role": "user", "content": "Describe a person as JSON."}]
SCHEMA: dict[str, Any] = {
    "title": "Person",
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 3},
        "nick": {"anyOf": [{"type": "string", "maxLength": 4}, {"type": "null"}]},
    },
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
}
SAMPLED = {"temperature": 1.0, "seed": 3}

net = live_network_fixture(api_key=None)


@pytest.fixture(scope="module")
def api(net: LiveNetwork) -> openai.OpenAI:
    return net.openai()


def valid(value: Any, schema: dict[str, Any]) -> bool:
    """JSON Schema validation for the keywords SCHEMA uses."""
    if "anyOf" in schema:
        return any(valid(value, s) for s in schema["anyOf"])
    if "enum" in schema:
        return any(value == e and type(value) is type(e) for e in schema["enum"])
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if kind is not None and not checks[kind](value):
        return False
    if kind == "string" and len(value) > schema.get("maxLength", len(value)):
        return False
    if kind == "array":
        return len(value) <= schema.get("maxItems", len(value)) and all(
            valid(v, schema["items"]) for v in value
        )
    if kind == "object":
        properties = schema.get("properties", {})
        if not set(schema.get("required", ())) <= set(value):
            return False
        if schema.get("additionalProperties") is False and not set(value) <= set(properties):
            return False
        return all(valid(v, properties[k]) for k, v in value.items() if k in properties)
    return True


def chat(api: openai.OpenAI, **params: Any) -> Any:
    return api.chat.completions.create(
        model=MODEL, messages=MESSAGES, **{"max_tokens": 200, "temperature": 0, **params}
    )


def complete(api: openai.OpenAI, **params: Any) -> Any:
    return api.completions.create(
        model=MODEL, prompt=PROMPT, **{"max_tokens": 200, "temperature": 0, **params}
    )


# --- honoured --------------------------------------------------------------------------------


def test_the_validator_tells_valid_from_invalid() -> None:
    assert valid({"name": "x", "age": 3, "ok": True, "tags": ["a", 3], "nick": None}, SCHEMA)
    for bad in (
        {"name": "x", "age": 3},
        {"name": "x" * 9, "age": 3, "ok": True},
        {"name": "x", "age": 3.5, "ok": True},
        {"name": "x", "age": 3, "ok": True, "tags": ["c"]},
        {"name": "x", "age": 3, "ok": True, "other": 1},
    ):
        assert not valid(bad, SCHEMA)


@pytest.mark.parametrize("sampling", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_a_json_schema_answer_validates_on_chat(api: openai.OpenAI, sampling: Any) -> None:
    free = chat(api, **sampling).choices[0].message.content
    reply = chat(api, response_format=RESPONSE_FORMAT, **sampling)
    answer = json.loads(reply.choices[0].message.content)
    assert valid(answer, SCHEMA), answer
    assert reply.choices[0].finish_reason == "stop"
    with pytest.raises(ValueError):
        json.loads(free)  # the model would not have written it by itself


@pytest.mark.parametrize("sampling", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_a_json_schema_answer_validates_on_completions(api: openai.OpenAI, sampling: Any) -> None:
    reply = complete(api, extra_body={"response_format": RESPONSE_FORMAT}, **sampling)
    assert valid(json.loads(reply.choices[0].text), SCHEMA)


def test_llama_server_s_json_schema_parameter(api: openai.OpenAI) -> None:
    reply = complete(api, extra_body={"json_schema": SCHEMA}, **SAMPLED)
    assert valid(json.loads(reply.choices[0].text), SCHEMA)


def test_a_streamed_json_schema_answer_validates(api: openai.OpenAI) -> None:
    stream = chat(api, response_format=RESPONSE_FORMAT, stream=True, **SAMPLED)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert valid(json.loads(text), SCHEMA)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_json_object_gives_a_json_object(api: openai.OpenAI, kind: str) -> None:
    fmt = {"type": "json_object"}
    for seed in (1, 2):
        if kind == "chat":
            text = chat(api, response_format=fmt, temperature=0.7, seed=seed, max_tokens=400)
            text = text.choices[0].message.content
        else:
            reply = complete(api, extra_body={"response_format": fmt}, temperature=0.7, seed=seed)
            text = reply.choices[0].text
        try:
            assert isinstance(json.loads(text), dict)
        except json.JSONDecodeError:  # a random model may not close it within max_tokens
            assert text.startswith("{")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("sampling", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_a_gbnf_grammar_gives_exactly_one_of_its_words(
    api: openai.OpenAI, stream: bool, sampling: Any
) -> None:
    grammar = {"grammar": 'root ::= ("yes" | "no")'}
    if stream:
        chunks = complete(api, extra_body=grammar, stream=True, **sampling)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    else:
        text = complete(api, extra_body=grammar, **sampling).choices[0].text
    assert text in ("yes", "no")


def test_constrained_requests_together_in_one_batch(api: openai.OpenAI) -> None:
    """Not reproducible: the node batches them with each other and with a free request."""

    def one(i: int) -> str:
        if i == 0:
            return str(complete(api, max_tokens=30).choices[0].text)
        if i % 2:
            return str(
                chat(api, response_format=RESPONSE_FORMAT, seed=i, temperature=1)
                .choices[0]
                .message.content
            )
        return str(
            complete(api, extra_body={"grammar": 'root ::= ("yes" | "no")'}, seed=i).choices[0].text
        )

    with ThreadPoolExecutor(5) as pool:
        texts = list(pool.map(one, range(5)))
    for i, text in enumerate(texts[1:], 1):
        assert valid(json.loads(text), SCHEMA) if i % 2 else text in ("yes", "no"), texts


def test_response_format_text_asks_for_nothing(api: openai.OpenAI) -> None:
    plain = complete(api).choices[0].text
    assert complete(api, extra_body={"response_format": {"type": "text"}}).choices[0].text == plain


# --- refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"json_schema": {"type": "integer", "minimum": 0}}, "json_schema", "minimum"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"oneOf": [{}]}},
                }
            },
            "response_format",
            "oneOf",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"$ref": "https://example.com/s"}},
                }
            },
            "response_format",
            "$ref",
        ),
        ({"response_format": {"type": "xml"}}, "response_format", "json_object"),
        ({"json_schema": "{}"}, "json_schema", "object"),
        ({"grammar": "x" * 70_000}, "grammar", "bytes"),
        ({"grammar": "root ::= " + "(" * 2000 + '"a"' + ")" * 2000}, "grammar", "nest"),
        ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, "json_schema", "only one"),
    ],
    ids=["minimum", "oneOf", "remote-ref", "type", "not-an-object", "too-large", "deep", "two"],
)
def test_what_cannot_be_enforced_is_a_400_naming_it(
    api: openai.OpenAI, body: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        complete(api, max_tokens=4, extra_body=body)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == param
    assert param in info.value.message and words in info.value.message


@pytest.mark.parametrize("grammar", ['root ::= ("yes" | "no"', "start ::= [a-z]"])
def test_an_unparsable_grammar_is_a_400_from_the_node(api: openai.OpenAI, grammar: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        complete(api, max_tokens=4, extra_body={"grammar": grammar})
    assert "grammar" in info.value.message
    assert complete(api, extra_body={"grammar": 'root ::= "ok"'}).choices[0].text == "ok"
