"""Typed, bounded reads of one received message's fields, and the errors they raise.

Shared by every message decoder (wire.py, generate_wire.py, score_wire.py): a failure names the
field and, once the id was read, the request, so the receiver answers `bad_request` for that one
request and the session goes on.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import attrs

from p2p.errors import BadRequest


class ProtocolError(BadRequest, ValueError):
    """The peer sent something that is not a valid message (`field` names the culprit, if one).

    Raised as such only when the message's id could not be read; see `InvalidMessage`."""


class InvalidMessage(ProtocolError):
    """A message whose `id` was read but whose `field` is invalid: an error of that one request."""

    def __init__(self, message: str, *, request_id: int, field: str, tag: str | None) -> None:
        super().__init__(message, field=field)
        self.request_id = request_id
        self.tag = tag

    @property
    def malformed(self) -> Malformed:
        return Malformed(self.request_id, self.tag, self.field or "?", str(self))


def is_int(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


class Fields:
    """Typed reads of one message's fields; each failure names the field and the request."""

    def __init__(self, body: dict[Any, Any], rid: int, tag: str | None) -> None:
        self.body = body
        self.id = rid
        self.tag = tag

    def fail(self, field: str, reason: str) -> NoReturn:
        raise InvalidMessage(reason, request_id=self.id, field=field, tag=self.tag)

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        v = self.body.get(key, default)
        if not is_int(v, lo, hi):
            self.fail(key, f"{key} must be an integer from {lo} to {hi}")
        assert isinstance(v, int)
        return v

    def number(self, key: str, lo: float, hi: float, default: float | None = None) -> float:
        v = self.body.get(key, default)
        number = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not (number and lo <= float(v) <= hi):  # type: ignore[arg-type]
            self.fail(key, f"{key} must be a number from {lo:g} to {hi:g}")
        return float(v)  # type: ignore[arg-type]

    def string(self, key: str, limit: int, default: str | None = None) -> str:
        return self.text(self.body.get(key, default), limit, key)

    def text(self, v: object, limit: int, field: str) -> str:
        if not isinstance(v, str) or len(v) > limit:
            self.fail(field, f"{field} must be a string of at most {limit} characters")
        return v

    def flag(self, key: str, default: bool) -> bool:
        v = self.body.get(key, default)
        if not isinstance(v, bool):
            self.fail(key, f"{key} must be true or false")
        return v

    def array(self, key: str, limit: int) -> list[Any]:
        v = self.body.get(key, [])
        if not isinstance(v, list) or len(v) > limit:
            self.fail(key, f"{key}: a list of at most {limit}")
        return v

    def token_ids(self, key: str, limit: int) -> tuple[int, ...]:
        raw = self.array(key, limit)
        for t in raw:
            if not is_int(t, 0, 2**31 - 1):
                self.fail(key, f"{key}: token ids are non-negative integers")
        return tuple(raw)


def utf8_len(text: str) -> int:
    """Bytes of *text* in UTF-8; a lone surrogate (msgpack can carry one) counts as 3."""
    return len(text.encode("utf-8", "surrogatepass"))


@attrs.frozen
class Malformed:
    """A received message whose id was readable but not the rest (`InvalidMessage` as a value).

    Never encoded: it exists on the receiving side only, so that the request state machines can
    answer for that id instead of the session closing."""

    id: int
    tag: str | None  # the type it claimed (``t``), when that was a string
    field: str
    reason: str
