"""`logprobs`, `top_logprobs` and `echo` through the official `openai` client against a live
network (tests/p2p/api/test_gateway.py's `LiveNetwork`): the entries are the package's own types,
log-probabilities are <= 0, alternatives sorted, a greedy choice is the top alternative and has
its own logprob there, streaming and whole answers agree, the numbers are the model's (scored
again on a worker), and bad values are 400s naming the parameter (issue #17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import trio
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from inference.generation import GenerationRequest
from inference.scoring import ScoreRequest
from inference.token_logprobs import TokenLogprob
from inference.worker import ModelWorker
from p2p.api.logprob_shape import LogprobShapes
from p2p.api.openai_errors import ApiError
from p2p.api.request_parsing import parse_generation
from p2p.client.token_stream import LoggedText
from tests.p2p.api.test_gateway import LiveNetwork, live_network_fixture

MODEL = "tiny-llama"
PROMPT = "The capital of France is"
EXACT = {"reproducible": True}
CHAT = [{"role": "user", "content": "Say something about Paris."}]

net = live_network_fixture(api_key=None)


@pytest.fixture(scope="module")
def api(net: LiveNetwork) -> openai.OpenAI:
    return net.openai()


def chat(api: openai.OpenAI, **params: Any) -> Any:
    return api.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, temperature=0, extra_body=EXACT, **params
    )


def check_entries(content: list[Any], n_top: int) -> None:
    assert content
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes is not None
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == n_top and tops == sorted(tops, reverse=True)
        if n_top:  # greedy: the chosen token is the top-1, with the same logprob
            assert entry.top_logprobs[0].token == entry.token
            assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_chat_logprobs_whole(api: openai.OpenAI) -> None:
    answer = chat(api, logprobs=True, top_logprobs=3)
    assert isinstance(answer, ChatCompletion)
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    check_entries(choice.logprobs.content, 3)
    assert "".join(e.token for e in choice.logprobs.content) == choice.message.content


def test_chat_logprobs_without_alternatives(api: openai.OpenAI) -> None:
    choice = chat(api, logprobs=True).choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    check_entries(choice.logprobs.content, 0)


def test_chat_streaming_agrees_with_whole(api: openai.OpenAI) -> None:
    whole = chat(api, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    streamed: list[Any] = []
    for chunk in chat(api, logprobs=True, top_logprobs=2, stream=True):
        assert isinstance(chunk, ChatCompletionChunk)
        for choice in chunk.choices:
            if choice.delta.content:
                assert choice.logprobs is not None and choice.logprobs.content
                streamed.extend(choice.logprobs.content)
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in whole]


def test_no_logprobs_unless_asked(api: openai.OpenAI) -> None:
    assert chat(api).choices[0].logprobs is None


def completion(api: openai.OpenAI, **params: Any) -> Completion:
    params.setdefault("max_tokens", 12)
    return api.completions.create(
        model=MODEL, prompt=PROMPT, temperature=0, extra_body=EXACT, **params
    )


def test_completion_logprobs_legacy_shape(api: openai.OpenAI) -> None:
    choice = completion(api, logprobs=3).choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(logprob)  # greedy: the best is the chosen
        assert top.get(token) == pytest.approx(logprob)


def test_completion_logprobs_streamed(api: openai.OpenAI) -> None:
    whole = completion(api, logprobs=1).choices[0].logprobs
    assert whole is not None
    tokens: list[str] = []
    offsets: list[int] = []
    for chunk in completion(api, logprobs=1, stream=True):  # type: ignore[call-overload]
        for choice in chunk.choices:
            if choice.text:
                tokens.extend(choice.logprobs.tokens)
                offsets.extend(choice.logprobs.text_offset)
    assert tokens == whole.tokens and offsets == whole.text_offset


def test_logprobs_are_the_models_own(api: openai.OpenAI, tiny_gguf: Path) -> None:
    """The gateway's numbers equal teacher-forcing the same tokens on a worker of the model."""
    lp = completion(api, logprobs=2).choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None
    result = trio.run(_scored_greedy, tiny_gguf)
    n = len(lp.token_logprobs)
    assert len(result) >= n  # a run's last tokens may carry no text
    for mine, theirs in zip(result[:n], lp.token_logprobs, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-3)


async def _scored_greedy(tiny_gguf: Path) -> list[float]:
    """The greedy run's tokens on a worker of the tiny model, scored by teacher-forcing."""
    with trio.fail_after(60):
        async with ModelWorker(tiny_gguf, n_ctx=512, n_threads=2) as worker:
            request = GenerationRequest(PROMPT, max_tokens=12, reproducible=True)
            ids: list[int] = []
            async with worker.generate(request) as stream:
                async for item in stream:
                    ids.extend(item.token_ids)
            scored = await worker.score(ScoreRequest(request, ids))
    return [p.logprob for p in scored.positions]


def test_echo_starts_the_text_with_the_prompt(api: openai.OpenAI) -> None:
    plain = completion(api).choices[0].text
    echoed = completion(api, echo=True).choices[0].text
    assert echoed == PROMPT + plain
    streamed = "".join(
        c.choices[0].text
        for c in completion(api, echo=True, stream=True)  # type: ignore[call-overload]
        if c.choices
    )
    assert streamed == PROMPT + plain


def prompt_scores(tiny_gguf: Path) -> list[tuple[int, float]]:
    """Worker-level reference: the prompt's tokens after the first, scored by teacher-forcing
    them after the first (BOS) alone."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    ids = vocab.tokenize(PROMPT.encode(), add_bos=True, special=True)

    async def score() -> list[tuple[int, float]]:
        with trio.fail_after(60):
            async with ModelWorker(tiny_gguf, n_ctx=512, n_threads=2) as worker:
                scored = await worker.score(ScoreRequest(GenerationRequest(""), ids[1:]))
        return [(p.token, p.logprob) for p in scored.positions]

    return trio.run(score)


def test_echo_with_logprobs_scores_the_prompt(api: openai.OpenAI, tiny_gguf: Path) -> None:
    plain = completion(api, logprobs=2).choices[0]
    choice = completion(api, echo=True, logprobs=2).choices[0]
    assert choice.text == PROMPT + plain.text
    lp, generated = choice.logprobs, plain.logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.tokens is not None
    assert generated is not None and generated.token_logprobs is not None
    reference = prompt_scores(tiny_gguf)
    n = len(reference) + 1  # the first prompt token (BOS) has no logprob
    assert lp.token_logprobs[0] is None and lp.top_logprobs is not None
    for mine, (_, theirs) in zip(lp.token_logprobs[1:n], reference, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-3)
    assert lp.tokens[n:] == generated.tokens
    assert lp.token_logprobs[n:] == pytest.approx(generated.token_logprobs, abs=1e-3)
    assert lp.text_offset is not None and lp.text_offset[n] == len(PROMPT)


def test_echo_with_max_tokens_0_scores_the_prompt_alone(
    api: openai.OpenAI, tiny_gguf: Path
) -> None:
    """lm-eval's loglikelihood request: the prompt back, its log-probabilities, nothing more."""
    answer = completion(api, echo=True, logprobs=0, max_tokens=0)
    choice = answer.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp is not None and lp.token_logprobs is not None
    reference = prompt_scores(tiny_gguf)
    assert len(lp.token_logprobs) == len(reference) + 1
    assert lp.token_logprobs[1:] == pytest.approx([t for _, t in reference], abs=1e-3)
    assert completion(api, echo=True, max_tokens=0).choices[0].text == PROMPT


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("chat", {"logprobs": "yes"}, "logprobs"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("chat", {"echo": True}, "echo"),
        ("completion", {"logprobs": 6}, "logprobs"),
        ("completion", {"logprobs": True}, "logprobs"),
        ("completion", {"logprobs": 1.5}, "logprobs"),
        ("completion", {"top_logprobs": 1}, "top_logprobs"),
        ("completion", {"echo": "yes"}, "echo"),
        ("completion", {"echo": True, "logprobs": 1, "stream": True}, "stream"),
        ("completion", {"echo": True, "max_tokens": 0, "stream": True}, "stream"),
        ("completion", {"max_tokens": 0}, "max_tokens"),
        ("completion", {"echo": True, "max_tokens": -1}, "max_tokens"),
    ],
)
def test_bad_values_are_refused_by_name(kind: str, body: dict[str, Any], param: str) -> None:
    base: dict[str, Any] = {"model": MODEL}
    base.update({"messages": CHAT} if kind == "chat" else {"prompt": PROMPT})
    with pytest.raises(ApiError) as caught:
        parse_generation({**base, **body}, kind)
    assert caught.value.status == 400 and caught.value.param == param


def test_refused_through_the_client(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(api, top_logprobs=2)
    assert caught.value.body is not None and "top_logprobs" in str(caught.value.body)


def test_text_without_its_entries_is_an_error_not_a_gap() -> None:
    """A node that sends no entries (an older version) cannot give an answer with holes."""
    entry = TokenLogprob(5, b" a", -0.5)
    shapes = LogprobShapes("completion", offset=3)
    shapes.add(LoggedText.of(" a", (entry,)))
    assert shapes.gap() is None
    shapes.add("b")
    gap = shapes.gap()
    assert gap is not None and gap.status == 502 and gap.param == "logprobs"
    assert shapes.whole()["text_offset"] == [3]


@pytest.mark.parametrize(
    ("kind", "body", "count"),
    [
        ("completion", {"logprobs": False}, -1),
        ("completion", {"logprobs": 0}, 0),
        ("completion", {"logprobs": 5}, 5),
        ("chat", {"logprobs": False}, -1),
        ("chat", {"logprobs": True}, 0),
        ("chat", {"logprobs": True, "top_logprobs": 20}, 20),
    ],
)
def test_what_reaches_the_wire(kind: str, body: dict[str, Any], count: int) -> None:
    base: dict[str, Any] = {"model": MODEL}
    base.update({"messages": CHAT} if kind == "chat" else {"prompt": PROMPT})
    call = parse_generation({**base, **body}, kind)
    assert call.request.logprobs == call.logprobs.count == count
    assert not call.request.prompt_logprobs


def test_echo_with_logprobs_asks_the_node_for_the_prompts_entries() -> None:
    body = {"model": MODEL, "prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 0}
    call = parse_generation(body, "completion")
    assert call.request.prompt_logprobs and call.request.max_tokens == 1
    assert call.logprobs.echo and call.logprobs.prompt_only
