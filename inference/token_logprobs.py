"""Log-probabilities of generated tokens, for OpenAI's `logprobs` / `top_logprobs`.

What is reported is the model's raw distribution at each step: the log-softmax of the logits
before the sampler chain (no bias, penalties, top-k or temperature), as OpenAI and llama-server's
default do. So the numbers describe the model, not the request's filters, and a greedy run's
chosen token is always the top alternative.

Cost only when asked (`GenerationRequest.logprobs >= 0`, which a node asks on every request for
its receipt's commitments): one pass for the log-sum-exp and, for the alternatives,
`argpartition` rather than a full sort (Gemma's vocabulary is 262K tokens). The log-sum-exp's
exponentials go into one vocabulary-sized buffer per thread, not two fresh 1 MB arrays per
token, with the same values to the last bit. In a process's main thread the fresh arrays were
mapped and faulted in each time (3.6 against 1.1 ms CPU a token, 2-core machine under load); in
a worker thread, whose malloc arena keeps them, the buffer saves ~7 % (1.17 against 1.08 ms).
The rest is np.exp over the vocabulary, which no exact method makes cheaper.
The workers hand each token's entry to TextAssembler (inference/streaming.py) with the token, so
a released TokenChunk carries the entries of exactly its own token ids. Pure numpy, no
llama.cpp.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

# OpenAI's top_logprobs limit (chat); completions' `logprobs` allows 5 of these.
MAX_TOP_LOGPROBS = 20
# A token's text (llama.cpp's piece) is a few bytes; a bound for what the wire carries.
MAX_PIECE_BYTES = 256
# Prompts whose tokens get entries (echo, inference/prompt_logprobs.py): what the scoring path
# allows (inference/scoring.py MAX_SCORE_TOKENS); with at most 5 alternatives a few hundred KB
# in the answer's frame.
MAX_PROMPT_LOGPROB_TOKENS = 4096
# Below this a log-probability is as good as impossible (and -inf is not valid JSON).
MIN_LOGPROB = -1e6


@attrs.frozen
class Alternative:
    token: int
    piece: bytes  # the token's text as bytes (may be part of a UTF-8 character)
    logprob: float


@attrs.frozen
class TokenLogprob:
    """One generated token: its log-probability and the most likely tokens at its step (best
    first; ties in token id order, so a greedy choice is the first)."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[Alternative, ...] = ()


def _finite(value: float) -> float:
    return max(MIN_LOGPROB, value) if np.isfinite(value) else MIN_LOGPROB


def top_tokens(logits: np.ndarray[Any, Any], n: int) -> np.ndarray[Any, Any]:
    """The ids of the n largest logits, best first, ties by increasing id (as argmax)."""
    n = min(n, logits.shape[0])
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    candidates = np.argpartition(logits, -n)[-n:] if n < logits.shape[0] else np.arange(n)
    # Stable ordering by (-logit, id): lexsort sorts by the last key first.
    order = np.lexsort((candidates, -logits[candidates].astype(np.float64)))
    return candidates[order]


_scratch = threading.local()  # each thread's float32 buffer for the exponentials


def _buffer(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """This thread's float32 scratch of n values (kept for the next call of the same size)."""
    buf: np.ndarray[Any, np.dtype[np.float32]] | None = getattr(_scratch, "buf", None)
    if buf is None or buf.shape[0] != n:
        buf = _scratch.buf = np.empty(n, dtype=np.float32)
    return buf


def log_normalizer(logits: np.ndarray[Any, Any]) -> float:
    """log(sum(exp(logits))): the exponentials in float32 after the peak is taken off (no
    overflow), summed in float64, as scoring does (inference/scoring.py). A float32 row is
    computed in this thread's scratch buffer: the same operations in the same order as on a
    fresh array, so the same value to the last bit."""
    peak = float(logits.max())
    if logits.dtype != np.float32 or logits.ndim != 1:
        return peak + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))
    shifted = np.subtract(logits, np.float32(peak), out=_buffer(logits.shape[0]))
    return peak + float(np.log(np.exp(shifted, out=shifted).sum(dtype=np.float64)))


def partial_exp_sum(
    logits: np.ndarray[Any, np.dtype[np.float32]], peak: float, lo: int, hi: int
) -> float:
    """sum(exp(logits[lo:hi] - peak)) in float64, for a float32 row split between threads
    (inference/normalizer_pool.py): each exponential is the same float32 value as in
    `log_normalizer` given the row's own peak, so only the order of the float64 additions
    differs (relative ~1e-16). The scratch is this thread's whole-row buffer, sliced, so
    parts and whole rows in one thread do not reallocate it."""
    part = _buffer(logits.shape[0])[: hi - lo]
    shifted = np.subtract(logits[lo:hi], np.float32(peak), out=part)
    return float(np.exp(shifted, out=shifted).sum(dtype=np.float64))


def token_logprob(
    logits: np.ndarray[Any, Any],
    token: int,
    n_top: int,
    piece: Callable[[int], bytes],
    norm: float | None = None,
) -> TokenLogprob:
    """The entry of `token` chosen at a step whose logits are `logits`, with `n_top` (0..20)
    alternatives; `piece` gives a token's text. `norm`, when given, is the row's
    `log_normalizer`, computed already (by inference/normalizer_pool.py's helper thread)."""
    norm = log_normalizer(logits) if norm is None else norm
    top = tuple(
        Alternative(int(t), piece(int(t)), _finite(float(logits[t]) - norm))
        for t in top_tokens(logits, n_top)
    )
    return TokenLogprob(token, piece(token), _finite(float(logits[token]) - norm), top)
