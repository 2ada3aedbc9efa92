"""Scoring: teacher-force a prompt plus given tokens through the model and say, per position,
how likely each given token was (issue #16: the verifier's half of a spot check; the same
numbers give the OpenAI API's logprobs / top_logprobs / echo).

The records here are what a worker's `score()` takes and returns and what the p2p layer sends
(`ScoreRequest` in, `ScoreResult` out). `score_tokens` computes them on the worker's thread:
BatchingWorker runs it between two decode steps in a free slot (the batch's sequences pause for
its decodes and are otherwise untouched), ModelWorker on its own context.

Per given token: `logprob`, `rank` and `margin` come from the raw logits; `choice_margin` replays
the request's own sampler chain (logit_bias, penalties, top-k, typical-p, top-p, min-p,
temperature) and, for a sampled request, its replayable draw with the request's seed
(inference/replayable_draw.py) on the verifier's logits: 0.0 when the chain picks exactly that
token there. An honest run's tokens are each the pick of its own chain on its own logits, so on
the verifier they are 0.0 up to the two machines' numerical noise (inference/verification.py
turns the margins into a verdict). A sampled request without a seed cannot be replayed: its
choice margins are NaN.

Cost: the output layer over the default model's 262,144 × 640 matrix costs more per position
with logits than the rest of its prefill, so `ScoreRequest.only` lets a check ask for logits at a
sample of the positions, all of them still being fed. A spot check's 32 positions leave the body's
prefill of prompt + output most of the cost: profiled by tools/bench_check_cost.py, llama_decode
is 92-95 % of it (the output layer ~19 % of that), the choice-margin replay ~4 % (for a greedy
request with a bias now numpy's: inference/greedy_replay.py), the rest ~2 %. So a spot check
sends the tokens up to its last scored position only (p2p/client/check_window.py), and this
feeds every token it is given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import attrs
import numpy as np

from inference.generation import MAX_TOKEN_ID, GenerationError, GenerationRequest, check_fits
from inference.llama_lowlevel import LoadedModel, Sampler
from inference.probe_scoring import ProbeRows

# Given tokens per request: 4K covers a long answer, and bounds the work one request buys.
MAX_SCORE_TOKENS = 4096
# Alternatives per position (OpenAI's top_logprobs allows 20).
MAX_TOP_LOGPROBS = 20


def _as_tokens(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _tokens_ok(
    _: object, attribute: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]
) -> None:
    if not value:
        raise ValueError(f"{attribute.name}: at least one token to score")
    if len(value) > MAX_SCORE_TOKENS:
        raise ValueError(f"{attribute.name}: at most {MAX_SCORE_TOKENS} tokens, got {len(value)}")
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_TOKEN_ID:
            raise ValueError(f"{attribute.name} must be token ids (whole numbers >= 0)")


@attrs.frozen
class ScoreRequest:
    """Score `tokens` as the continuation of `request.prompt`, under `request`'s sampler
    settings and seed (those of the run being checked; its replay_tokens and max_tokens are not
    used)."""

    request: GenerationRequest
    tokens: tuple[int, ...] = attrs.field(converter=_as_tokens, validator=_tokens_ok)
    top_logprobs: int = attrs.field(
        default=5,
        validator=[attrs.validators.ge(0), attrs.validators.le(MAX_TOP_LOGPROBS)],
    )
    # Indices into `tokens` to score, increasing; empty: every one. The others are still fed
    # (their keys and values are needed) but get no logits, which is most of a check's cost on
    # a CPU: the output layer over a 262,144-token vocabulary costs more per position than the
    # rest of the default model's prefill (see tools/bench_verification.py).
    only: tuple[int, ...] = attrs.field(default=(), converter=_as_tokens)

    @only.validator
    def _only_ok(self, attribute: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]) -> None:
        previous = -1
        for i in value:
            if isinstance(i, bool) or not isinstance(i, int) or not previous < i < len(self.tokens):
                raise ValueError(
                    f"{attribute.name}: increasing indices into the {len(self.tokens)} tokens"
                )
            previous = i


@attrs.frozen
class PositionScore:
    """One given token, scored on the logits that preceded it."""

    token: int
    logprob: float  # log softmax of the raw logits at this position
    rank: int  # 0 = the raw argmax
    margin: float  # raw logit(argmax) - logit(token), >= 0
    # Under the request's own sampler (bias, penalties, filters, temperature, the replayable
    # draw with its seed): how far the given token is from the sampler's pick; 0.0 = the
    # sampler picks exactly it; math.inf = the filters removed it.
    choice_margin: float
    top: tuple[tuple[int, float], ...] = ()  # the top_logprobs (token, logprob), best first
    index: int = -1  # of this token in ScoreRequest.tokens


@attrs.frozen
class ScoreResult:
    prompt_tokens: int
    positions: tuple[PositionScore, ...]
    seconds: float  # wall time of the scoring work
    # Per draw of `request.probes`, in order: the verifier's log-probability at the prompt
    # position it names (inference/prompt_probes.py); () when the request has none.
    probe_logprobs: tuple[float, ...] = ()


# Positions whose logits one decode computes: with Gemma 3's 262,144-token vocabulary that is
# 64 MiB of float32 logits, the buffer llama.cpp keeps for a step's outputs anyway
# (BatchingWorker's MAX_STEP_DRAFTS is 64 too), however long the scored continuation.
SCORE_CHUNK = 64


def score_tokens(model: LoadedModel, seq_id: int, score: ScoreRequest) -> ScoreResult:
    """Score on `seq_id`, which must hold no cells (the caller removes them afterwards).

    The prompt is tokenized as generation does, then prompt + given tokens are fed in batches
    of at most n_batch tokens and SCORE_CHUNK positions with logits (one decode each, not one
    per token). Each given token is scored on the logits that precede it, and its
    choice_margin replays the request's own sampler chain, with its seed, step by step, the
    penalty window seeing the prompt and then the given tokens, as in generation.
    PromptTooLong / GenerationError as generation raises them.
    """
    started = time.perf_counter()
    request = score.request
    prompt = model.tokenize(request.prompt)
    if not prompt:
        raise GenerationError("the prompt is empty")
    tokens = score.tokens
    check_fits(len(prompt), len(tokens), model.n_ctx)
    for token in tokens:
        if token >= model.n_vocab:
            raise GenerationError(f"token {token} is not in this model's vocabulary")
    # A sampled run without a seed cannot be replayed: its choice margins are NaN.
    replayable = request.temperature == 0 or request.seed is not None
    sampler = Sampler(model, request, prompt)
    try:
        # The whole feed, even past the last position `only` scores: a shorter batch would
        # save a few rows but may move every scored position, since a batch's length picks the
        # CPU's kernels (the default model, a 70-token feed cut to 63: logprobs of unlikely
        # tokens moved by up to 0.5 nats; cut to 64, not a bit).
        feed = [*prompt, *tokens[:-1]]
        # The logits of feed[first + i] predict tokens[i]: the last prompt token's, tokens[0].
        first = len(prompt) - 1
        wanted = set(score.only) if score.only else None
        probes = ProbeRows(request.probes, prompt)  # prompt rows marked for the probes' values
        scratch = np.empty(model.n_vocab, dtype=np.float32)  # one buffer for every softmax
        positions: list[PositionScore] = []
        accepted = 0  # given tokens the sampler has seen
        fed = 0
        while fed < len(feed):
            model.clear_batch()
            rows: list[tuple[int, int]] = []  # (batch index, token index)
            probe_rows: list[tuple[int, int]] = []  # (batch index, prompt position)
            while fed < len(feed) and model.room > 0 and len(rows) < SCORE_CHUNK:
                i = fed - first
                scored = i >= 0 and (wanted is None or i in wanted)
                probed = i < 0 and probes.wants(fed)
                index = model.add(feed[fed], fed, seq_id, scored or probed)
                if scored:
                    rows.append((index, i))
                elif probed:
                    probe_rows.append((index, fed))
                fed += 1
            status = model.decode()
            if status != 0:
                raise GenerationError(f"llama_decode failed with status {status}")
            for index, position in probe_rows:
                probes.read(position, model.logits(index))
            for index, i in rows:
                while accepted < i:  # unscored tokens still move the penalties and the step
                    sampler.accept(tokens[accepted])
                    accepted += 1
                token = tokens[i]
                logits = model.logits(index)
                margin = sampler.choice_margin(logits, token) if replayable else math.nan
                sampler.accept(token)
                accepted += 1
                positions.append(
                    position_score(logits, token, margin, score.top_logprobs, i, scratch)
                )
    finally:
        sampler.close()
    return ScoreResult(
        prompt_tokens=len(prompt),
        positions=tuple(positions),
        seconds=time.perf_counter() - started,
        probe_logprobs=probes.values(),
    )


def position_score(
    logits: np.ndarray[Any, np.dtype[np.float32]],
    token: int,
    choice_margin: float,
    top: int,
    index: int = -1,
    scratch: np.ndarray[Any, np.dtype[np.float32]] | None = None,
) -> PositionScore:
    """logprob, rank, margin and the top alternatives of `token` from one position's raw
    logits (the softmax's sum in float64). `scratch`, a float32 array as long as `logits`,
    saves two vocabulary-sized allocations per position; the values are the same."""
    best = float(logits.max())
    mine = float(logits[token])
    shifted = np.subtract(logits, np.float32(best), out=scratch)
    log_total = best + math.log(float(np.exp(shifted, out=shifted).sum(dtype=np.float64)))
    alternatives: tuple[tuple[int, float], ...] = ()
    if top:
        ids = np.argpartition(logits, -top)[-top:]
        ids = ids[np.lexsort((ids, -logits[ids]))]  # best first, lower id first on ties
        alternatives = tuple((int(i), float(logits[i]) - log_total) for i in ids)
    return PositionScore(
        token=token,
        logprob=mine - log_total,
        rank=int(np.count_nonzero(logits > mine)),
        margin=best - mine,
        choice_margin=choice_margin,
        top=alternatives,
        index=index,
    )
