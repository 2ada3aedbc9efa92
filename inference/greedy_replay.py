"""The choice margin of a greedy request whose only sampler before the argmax is a logit bias
(OpenAI's logit_bias, ignore_eos's banned end-of-generation tokens), in numpy.

inference/llama_lowlevel.py `Sampler.choice_margin` replays a request's llama.cpp sampler chain
on the verifier's logits. For such a request that chain is logit-bias → greedy, and replaying it
means laying the whole vocabulary out as llama.cpp's candidate records (262,144 of them for the
default model), letting the bias add to a few of them and reading the maximum back: ~4 ms per
scored position on 2 CPU cores, ~0.1 s of a 32-position spot check (tools/bench_check_cost.py).
The same numbers come from one float32 copy of the logits, the same float32 additions at the
biased ids (llama.cpp's logit-bias sampler adds each bias to its token's logit, once per
token: `bias_table` keeps one entry per token), and the maximum: bit for bit the chain's
margin, in a tenth of the time. Generation picks its tokens the same way (`pick`): the chain's
llama_sampler_sample copies every candidate first, 0.54-0.75 ms CPU a token against ~0.15 ms
here (docs/benchmarks.md "Where the time goes without speculation"), serial work each decode
step waits for. Penalties and grammars keep the chain (their state is llama.cpp's), and so does
every sampled request (its filters' edges are llama.cpp's too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from inference.generation import BAN_BIAS, GenerationError, GenerationRequest


def bias_table(
    request: GenerationRequest, n_vocab: int, eog_tokens: Sequence[int]
) -> list[tuple[int, float]]:
    """(token, bias) for llama.cpp's logit-bias sampler: OpenAI's -100 and ignore_eos's banned
    end-of-generation tokens as -infinity, so no logit can outweigh them."""
    table: dict[int, float] = {}
    for token, bias in request.logit_bias:
        if token >= n_vocab:
            raise GenerationError(f"logit_bias token {token} is not in this model's vocabulary")
        table[token] = -math.inf if bias <= BAN_BIAS else bias
    if request.ignore_eos:
        table.update((token, -math.inf) for token in eog_tokens)
    return list(table.items())


class BiasedArgmax:
    """One request's greedy choice after its logit biases (-inf for a ban)."""

    def __init__(self, bias: Sequence[tuple[int, float]], n_vocab: int) -> None:
        self._ids = np.fromiter((t for t, _ in bias), dtype=np.int64, count=len(bias))
        self._values = np.fromiter((b for _, b in bias), dtype=np.float32, count=len(bias))
        if len(set(self._ids.tolist())) != len(self._ids):
            raise ValueError("one bias per token (llama.cpp adds each entry)")
        self._scratch = np.empty(n_vocab, dtype=np.float32)

    def pick(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> int:
        """The token the chain [logit-bias, greedy] picks from `logits`: the first highest
        biased logit. Generation calls this for each token, so the common case (the row's top
        token carries no bias) skips the copy: only a biased token can beat it, by a higher
        value or the same value at a lower id."""
        top = int(logits.argmax())  # numpy's argmax: the first index among equal maxima
        if not (self._ids == top).any():
            best, value = top, logits[top]
            for token, bias in zip(self._ids.tolist(), self._values, strict=True):
                biased = logits[token] + bias  # float32 + float32, as llama.cpp adds
                if biased > value or (biased == value and token < best):
                    best, value = token, biased
            return best
        np.copyto(self._scratch, logits)
        self._scratch[self._ids] += self._values
        return int(self._scratch.argmax())

    def margin(self, logits: np.ndarray[Any, np.dtype[np.float32]], token: int) -> float:
        """How far `token` is from the biased argmax, in logits: 0.0 when it is the pick,
        +inf when its biased logit is not finite (a ban)."""
        biased = self._scratch
        np.copyto(biased, logits)
        biased[self._ids] += self._values  # float32, as the sampler's `logit += bias`
        mine = float(biased[token])
        if not math.isfinite(mine):
            return math.inf
        return max(0.0, float(biased.max()) - mine)
