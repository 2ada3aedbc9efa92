"""GBNF grammars (GenerationRequest.grammar, inference/grammar.py) on the tiny GGUF, in both
workers: only output the grammar allows, greedy and sampled, batched and speculating; a grammar
llama.cpp cannot parse and a replayed token the grammar forbids are refused requests, never a
crash; scoring replays a constrained run (choice margin 0) and gives +inf to a forbidden token.

The tiny model's output is random, so these grammars are finite or periodic and max_tokens is
large enough for them to complete."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from inference.batching import BatchingWorker
from inference.generation import GenerationError, GenerationRequest
from inference.grammar import grammar_nesting
from inference.json_schema_grammar import SchemaError, schema_to_gbnf
from inference.scoring import ScoreRequest
from inference.worker import ModelWorker
from tests.inference.test_batching import run, run_together

PROMPT = "the capital of france is"
YES_NO = 'root ::= ("yes" | "no")'
# A small JSON object: what response_format's schemas become, by hand.
OBJECT = r'root ::= "{\"answer\": " ("true" | "false") ", \"n\": " [0-9] [0-9]? "}"'
OBJECT_RE = re.compile(r'\{"answer": (true|false), "n": [0-9][0-9]?\}')
GREEDY = GenerationRequest(PROMPT, max_tokens=40, grammar=YES_NO)
SAMPLED = attrs.evolve(GREEDY, temperature=1.5, seed=7, top_k=0, min_p=0)


@pytest.fixture(params=["batch", "solo"])
async def worker(request: pytest.FixtureRequest, tiny_gguf: Path) -> AsyncIterator[Any]:
    opened: Any = (
        BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=4, max_queue=8)
        if request.param == "batch"
        else ModelWorker(tiny_gguf, n_ctx=512, n_threads=2)
    )
    async with opened as w:
        yield w


@pytest.mark.parametrize("request_", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
async def test_output_is_one_of_the_grammar_s_words(worker: Any, request_: Any) -> None:
    with trio.fail_after(120):
        free = await run(worker, attrs.evolve(request_, grammar=""))
        result = await run(worker, request_)
    assert free.text not in ("yes", "no")  # the random model would not say either by itself
    assert result.text in ("yes", "no")
    assert result.done.finish_reason == "stop"


async def test_sampled_runs_spread_over_the_grammar_and_repeat_with_their_seed(
    worker: Any,
) -> None:
    with trio.fail_after(180):
        texts = [(await run(worker, attrs.evolve(SAMPLED, seed=s))).text for s in range(12)]
        again = (await run(worker, attrs.evolve(SAMPLED, seed=3))).text
    assert set(texts) == {"yes", "no"}
    assert again == texts[3]


@pytest.mark.parametrize(
    "extra",
    [{}, {"temperature": 0.8, "seed": 5}, {"repeat_penalty": 1.3}, {"logit_bias": {300: 5.0}}],
    ids=["greedy", "sampled", "penalized", "biased"],
)
async def test_a_structured_grammar_is_followed(worker: Any, extra: dict[str, Any]) -> None:
    request = GenerationRequest(PROMPT, max_tokens=60, grammar=OBJECT, **extra)
    with trio.fail_after(120):
        result = await run(worker, request)
    assert OBJECT_RE.fullmatch(result.text), result.text
    assert result.done.finish_reason == "stop"


async def test_concurrent_constrained_and_free_requests_in_one_batch(tiny_gguf: Path) -> None:
    requests = [
        attrs.evolve(SAMPLED, seed=1),
        GenerationRequest(PROMPT, max_tokens=60, grammar=OBJECT),
        GenerationRequest(PROMPT, max_tokens=20),
        attrs.evolve(GREEDY),
    ]
    async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=4) as batch:
        with trio.fail_after(120):
            results = await run_together(batch, requests)
    assert results[0].text in ("yes", "no") and results[3].text in ("yes", "no")
    assert OBJECT_RE.fullmatch(results[1].text)
    assert results[2].done.completion_tokens == 20  # the free one is not constrained


async def test_a_greedy_constrained_request_drafts_and_keeps_only_what_it_would_pick(
    tiny_gguf: Path,
) -> None:
    """A periodic grammar makes the greedy text repeat, so it drafts; kept drafts give the
    same text as decoding without speculation."""
    request = GenerationRequest(PROMPT, max_tokens=48, grammar='root ::= ("ab, " | "cd, ")+')
    async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=2) as batch:
        with trio.fail_after(120):
            drafted = await run(batch, request)
    async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=2, speculate=False) as b:
        with trio.fail_after(120):
            plain = await run(b, request)
    assert re.fullmatch(r"((ab|cd), )*(ab|cd)?,? ?", drafted.text), drafted.text
    assert drafted.done.accepted_draft_tokens > 0
    assert drafted.text == plain.text


async def test_an_unparsable_grammar_is_refused_and_the_worker_serves_on(worker: Any) -> None:
    # the last one nests deep enough to overflow llama.cpp's recursive parser (a segfault)
    deep = "root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000
    for bad in ('root ::= ("yes" | "no"', "start ::= [a-z]", 'root ::= x\nx ::= x "a"', deep):
        with trio.fail_after(60), pytest.raises(GenerationError, match="grammar"):
            await run(worker, attrs.evolve(GREEDY, grammar=bad))
    with trio.fail_after(60):
        assert (await run(worker, GREEDY)).text in ("yes", "no")


async def test_a_replay_the_grammar_forbids_is_refused_not_a_crash(
    worker: Any, tiny_gguf: Path
) -> None:
    import llama_cpp

    vocab = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    (x,) = vocab.tokenize(b"x", add_bos=False)
    with trio.fail_after(60), pytest.raises(GenerationError, match="grammar"):
        await run(worker, attrs.evolve(GREEDY, replay_tokens=(x,)))
    with trio.fail_after(60):
        assert (await run(worker, GREEDY)).text in ("yes", "no")


@pytest.mark.parametrize("request_", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
async def test_a_legal_replay_continues_exactly(worker: Any, request_: Any) -> None:
    request = GenerationRequest(PROMPT, max_tokens=60, grammar=OBJECT, seed=request_.seed)
    request = attrs.evolve(request, temperature=request_.temperature, top_k=0, min_p=0)
    with trio.fail_after(120):
        full = await run(worker, request)
        cut = len(full.ids) // 2
        resumed = await run(worker, attrs.evolve(request, replay_tokens=tuple(full.ids[:cut])))
    assert full.ids[:cut] + resumed.ids == full.ids


async def test_ignore_eos_still_ends_when_the_grammar_is_complete(worker: Any) -> None:
    with trio.fail_after(60):
        result = await run(worker, attrs.evolve(GREEDY, ignore_eos=True))
    assert result.text in ("yes", "no")
    assert result.done.finish_reason == "stop"


@pytest.mark.parametrize("request_", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
async def test_scoring_replays_a_constrained_run_and_rules_out_forbidden_tokens(
    tiny_gguf: Path, request_: Any
) -> None:
    request = GenerationRequest(PROMPT, max_tokens=60, grammar=OBJECT, seed=request_.seed)
    request = attrs.evolve(request, temperature=request_.temperature, reproducible=True)
    async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=2) as batch:
        with trio.fail_after(120):
            result = await run(batch, request)
            scored = await batch.score(ScoreRequest(request, result.ids))
            forged = [*result.ids]
            forged[3] = forged[2]  # `{"` then `"` again, which the grammar forbids
            broken = await batch.score(ScoreRequest(request, forged))
    assert [p.choice_margin for p in scored.positions] == [0.0] * len(result.ids)
    margins = [p.choice_margin for p in broken.positions]
    assert margins[:3] == [0.0] * 3
    assert all(m == float("inf") for m in margins[3:])


# --- JSON schemas (inference/json_schema_grammar.py) -----------------------------------------


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "integer", "minimum": 0}, "/minimum"),
        ({"type": "string", "pattern": "^a$"}, "/pattern"),
        ({"oneOf": [{"type": "string"}]}, "/oneOf"),
        ({"allOf": [{"type": "string"}]}, "/allOf"),
        ({"$ref": "https://example.com/schema.json"}, "/$ref"),
        (
            {"type": "object", "properties": {"a": {"type": "number", "multipleOf": 2}}},
            "/a/multipleOf",
        ),
        ({"type": "object", "properties": {'say "hi"': {}}}, "quotes"),
        ({"enum": ["back\\slash"]}, "backslashes"),
        ({"type": "object", "required": ["z"]}, "/required"),
        ({"type": "array", "items": {}, "maxItems": 100_000}, "/maxItems"),
        ({"type": "array", "items": {}, "minItems": 3, "maxItems": 2}, "less than"),
        ({"type": "string", "format": "email"}, "/format"),
        ({"type": "char"}, "/type"),
        ({"type": ["string", "string"]}, "/type"),
        ({"anyOf": [{"type": "string"}], "type": "string"}, "/type"),
        ([1], "JSON object"),
    ],
    ids=lambda x: str(x)[:30],
)
def test_what_a_grammar_would_not_enforce_is_refused_by_name(schema: Any, words: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(words)):
        schema_to_gbnf(schema)


def test_nesting_is_counted_outside_literals_classes_and_comments() -> None:
    assert grammar_nesting('root ::= ("(" [(] ("a")) # ((((') == 2
    assert grammar_nesting(r'root ::= "\"(((" [\]((] x') == 0


def test_a_schema_s_grammar_is_bounded() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(SchemaError, match="deep"):
        schema_to_gbnf(deep)
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1200)}}
    with pytest.raises(SchemaError, match="subschemas"):
        schema_to_gbnf(wide)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6, "description": "annotations are fine"},
        "n": {"type": "integer"},
        "kind": {"enum": ["cat", "dog", None]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 2},
    },
    "required": ["name", "n", "kind"],
    "additionalProperties": False,
    "$defs": {"tag": {"type": "string", "minLength": 1, "maxLength": 3}},
}


def _valid(value: Any) -> bool:
    """SCHEMA's rules, by hand."""
    tags = value.get("tags", [])
    return (
        isinstance(value, dict)
        and set(value) <= {"name", "n", "kind", "tags"}
        and {"name", "n", "kind"} <= set(value)
        and isinstance(value["name"], str)
        and len(value["name"]) <= 6
        and type(value["n"]) is int
        and value["kind"] in ("cat", "dog", None)
        and isinstance(tags, list)
        and len(tags) <= 2
        and all(isinstance(t, str) and 1 <= len(t) <= 3 for t in tags)
    )


async def test_schema_constrained_runs_validate_whatever_the_model_says(tiny_gguf: Path) -> None:
    """The random model, sampled hot over every token (byte tokens too): each answer parses,
    validates, and is valid UTF-8 with no replacement character."""
    grammar = schema_to_gbnf(SCHEMA)
    requests = [
        GenerationRequest(PROMPT, max_tokens=200, grammar=grammar, temperature=t, seed=s)
        for t, s in [(0, None), (1.0, 1), (1.5, 2), (1.5, 3), (2.0, 4), (2.0, 5)]
    ]
    requests = [attrs.evolve(r, top_k=0, min_p=0) for r in requests]
    async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=3) as batch:
        with trio.fail_after(180):
            results = await run_together(batch, requests)
    for result in results:
        assert "\ufffd" not in result.text, result.text
        assert _valid(json.loads(result.text)), result.text


@pytest.mark.parametrize(
    "sampling", [{}, {"temperature": 1.2, "seed": 9}, {"temperature": 0.8, "seed": 4, "top_k": 5}]
)
async def test_the_shortcut_picks_what_the_full_pass_picks(
    worker: Any, sampling: dict[str, Any]
) -> None:
    """inference/grammar.py `restricted`: with a bias of 0 (which changes no logit) the chain
    is no longer its filters alone, so every step takes the full pass; the text is the same."""
    request = GenerationRequest(PROMPT, max_tokens=120, grammar=schema_to_gbnf(SCHEMA), **sampling)
    with trio.fail_after(120):
        fast = await run(worker, request)
        full = await run(worker, attrs.evolve(request, logit_bias={0: 0.0}))
    assert fast.ids == full.ids
    assert _valid(json.loads(fast.text))


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampling", [{}, {"temperature": 0.7, "seed": 1}], ids=["greedy", "sampled"]
)
async def test_the_shortcut_on_the_default_model_s_vocabulary(
    default_model: Path, sampling: dict[str, Any]
) -> None:
    """262,144 tokens: the shortcut walks only the best of them, and still picks as the full
    pass (forced by a bias of 0) does; the answer validates."""
    prompt = (
        "<start_of_turn>user\nDescribe a pet as JSON with a name, a number n and a kind."
        "<end_of_turn>\n<start_of_turn>model\n"
    )
    request = GenerationRequest(
        prompt, max_tokens=64, grammar=schema_to_gbnf(SCHEMA), reproducible=True, **sampling
    )
    async with BatchingWorker(default_model, n_ctx=512, n_threads=2, slots=1) as batch:
        with trio.fail_after(300):
            fast = await run(batch, request)
            full = await run(batch, attrs.evolve(request, logit_bias={0: 0.0}))
    assert fast.ids == full.ids
    assert _valid(json.loads(fast.text)), fast.text
