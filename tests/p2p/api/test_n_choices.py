"""OpenAI's `n` through the official `openai` client against a live network (tests/p2p/api/
test_gateway.py's `LiveNetwork`): n choices with indices 0..n-1, whole and streamed, seed s + i
for choice i, usage with the prompt counted once, and the bound on n (p2p/api/choices.py)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, cast

import openai
import pytest
import trio

from p2p.api.choices import ChoicesResponse, Sent, choice_seed, merged_usage, sse_payloads
from p2p.api.gateway_queue import GatewayQueue
from p2p.api.request_parsing import MAX_CHOICES, parse_generation
from p2p.api.responses import SSE_HEADERS, sse
from p2p.metrics import Metrics
from p2p.protocol import wire
from tests.p2p.api.test_gateway import LiveNetwork, live_network_fixture

MODEL = "tiny-llama"
PROMPT = "The capital of France is"
# Seeded runs ask for `reproducible` (each alone on the node), so a choice's text is exactly
# that of the single request with its seed; ignore_eos makes every choice run to max_tokens.
SAMPLED: dict[str, Any] = {"temperature": 1.0, "seed": 41}
EXTRA = {"reproducible": True, "ignore_eos": True}

net = live_network_fixture(api_key=None)


@pytest.fixture(scope="module")
def api(net: LiveNetwork) -> openai.OpenAI:
    return net.openai()


def complete(api: openai.OpenAI, n: int, **params: Any) -> Any:
    params = {"max_tokens": 10, **SAMPLED, **params}
    extra = params.pop("extra_body", EXTRA)
    return api.completions.create(model=MODEL, prompt=PROMPT, n=n, extra_body=extra, **params)


def test_n_3_gives_three_choices_with_usage_counted_as_openai_does(api: openai.OpenAI) -> None:
    answer = complete(api, 3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and c.text for c in answer.choices)
    single = complete(api, 1)
    assert answer.usage.prompt_tokens == single.usage.prompt_tokens  # once, not three times
    assert answer.usage.completion_tokens == 3 * 10
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 30
    assert answer.id.startswith("cmpl-") and answer.model == MODEL


def test_choice_i_of_a_seeded_request_is_the_single_request_with_seed_plus_i(
    api: openai.OpenAI,
) -> None:
    texts = [c.text for c in complete(api, 3).choices]
    assert texts == [c.text for c in complete(api, 3).choices]  # reproducible
    singles = [complete(api, 1, seed=41 + i).choices[0].text for i in range(3)]
    assert texts == singles
    assert len(set(texts)) > 1  # three seeds, not one text three times


def test_unseeded_choices_each_get_their_own_seed(api: openai.OpenAI) -> None:
    answer = complete(api, 4, seed=None, temperature=1.5, max_tokens=16)
    texts = [c.text for c in answer.choices]
    assert len(texts) == 4 and len(set(texts)) > 1


def test_streamed_choices_carry_their_index_and_match_the_whole_answer(
    api: openai.OpenAI,
) -> None:
    whole = [c.text for c in complete(api, 3).choices]
    stream = complete(api, 3, stream=True, stream_options={"include_usage": True})
    texts: dict[int, str] = defaultdict(str)
    finished: dict[int, str] = {}
    usages = []
    ids = set()
    for chunk in stream:  # each one parsed into openai.types.Completion by the client
        ids.add(chunk.id)
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert [texts[i] for i in range(3)] == whole
    assert finished == {0: "length", 1: "length", 2: "length"}
    (usage,) = usages
    assert usage.completion_tokens == 30
    assert len(ids) == 1  # one response, one id


def test_chat_n_2_whole_and_streamed(api: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Say something."}]
    params: dict[str, Any] = dict(
        model=MODEL, messages=messages, max_tokens=8, n=2, seed=7, extra_body=EXTRA
    )
    whole = api.chat.completions.create(**params)
    assert [c.index for c in whole.choices] == [0, 1]
    assert all(c.message.role == "assistant" for c in whole.choices)
    assert whole.usage is not None and whole.usage.completion_tokens == 16
    roles: dict[int, str] = {}
    texts: dict[int, str] = defaultdict(str)
    for chunk in api.chat.completions.create(**params, stream=True):
        for choice in chunk.choices:
            if choice.delta.role:
                roles[choice.index] = choice.delta.role
            texts[choice.index] += choice.delta.content or ""
    assert roles == {0: "assistant", 1: "assistant"}
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]


def test_greedy_n_2_is_allowed(api: openai.OpenAI) -> None:
    answer = complete(api, 2, temperature=0, seed=None, extra_body={"ignore_eos": True})
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.text for c in answer.choices)


@pytest.mark.parametrize("n", [0, MAX_CHOICES + 1, 2.5, "2", True])
def test_n_out_of_bounds_is_400_naming_n(api: openai.OpenAI, n: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"n": n})
    body: Any = caught.value.body
    assert body["param"] == "n" and str(MAX_CHOICES) in body["message"]


def test_best_of_stays_refused(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, best_of=2)
    assert caught.value.body["param"] == "best_of"  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_model_with_n_is_404(api: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError):
        answer = api.completions.create(
            model="no-such-model", prompt=PROMPT, max_tokens=4, n=2, stream=stream
        )
        if stream:
            list(answer)  # type: ignore[arg-type]


def test_choices_refused_as_busy_are_503_before_the_stream_starts(api: openai.OpenAI) -> None:
    """Every choice waits in the gateway's queue, then fails before any text: a clean 503."""
    with pytest.raises(openai.InternalServerError) as caught:
        list(api.completions.create(model="tiny-busy", prompt=PROMPT, n=2, stream=True))
    assert caught.value.status_code == 503


# --- pure parts (plain calls) ----------------------------------------------------------------


def test_choice_seeds_follow_the_request_seed_and_wrap_within_the_wire_range() -> None:
    assert [choice_seed(5, i) for i in range(3)] == [5, 6, 7]
    assert choice_seed(wire.MAX_SEED, 1) == 0
    assert choice_seed(None, 2) is None
    call = parse_generation({"model": "m", "prompt": "p", "n": 3, "seed": 9}, "completion")
    assert call.n == 3 and call.request.seed == 9


def test_usage_of_n_choices_counts_the_prompt_once() -> None:
    usages = [
        {
            "prompt_tokens": 7,
            "completion_tokens": c,
            "total_tokens": 7 + c,
            "prompt_tokens_details": {"cached_tokens": k},
        }
        for c, k in ((3, 0), (5, 6), (4, 6))
    ]
    merged = merged_usage(usages)
    assert merged == {
        "prompt_tokens": 7,
        "completion_tokens": 12,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert usages[0]["completion_tokens"] == 3  # the choices' own are left alone


def test_sse_payloads_splits_events() -> None:
    data = b'data: {"a": 1}\n\ndata: [DONE]\n\n'
    assert sse_payloads(data) == ['{"a": 1}', "[DONE]"]


def _chunk(text: str) -> bytes:
    """A choice writer's stream chunk (its own id and index 0, as a single answer has)."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
    return sse({"id": "cmpl-child", "object": "text_completion", "created": 1, "choices": [choice]})


async def test_a_choice_failing_mid_stream_ends_the_merged_stream_with_its_error() -> None:
    call = parse_generation({"model": "m", "prompt": "p", "n": 2, "stream": True}, "completion")
    response = ChoicesResponse(cast(GatewayQueue, None), Metrics(), call)
    sender, sent = trio.open_memory_channel[Sent](math.inf)
    start = {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
    error = {"error": {"message": "broke", "type": "server_error", "param": None, "code": None}}
    for index, message in [
        (0, start),
        (0, _chunk("a")),
        (1, start),
        (1, _chunk("b")),
        (1, sse(error)),
        (0, _chunk("c")),  # after the error: the stream has ended
    ]:
        body = {"type": "http.response.body", "body": message, "more_body": True}
        sender.send_nowait((index, message if isinstance(message, dict) else body))
    sender.close()
    out: list[Any] = []

    async def send(message: Any) -> None:
        out.append(message)

    with trio.fail_after(10):
        await response._write_stream(sent, send)
    assert [m["type"] for m in out].count("http.response.start") == 1
    payloads = [p for m in out[1:] for p in sse_payloads(m["body"])]
    assert payloads[-1] == "[DONE]" and out[-1]["more_body"] is False
    events = [json.loads(p) for p in payloads[:-1]]
    assert [(e["choices"][0]["index"], e["choices"][0]["text"]) for e in events[:2]] == [
        (0, "a"),
        (1, "b"),
    ]
    assert {e["id"] for e in events[:2]} == {response.shape.id}
    assert events[2:] == [error]
