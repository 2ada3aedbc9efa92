"""Replayable sampling: a Gumbel-max draw whose noise is a pure function of (seed, step, token).

llama.cpp's `dist` sampler draws from a random state that only the run itself holds: a verifier
cannot tell whether a sampled token was the model's draw or any token at all. Here the draw is

    token = argmax over the survivors of the filter chain of  z_j + g(seed, step, j)

where z_j are the chain's final logits (after bias, penalties, top-k, typical-p, top-p, min-p,
temperature) and g is standard Gumbel noise computed by hashing (seed, step, token id). By the
Gumbel-max property this draws from softmax(z) over the survivors, the distribution `dist` drew
from; and because g is stateless, anyone holding the model, the settings and the seed can replay
any step on its own logits (inference/scoring.py's choice_margin), a failover that replays the
delivered tokens keeps the noise of the steps it resumes at (step counts replayed tokens), and
`advance` needs no random state to move.

The hash is splitmix64's finaliser over a counter, vectorised in numpy: only the survivors' ids
are hashed (at most top_k of them with the default chain), so a step costs microseconds beyond
the filters.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# What llama.cpp's llama_token_data is: (id int32, logit float, p float).
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def _mix64(x: int) -> int:
    """splitmix64's finaliser on one Python int (for the per-step key)."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def step_key(seed: int, step: int) -> int:
    """One 64-bit key per (seed, step); distinct seeds and steps give unrelated keys."""
    return _mix64(_mix64(seed * _GOLDEN + 1) + (step + 1) * _GOLDEN)


def gumbel(
    seed: int, step: int, ids: np.ndarray[Any, Any]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Standard Gumbel noise g(seed, step, id) for each token id in `ids` (float64)."""
    key = np.uint64(step_key(seed, step))
    x = ids.astype(np.uint64) * np.uint64(_GOLDEN) + key  # wraps modulo 2**64, as intended
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    x = x ^ (x >> np.uint64(31))
    # 53 random bits to a uniform in (0, 1), never 0 or 1, then -log(-log(u)).
    u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)
    return -np.log(-np.log(u))


def draw(seed: int, step: int, ids: np.ndarray[Any, Any], logits: np.ndarray[Any, Any]) -> int:
    """The Gumbel-max pick among the survivors (`ids`, their final `logits`)."""
    scores = logits.astype(np.float64) + gumbel(seed, step, ids)
    return int(ids[int(np.argmax(scores))])


def draw_margin(
    seed: int, step: int, ids: np.ndarray[Any, Any], logits: np.ndarray[Any, Any], token: int
) -> float:
    """How far `token` is from being the draw, in the units of `logits`: 0.0 when it is the
    draw, +inf when it is not among the survivors (or its logit is -inf)."""
    where = np.flatnonzero(ids == token)
    if where.size == 0:
        return float("inf")
    scores = logits.astype(np.float64) + gumbel(seed, step, ids)
    mine = float(scores[int(where[0])])
    if mine == float("-inf"):
        return float("inf")
    return max(0.0, float(scores.max()) - mine)


class Candidates:
    """A reusable llama_token_data_array over one position's logits, for running a llama.cpp
    sampler chain (without a final draw) and reading back what survives it."""

    def __init__(self, lib: Any, n_vocab: int) -> None:
        self._lib = lib
        self._data = np.empty(n_vocab, dtype=TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)

    def apply(self, chain: Any, logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Run `chain` over `logits`; the surviving (id, logit, p) records, as a copy."""
        lib, data = self._lib, self._data
        data["id"] = self._ids
        data["logit"] = logits
        data["p"] = 0.0
        candidates = lib.llama_token_data_array(
            data=data.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)),
            size=len(data),
            selected=-1,
            sorted=False,
        )
        lib.llama_sampler_apply(chain, ctypes.byref(candidates))
        size = int(candidates.size)
        address = ctypes.cast(candidates.data, ctypes.c_void_p).value
        if address == data.ctypes.data:
            return data[:size].copy()
        # A sampler replaced the array (not what llama.cpp's filters do today, but allowed).
        raw = (ctypes.c_char * (size * TOKEN_DATA.itemsize)).from_address(address or 0)
        return np.frombuffer(memoryview(raw), dtype=TOKEN_DATA, count=size).copy()


class DrawStep:
    """The replayable draw as the last sampler of a llama.cpp chain, so that
    `llama_sampler_sample` (which lays out the candidates in C, 1-2 ms a step faster than numpy
    over a 262,144-token vocabulary) runs the filters and then this draw: it picks among the
    survivors at (`seed`, `step`) by setting the array's `selected`. Owned by the chain once
    added (llama.cpp frees the sampler object; this keeps the interface and callback alive).

    An exception inside a ctypes callback cannot propagate, and llama.cpp aborts the process
    when nothing is selected, so a failure selects the first survivor and is raised by
    `check()` right after the call.
    """

    def __init__(self, lib: Any, seed: int) -> None:
        self.seed = seed
        self.step = 0
        self.error: BaseException | None = None

        def apply(_sampler: Any, cur_p: Any) -> None:
            array = cur_p.contents
            try:
                size = int(array.size)
                raw = (ctypes.c_char * (size * TOKEN_DATA.itemsize)).from_address(
                    ctypes.cast(array.data, ctypes.c_void_p).value or 0
                )
                kept = np.frombuffer(memoryview(raw), dtype=TOKEN_DATA, count=size)
                scores = kept["logit"].astype(np.float64) + gumbel(self.seed, self.step, kept["id"])
                array.selected = int(np.argmax(scores))
            except BaseException as e:  # never out of the callback (see the class docstring)
                self.error = e
                array.selected = 0

        self._apply = lib.llama_sampler_i_apply(apply)
        self._iface = lib.llama_sampler_i()
        self._iface.apply = self._apply  # name, accept, reset, clone, free: none (NULL)
        self.pointer = lib.llama_sampler_init(ctypes.pointer(self._iface), None)

    def check(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"the replayable draw failed: {error!r}")
