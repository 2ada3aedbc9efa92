"""The log-probabilities a `wire.Token` carries for its token ids, encoded and validated.

Only a request that asked for them (`Generate.logprobs` >= 0) gets them; a Token without them
has no `logprobs` key at all, so the per-token encode stays as cheap as before. On the wire one
entry per token id, in order: `[logprob, piece, [[id, piece, logprob], ...]]` (the chosen
token's id is the Token's own `token_ids[i]`). Every entry is checked as hostile input: finite
log-probabilities in [MIN_LOGPROB, 0], pieces of bounded bytes, at most MAX_TOP_LOGPROBS
alternatives, one entry per token id.
"""

from __future__ import annotations

import math
from typing import Any

from inference.token_logprobs import (
    MAX_PIECE_BYTES,
    MAX_PROMPT_LOGPROB_TOKENS,
    MAX_TOP_LOGPROBS,
    MIN_LOGPROB,
    Alternative,
    TokenLogprob,
)
from p2p.protocol.wire_fields import Fields, InvalidMessage, is_int

FIELD = "logprobs"


def encode_logprobs(entries: tuple[TokenLogprob, ...]) -> list[Any]:
    return [[e.logprob, e.piece, [[a.token, a.piece, a.logprob] for a in e.top]] for e in entries]


def _logprob(v: object) -> bool:
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and MIN_LOGPROB <= v <= 0
    )


def _piece(v: object) -> bool:
    return isinstance(v, bytes) and len(v) <= MAX_PIECE_BYTES


def decode_logprobs(f: Fields, token_ids: tuple[int, ...]) -> tuple[TokenLogprob, ...]:
    """The entries of a Token's `token_ids` (none when the key is absent)."""
    if FIELD not in f.body:
        return ()
    raw = f.array(FIELD, len(token_ids))
    if len(raw) != len(token_ids):
        f.fail(FIELD, "logprobs: one entry per token id")
    reason = (
        f"logprobs: [logprob <= 0, piece (bytes), [[id, piece, logprob], ...]] with at most "
        f"{MAX_TOP_LOGPROBS} alternatives"
    )
    out = []
    for token, entry in zip(token_ids, raw, strict=True):
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and _logprob(entry[0])
            and _piece(entry[1])
            and isinstance(entry[2], list)
            and len(entry[2]) <= MAX_TOP_LOGPROBS
        ):
            f.fail(FIELD, reason)
        top = []
        for alt in entry[2]:
            if not (
                isinstance(alt, list)
                and len(alt) == 3
                and is_int(alt[0], 0, 2**31 - 1)
                and _piece(alt[1])
                and _logprob(alt[2])
            ):
                f.fail(FIELD, reason)
            top.append(Alternative(alt[0], alt[1], float(alt[2])))
        out.append(TokenLogprob(token, entry[1], float(entry[0]), tuple(top)))
    return tuple(out)


# --- A Done's prompt entries (echo with logprobs): the prompt's tokens from the second on, each
# `[id, logprob, piece, [[id, piece, logprob], ...]]`, and the first one's text. ---

PROMPT_FIELD = "prompt_logprobs"
FIRST_FIELD = "prompt_first"


def add_prompt_logprobs(
    body: dict[str, Any], entries: tuple[TokenLogprob, ...], first: bytes
) -> None:
    """Into a Done's body, only when there are any (a Done without them is as before)."""
    body.pop(PROMPT_FIELD, None)
    body.pop(FIRST_FIELD, None)
    if entries or first:
        body[PROMPT_FIELD] = [
            [e.token, *row] for e, row in zip(entries, encode_logprobs(entries), strict=True)
        ]
        body[FIRST_FIELD] = first


def decode_prompt_logprobs(f: Fields) -> tuple[tuple[TokenLogprob, ...], bytes]:
    first = f.body.get(FIRST_FIELD, b"")
    if not _piece(first):
        f.fail(FIRST_FIELD, f"prompt_first must be at most {MAX_PIECE_BYTES} bytes")
    assert isinstance(first, bytes)
    raw = f.array(PROMPT_FIELD, MAX_PROMPT_LOGPROB_TOKENS)
    ids = []
    for entry in raw:
        if not (isinstance(entry, list) and entry and is_int(entry[0], 0, 2**31 - 1)):
            f.fail(PROMPT_FIELD, "prompt_logprobs: [token id, logprob, piece, alternatives]")
        ids.append(entry[0])
    rows = Fields({FIELD: [entry[1:] for entry in raw]}, f.id, f.tag)
    try:
        return decode_logprobs(rows, tuple(ids)), first
    except InvalidMessage as exc:
        f.fail(PROMPT_FIELD, f"prompt_{exc}")
