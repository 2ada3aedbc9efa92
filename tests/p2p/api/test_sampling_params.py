"""Every sampling parameter the gateway takes has its effect, through the official `openai` client
against a live network (tests/p2p/api/test_gateway.py's `LiveNetwork`, one per module), and every
parameter of OpenAI's API or llama-server's that gpunet does not honour is a 400 naming it
(issue #17). Greedy and seeded runs ask for `reproducible`, so the same request gives the same
text however the node batches or caches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from p2p.api.openai_errors import ApiError
from p2p.api.request_parsing import parse_generation
from tests.p2p.api.test_gateway import LiveNetwork, live_network_fixture

MODEL = "tiny-llama"
PROMPT = "The capital of France is"
EOS = 2  # the tiny vocabulary's </s>
EXACT = {"reproducible": True}


net = live_network_fixture(api_key=None)


@pytest.fixture(scope="module")
def api(net: LiveNetwork) -> openai.OpenAI:
    return net.openai()


@pytest.fixture(scope="module")
def vocab(tiny_gguf: Path) -> Any:
    import llama_cpp

    return llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)


def complete(api: openai.OpenAI, max_tokens: int = 40, **params: Any) -> Any:
    """A completion of PROMPT: greedy unless told otherwise; parameters the `openai` package
    has no argument for go in the body as they are."""
    known = {"temperature", "seed", "logit_bias", "frequency_penalty", "presence_penalty"}
    extra = {k: v for k, v in params.items() if k not in known}
    return api.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=max_tokens,
        temperature=params.get("temperature", 0),
        extra_body={**EXACT, **extra},
        **{k: v for k, v in params.items() if k in known and k != "temperature"},
    )


def text(api: openai.OpenAI, max_tokens: int = 40, **params: Any) -> str:
    return str(complete(api, max_tokens, **params).choices[0].text)


def repeated_words(s: str) -> int:
    words = s.split()
    return len(words) - len(set(words))


SAMPLED: dict[str, Any] = {"temperature": 1.5, "seed": 11, "min_p": 0}


# --- honoured --------------------------------------------------------------------------------


def test_logit_bias_minus_100_removes_a_token_greedy_output_had(
    api: openai.OpenAI, vocab: Any
) -> None:
    first = text(api, max_tokens=1)
    (token,) = [t for t in range(vocab.n_vocab()) if vocab.detokenize([t]) == first.encode()]
    banned = text(api, max_tokens=1, logit_bias={str(token): -100})
    assert first and banned != first
    assert not text(api, logit_bias={str(token): -100}).startswith(first)


def test_logit_bias_plus_100_makes_a_token_every_token(api: openai.OpenAI, vocab: Any) -> None:
    token = next(t for t in range(300, 512) if vocab.detokenize([t]).isalpha())
    piece = vocab.detokenize([token]).decode()
    assert text(api, max_tokens=8, logit_bias={str(token): 100}) == piece * 8


def test_top_k_1_equals_greedy(api: openai.OpenAI) -> None:
    greedy = text(api)
    assert text(api, **SAMPLED, top_k=1) == greedy
    assert text(api, **SAMPLED) != greedy


@pytest.mark.parametrize(
    "penalty",
    [{"frequency_penalty": 1.5}, {"presence_penalty": 1.5}, {"repeat_penalty": 1.5}],
    ids=lambda p: next(iter(p)),
)
def test_penalties_change_a_repetitive_greedy_continuation(
    api: openai.OpenAI, penalty: dict[str, Any]
) -> None:
    plain = text(api, max_tokens=60)
    assert repeated_words(plain) > 3  # the random model loops
    penalized = text(api, max_tokens=60, **penalty)
    assert penalized != plain
    # a window of 0 tokens turns the penalty off
    assert text(api, max_tokens=60, **penalty, repeat_last_n=0) == plain


# The random model's 40 likeliest tokens are nearly equally likely: only a min_p close to 1
# removes any of them.
@pytest.mark.parametrize("sampler", [{"min_p": 0.9}, {"typical_p": 0.3}], ids=str)
def test_min_p_and_typical_p_change_a_sampled_run(
    api: openai.OpenAI, sampler: dict[str, Any]
) -> None:
    base = text(api, **SAMPLED)
    assert text(api, **SAMPLED) == base  # same seed, same draws
    assert text(api, **{**SAMPLED, **sampler}) != base


def test_ignore_eos_generates_past_the_end_to_max_tokens(api: openai.OpenAI) -> None:
    ends = complete(api, logit_bias={str(EOS): 100})
    assert ends.choices[0].finish_reason == "stop" and ends.choices[0].text == ""
    past = complete(api, logit_bias={str(EOS): 100}, ignore_eos=True)
    assert past.choices[0].finish_reason == "length"
    assert past.usage is not None and past.usage.completion_tokens == 40


def test_samplers_apply_to_chat_too(api: openai.OpenAI, vocab: Any) -> None:
    token = next(t for t in range(300, 512) if vocab.detokenize([t]).isalpha())
    piece = vocab.detokenize([token]).decode()
    reply = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        logit_bias={str(token): 100},
        extra_body=EXACT,
    )
    assert reply.choices[0].message.content == piece * 5


# --- validated -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("logit_bias", {"5": 101}),
        ("logit_bias", {"five": 1}),
        ("logit_bias", {"100000": 1}),  # outside the tiny model's vocabulary: the node says so
        ("frequency_penalty", 2.5),
        ("presence_penalty", -3),
        ("top_k", 1.5),
        ("min_p", 2),
        ("typical_p", 0),
        ("repeat_penalty", 0),
        ("repeat_last_n", -2),
        ("ignore_eos", "yes"),
        ("top_p", 1e-9),  # the wire refuses below MIN_TOP_P; the API names top_p itself
    ],
)
def test_a_bad_sampling_value_is_a_400_naming_it(
    api: openai.OpenAI, name: str, value: object
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        api.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={**EXACT, name: value}
        )
    assert isinstance(info.value.body, dict)
    if name != "logit_bias" or value != {"100000": 1}:
        assert info.value.body["param"] == name
    assert name in info.value.message


# --- refused ---------------------------------------------------------------------------------

# (parameter, a value that asks for something gpunet does not do, endpoint)
REFUSED = [
    ("n", 9, "completion"),  # n is honoured up to 8 (tests/p2p/api/test_n_choices.py)
    ("best_of", 3, "completion"),
    ("suffix", "end", "completion"),
    ("functions", [{"name": "f"}], "chat"),
    ("n_probs", 3, "completion"),
    ("mirostat", 2, "completion"),
    ("mirostat_tau", 5.0, "completion"),
    ("dry_multiplier", 0.8, "completion"),
    ("dry_base", 1.75, "completion"),
    ("xtc_probability", 0.5, "completion"),
    ("xtc_threshold", 0.1, "completion"),
    ("dynatemp_range", 0.5, "completion"),
    ("top_n_sigma", 1.0, "completion"),
    ("tfs_z", 0.9, "completion"),
    ("samplers", ["top_k", "temperature"], "completion"),
    ("cache_prompt", False, "completion"),
    ("n_predict", 5, "completion"),
    ("min_keep", 2, "completion"),
    ("modalities", ["text", "audio"], "chat"),
    ("store", True, "chat"),
    ("reasoning_effort", "high", "chat"),
]


@pytest.mark.parametrize(("name", "value", "kind"), REFUSED, ids=lambda x: str(x)[:24])
def test_a_parameter_gpunet_does_not_honour_is_a_400_naming_it(
    api: openai.OpenAI, name: str, value: object, kind: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        if kind == "completion":
            api.completions.create(
                model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={name: value}
            )
        else:
            api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=4,
                extra_body={name: value},
            )
    assert isinstance(info.value.body, dict) and info.value.body["param"] == name
    assert name in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n", 1),
        ("logprobs", False),
        ("echo", False),
        ("response_format", {"type": "text"}),
        ("cache_prompt", True),
        ("mirostat", 0),
        ("tools", []),
        ("user", "someone"),  # an end-user id for abuse monitoring: no effect in OpenAI either
        ("an_extension_neither_api_has", 1),
    ],
)
def test_values_that_ask_for_nothing_are_accepted(name: str, value: object) -> None:
    call = parse_generation({"model": "m", "prompt": "x", name: value}, "completion")
    assert call.request.prompt == "x"


def test_a_flag_is_not_a_number_when_deciding_what_asks_for_nothing() -> None:
    with pytest.raises(ApiError) as info:
        parse_generation({"model": "m", "prompt": "x", "n": True}, "completion")
    assert info.value.param == "n"


def test_the_api_maps_llama_server_extras_onto_the_wire() -> None:
    call = parse_generation(
        {
            "model": "m",
            "prompt": "x",
            "top_k": -1,  # llama-server: every token
            "repeat_last_n": -1,  # llama-server: the whole context
            "logit_bias": [[7, -100], [9, 2]],  # llama-server's pair form
        },
        "completion",
    )
    request = call.request
    assert request.top_k == 0 and request.penalty_last_n == 32768
    assert request.logit_bias == ((7, -100.0), (9, 2.0))
    plain = parse_generation({"model": "m", "prompt": "x"}, "completion").request
    assert (plain.top_k, plain.min_p, plain.typical_p, plain.repeat_penalty) == (
        40,
        0.05,
        1.0,
        1.0,
    )
