"""The numpy replay of a biased greedy request (inference/greedy_replay.py) gives the choice
margins of llama.cpp's logit-bias → greedy chain bit for bit, on a real model's logits and on
logits made to tie, ban and overtake."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.generation import GenerationRequest
from inference.greedy_replay import BiasedArgmax
from inference.llama_lowlevel import LoadedModel, Sampler

PROMPT = "the capital of france is"


def both_margins(
    model: LoadedModel,
    request: GenerationRequest,
    rows: list[np.ndarray[Any, Any]],
    tokens: list[int],
) -> tuple[list[float], list[float]]:
    """(numpy replay, llama.cpp chain) margins of `tokens` on `rows`, step by step."""
    fast = Sampler(model, request, model.tokenize(request.prompt))
    chain = Sampler(model, request, model.tokenize(request.prompt))
    assert fast._biased_argmax is not None  # this request takes the numpy path
    chain._biased_argmax = None  # and this one the chain's
    out: tuple[list[float], list[float]] = ([], [])
    try:
        for logits, token in zip(rows, tokens, strict=True):
            out[0].append(fast.choice_margin(logits, token))
            out[1].append(chain.choice_margin(logits, token))
            fast.accept(token)
            chain.accept(token)
    finally:
        fast.close()
        chain.close()
    return out


def model_rows(model: LoadedModel, tokens: list[int]) -> list[np.ndarray[Any, Any]]:
    """The real logits before each of `tokens` after PROMPT, copied out of one prefill."""
    feed = [*model.tokenize(PROMPT), *tokens[:-1]]
    first = len(feed) - len(tokens)
    model.clear_batch()
    for pos, token in enumerate(feed):
        model.add(token, pos, 0, pos >= first)
    assert model.decode() == 0
    try:
        return [model.logits(i).copy() for i in range(first, len(feed))]
    finally:
        model.forget_all()


@pytest.fixture
def tiny_model(tiny_gguf: Path) -> Any:
    model = LoadedModel.load(tiny_gguf, n_ctx=512, n_seq=1, n_threads=2, n_gpu_layers=0)
    yield model
    model.close()


def test_real_logits_give_the_chains_margins(tiny_model: LoadedModel) -> None:
    tokens = [int(t) for t in np.random.default_rng(1).integers(3, tiny_model.n_vocab, 40)]
    rows = model_rows(tiny_model, tokens)
    argmaxes = [int(r.argmax()) for r in rows]
    requests = [
        GenerationRequest(PROMPT, ignore_eos=True),
        # a ban, a bias that makes a token the pick, one that pushes the argmax down
        GenerationRequest(
            PROMPT, logit_bias={tokens[3]: -100.0, tokens[5]: 30.0, argmaxes[7]: -0.5}
        ),
        GenerationRequest(PROMPT, ignore_eos=True, logit_bias={argmaxes[0]: 0.001}),
    ]
    for request in requests:
        fast, chain = both_margins(tiny_model, request, rows, tokens)
        assert fast == chain  # bit for bit, inf included
        assert any(m > 0 for m in fast)
    # The argmax tokens themselves: margin 0.0, until a bias makes another token the pick.
    fast, chain = both_margins(tiny_model, requests[0], rows, argmaxes)
    assert fast == chain and set(fast) == {0.0}
    fast, chain = both_margins(tiny_model, requests[1], rows, argmaxes)
    assert fast == chain and min(fast) > 20  # tokens[5]'s +30 outweighs every argmax


def test_made_up_logits_give_the_chains_margins(tiny_model: LoadedModel) -> None:
    rng = np.random.default_rng(4)
    n = tiny_model.n_vocab
    rows, tokens = [], []
    for step in range(30):
        logits = (rng.standard_normal(n) * 3).astype(np.float32)
        if step % 3 == 0:  # a tie at the top
            logits[rng.integers(0, n, 2)] = logits.max()
        if step % 5 == 0:
            logits[rng.integers(0, n, 3)] = -np.inf
        rows.append(logits)
        tokens.append(int(rng.integers(0, n)) if step % 2 else int(logits.argmax()))
    bias = {tokens[1]: -100.0, tokens[2]: 2.5, tokens[4]: 7.0, int(rows[9].argmax()): -1e-3}
    request = GenerationRequest(PROMPT, ignore_eos=True, logit_bias=bias)
    fast, chain = both_margins(tiny_model, request, rows, tokens)
    assert fast == chain
    assert fast[1] == math.inf and 0.0 in fast


def test_the_chain_stays_where_numpy_cannot_replay_it(tiny_model: LoadedModel) -> None:
    penalized = GenerationRequest(PROMPT, ignore_eos=True, repeat_penalty=1.3)
    sampled = GenerationRequest(PROMPT, temperature=0.8, seed=1, ignore_eos=True)
    plain = GenerationRequest(PROMPT)
    for request in (penalized, sampled, plain):
        sampler = Sampler(tiny_model, request, [1, 2, 3])
        try:
            assert sampler._biased_argmax is None
        finally:
            sampler.close()
    with pytest.raises(ValueError, match="one bias per token"):
        BiasedArgmax([(3, 1.0), (3, 2.0)], 10)
