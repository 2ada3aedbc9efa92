"""The answer to a `wire.Score` request: per-position scores as arrays, bounded, validated.

A `Score` (defined in wire.py next to `Generate`, which it carries) asks a node to teacher-force
a prompt plus given tokens through its model under the request's sampler settings and seed
(inference/scoring.py); `Scores` is the answer: for each given token its log-probability, rank,
margin to the argmax, choice margin under the request's own sampler, and the top alternatives.
A spot check (p2p/client/spot_check.py) sends one to an independent provider and judges what
comes back (inference/verification.py).

This file imports nothing of wire.py (wire.py imports it for its decode dispatch), so the field
reader it decodes with is described by `FieldReader`, which wire's own reader satisfies. Every
array's length is the number of scored tokens (at most `MAX_SCORE_TOKENS`), every number finite
except a choice margin, which may be +inf (the request's filters removed that token) or NaN (a
sampled request without a seed: not replayable).
"""

from __future__ import annotations

import math
from typing import Any, NoReturn, Protocol

import attrs

from inference.prompt_probes import MAX_PROBES
from inference.scoring import MAX_SCORE_TOKENS as MAX_SCORE_TOKENS
from inference.scoring import MAX_TOP_LOGPROBS as MAX_TOP_LOGPROBS
from inference.scoring import PositionScore, ScoreResult

# A log-probability below this is as good as impossible; bounds keep arithmetic on them sane.
MIN_LOGPROB = -1e6
MAX_MARGIN = 1e6
MAX_RANK = 2**31 - 1
# Scored tokens x alternatives per request: at ~14 msgpack bytes per alternative, the answer stays
# well inside one 1 MiB frame (crypto/secure_session.py) with its other arrays.
MAX_SCORE_CELLS = 32768


class FieldReader(Protocol):
    """What the decoder needs of wire.py's `_Fields`."""

    body: dict[Any, Any]

    def fail(self, field: str, reason: str) -> NoReturn: ...

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int: ...

    def number(self, key: str, lo: float, hi: float, default: float | None = None) -> float: ...

    def array(self, key: str, limit: int) -> list[Any]: ...

    def token_ids(self, key: str, limit: int) -> tuple[int, ...]: ...


@attrs.frozen
class Scores:
    """A node's scores of the tokens a `Score` request gave (those its `only` named, or all),
    position by position."""

    id: int
    prompt_tokens: int
    token_ids: tuple[int, ...]  # the scored tokens
    logprobs: tuple[float, ...]
    ranks: tuple[int, ...]
    margins: tuple[float, ...]
    choice_margins: tuple[float, ...]
    # Per position: the top alternatives' token ids and their log-probabilities, best first.
    top_ids: tuple[tuple[int, ...], ...]
    top_logprobs: tuple[tuple[float, ...], ...]
    seconds: float
    # Each scored token's index among the request's tokens (empty: 0, 1, 2, ..., all scored).
    indices: tuple[int, ...] = ()
    # The verifier's value at each prompt probe of the request (inference/prompt_probes.py), in
    # the draws' order: at most MAX_PROBES log-probabilities; () when it had none to compute.
    probe_logprobs: tuple[float, ...] = ()

    def index(self, i: int) -> int:
        return self.indices[i] if self.indices else i

    def positions(self) -> tuple[PositionScore, ...]:
        return tuple(
            PositionScore(
                token=self.token_ids[i],
                logprob=self.logprobs[i],
                rank=self.ranks[i],
                margin=self.margins[i],
                choice_margin=self.choice_margins[i],
                top=tuple(zip(self.top_ids[i], self.top_logprobs[i], strict=True)),
                index=self.index(i),
            )
            for i in range(len(self.token_ids))
        )


def scores_message(request_id: int, result: ScoreResult) -> Scores:
    """The wire answer for a worker's `ScoreResult` (values clamped into the wire's bounds)."""
    ps = result.positions
    return Scores(
        id=request_id,
        prompt_tokens=result.prompt_tokens,
        token_ids=tuple(p.token for p in ps),
        logprobs=tuple(_clamp(p.logprob, MIN_LOGPROB, 0.0) for p in ps),
        ranks=tuple(min(p.rank, MAX_RANK) for p in ps),
        margins=tuple(_clamp(p.margin, 0.0, MAX_MARGIN) for p in ps),
        choice_margins=tuple(
            p.choice_margin
            if p.choice_margin == math.inf or math.isnan(p.choice_margin)
            else _clamp(p.choice_margin, 0.0, MAX_MARGIN)
            for p in ps
        ),
        top_ids=tuple(tuple(t for t, _ in p.top[:MAX_TOP_LOGPROBS]) for p in ps),
        top_logprobs=tuple(
            tuple(_clamp(lp, MIN_LOGPROB, 0.0) for _, lp in p.top[:MAX_TOP_LOGPROBS]) for p in ps
        ),
        seconds=_clamp(result.seconds, 0.0, 1e6),
        indices=_indices_of(ps),
        probe_logprobs=tuple(
            MIN_LOGPROB if math.isnan(v) else _clamp(v, MIN_LOGPROB, 0.0)
            for v in result.probe_logprobs[:MAX_PROBES]
        ),
    )


def _indices_of(ps: tuple[PositionScore, ...]) -> tuple[int, ...]:
    """The positions' indices among the given tokens; () when they are all of them, in order
    (an index of -1, unknown, is taken to be the position's place)."""
    indices = tuple(p.index if p.index >= 0 else i for i, p in enumerate(ps))
    return () if indices == tuple(range(len(ps))) else indices


def _clamp(v: float, lo: float, hi: float) -> float:
    if math.isnan(v):
        return hi
    return min(hi, max(lo, float(v)))


def scores_body(msg: Scores) -> dict[str, Any]:
    return {
        "id": msg.id,
        "prompt_tokens": msg.prompt_tokens,
        "token_ids": list(msg.token_ids),
        "logprobs": list(msg.logprobs),
        "ranks": list(msg.ranks),
        "margins": list(msg.margins),
        "choice_margins": list(msg.choice_margins),
        "top_ids": [list(t) for t in msg.top_ids],
        "top_logprobs": [list(t) for t in msg.top_logprobs],
        "seconds": msg.seconds,
        "indices": list(msg.indices),
        "probe_logprobs": list(msg.probe_logprobs),
    }


def _floats(
    f: FieldReader, key: str, n: int, lo: float, hi: float, *, inf: bool = False
) -> tuple[float, ...]:
    raw = f.array(key, MAX_SCORE_TOKENS)
    if len(raw) != n:
        f.fail(key, f"{key}: one value per scored token ({n})")
    return tuple(_float(f, key, v, lo, hi, inf=inf) for v in raw)


def _float(f: FieldReader, key: str, v: object, lo: float, hi: float, *, inf: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        f.fail(key, f"{key}: numbers")
    x = float(v)
    if inf and (x == math.inf or math.isnan(x)):  # filtered out; not replayable (no seed)
        return x
    if not (math.isfinite(x) and lo <= x <= hi):
        f.fail(key, f"{key}: numbers from {lo:g} to {hi:g}")
    return x


def decode_scores(f: FieldReader, request_id: int) -> Scores:
    tokens = f.token_ids("token_ids", MAX_SCORE_TOKENS)
    n = len(tokens)
    ranks = f.array("ranks", MAX_SCORE_TOKENS)
    if len(ranks) != n or not all(
        isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= MAX_RANK for r in ranks
    ):
        f.fail("ranks", f"ranks: one non-negative integer per scored token ({n})")
    top_ids_raw, top_lps_raw = f.array("top_ids", n), f.array("top_logprobs", n)
    if len(top_ids_raw) != n or len(top_lps_raw) != n:
        f.fail("top_ids", f"top_ids, top_logprobs: one list per scored token ({n})")
    top_ids: list[tuple[int, ...]] = []
    top_lps: list[tuple[float, ...]] = []
    for ids, lps in zip(top_ids_raw, top_lps_raw, strict=True):
        if not (
            isinstance(ids, list)
            and isinstance(lps, list)
            and len(ids) == len(lps) <= MAX_TOP_LOGPROBS
            and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in ids)
        ):
            f.fail("top_ids", f"top_ids: at most {MAX_TOP_LOGPROBS} token ids, as many logprobs")
        top_ids.append(tuple(ids))
        top_lps.append(
            tuple(_float(f, "top_logprobs", v, MIN_LOGPROB, 0.0, inf=False) for v in lps)
        )
    return Scores(
        id=request_id,
        prompt_tokens=f.integer("prompt_tokens", 0, 2**31),
        token_ids=tokens,
        logprobs=_floats(f, "logprobs", n, MIN_LOGPROB, 0.0),
        ranks=tuple(ranks),
        margins=_floats(f, "margins", n, 0.0, MAX_MARGIN),
        choice_margins=_floats(f, "choice_margins", n, 0.0, MAX_MARGIN, inf=True),
        top_ids=tuple(top_ids),
        top_logprobs=tuple(top_lps),
        seconds=f.number("seconds", 0.0, 1e6),
        indices=_indices(f, "indices", n, MAX_SCORE_TOKENS, exact=True),
        probe_logprobs=tuple(
            _float(f, "probe_logprobs", v, MIN_LOGPROB, 0.0, inf=False)
            for v in f.array("probe_logprobs", MAX_PROBES)
        ),
    )


def decode_only(f: FieldReader, n_tokens: int) -> tuple[int, ...]:
    """A Score's `only`: increasing indices into its *n_tokens* tokens (empty: all)."""
    return _indices(f, "only", n_tokens, n_tokens, exact=False)


def _indices(f: FieldReader, key: str, n: int, below: int, *, exact: bool) -> tuple[int, ...]:
    """Increasing indices under *below*; with *exact*, none or one per scored position (*n*)."""
    raw = f.array(key, MAX_SCORE_TOKENS)
    if exact and raw and len(raw) != n:
        f.fail(key, f"{key}: none, or one per scored token ({n})")
    previous = -1
    for i in raw:
        if isinstance(i, bool) or not isinstance(i, int) or not previous < i < below:
            f.fail(key, f"{key}: increasing indices below {below}")
        previous = i
    return tuple(raw)
