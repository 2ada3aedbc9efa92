"""inference/greedy_replay.py's BiasedArgmax.pick (what Sampler.sample uses) picks exactly
the token llama.cpp's [logit-bias, greedy] chain picks, on real logits of the tiny GGUF at every
prompt position, for ignore_eos, OpenAI biases that win, lose or ban, and both together."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.generation import GenerationRequest
from inference.greedy_replay import BiasedArgmax, bias_table
from inference.llama_lowlevel import LoadedModel, Sampler

PROMPT = "the capital of france is paris and the capital of spain is madrid, of italy"


@pytest.fixture(scope="module")
def model(tiny_gguf: Path, gpu_layers: int) -> Iterator[LoadedModel]:
    loaded = LoadedModel.load(tiny_gguf, n_ctx=128, n_seq=1, n_threads=2, n_gpu_layers=gpu_layers)
    yield loaded
    loaded.close()


def requests(model: LoadedModel, rows: list[int]) -> list[GenerationRequest]:
    eog = model.eog_tokens[0]
    top = rows[0]
    return [
        GenerationRequest(PROMPT, temperature=0, ignore_eos=True),
        GenerationRequest(PROMPT, temperature=0, logit_bias=((7, 40.0),)),  # 7 wins
        GenerationRequest(PROMPT, temperature=0, logit_bias=((top, -100.0),)),  # banned
        GenerationRequest(PROMPT, temperature=0, logit_bias=((top, -0.01), (3, 0.5))),
        GenerationRequest(PROMPT, temperature=0, ignore_eos=True, logit_bias=((eog, 50.0),)),
    ]


def test_the_same_pick_as_the_chain_at_every_position(model: LoadedModel) -> None:
    prompt = model.tokenize(PROMPT)
    model.clear_batch()
    for pos, token in enumerate(prompt):
        model.add(token, pos, 0, True)
    assert model.decode() == 0
    tops = [model.argmax(i) for i in range(len(prompt))]
    differ = 0
    for request in requests(model, tops):
        assert not request.plain_greedy
        table = bias_table(request, model.n_vocab, model.eog_tokens)
        sampler = Sampler(model, request, prompt)
        pick = BiasedArgmax(table, model.n_vocab)
        try:
            for i in range(len(prompt)):
                chosen = int(model.lib.llama_sampler_sample(sampler.chain, model.ctx, i))
                assert pick.pick(model.logits(i)) == chosen, (request, i)
                assert sampler.sample(model, i) == chosen
                differ += chosen != tops[i]
        finally:
            sampler.close()
    assert differ > len(prompt)  # the biases did change picks: the test can fail


@pytest.mark.slow
def test_ignore_eos_on_the_default_model_s_vocabulary(default_model: Path, gpu_layers: int) -> None:
    loaded = LoadedModel.load(
        default_model, n_ctx=128, n_seq=1, n_threads=2, n_gpu_layers=gpu_layers
    )
    request = GenerationRequest(PROMPT, temperature=0, ignore_eos=True)
    sampler = Sampler(loaded, request, [])
    try:
        prompt = loaded.tokenize(PROMPT)
        loaded.clear_batch()
        for pos, token in enumerate(prompt):
            loaded.add(token, pos, 0, True)
        assert loaded.decode() == 0
        pick = BiasedArgmax(bias_table(request, loaded.n_vocab, loaded.eog_tokens), loaded.n_vocab)
        for i in range(len(prompt)):
            chosen = int(loaded.lib.llama_sampler_sample(sampler.chain, loaded.ctx, i))
            assert pick.pick(loaded.logits(i)) == chosen == sampler.sample(loaded, i)
    finally:
        sampler.close()
        loaded.close()
