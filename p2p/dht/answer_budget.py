"""Answers within a byte budget, and the small form that carries a cookie; sans-IO.

An answer to a source that has not proven its address (`p2p.dht.address_cookies`) is at most
`AMPLIFICATION_FACTOR` × its request. When the ordinary answer is larger, the small form is sent
instead, a map the asker recognises by its `cookie` field:

    find_value:  {"cookie": c, "value": [blob, ...]}     the blobs that fit
    find_node:   {"cookie": c, "nodes": [contact, ...]}  the contacts that fit
    record:      {"cookie": c}

Our own client then asks once more with the cookie as one extra, trailing argument and gets the
ordinary answer (`unwrap_small_answer` turns a small form back into the ordinary shape when the
second answer is small too, say from a node that restarted in between). A request without a
cookie is still answered, small.
"""

from __future__ import annotations

from typing import Any

import msgpack

from p2p.dht.address_cookies import AMPLIFICATION_FACTOR, COOKIE_LEN

COOKIE_FIELD = "cookie"
# rpcudp framing around an answer's msgpack: 1 byte of kind, 20 bytes of message id.
REPLY_OVERHEAD = 21
# A msgpack list header grows from 1 byte to 3 at 16 items and to 5 at 65,536.
LIST_HEADER_SLACK = 4


def packed_len(value: object) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


def answer_budget(request_bytes: int) -> int:
    """Bytes of msgpack an answer to an unproven source may hold (its datagram: 3× the request)."""
    return AMPLIFICATION_FACTOR * request_bytes - REPLY_OVERHEAD


def fits(answer: object, budget: int | None) -> bool:
    return budget is None or packed_len(answer) <= budget


def items_room(budget: int, field: str) -> int:
    """Bytes left for the items of a small form under *field* in *budget*."""
    empty = {COOKIE_FIELD: bytes(COOKIE_LEN), field: []}
    return budget - packed_len(empty) - LIST_HEADER_SLACK


def small_answer(
    cookie: bytes, budget: int, field: str | None = None, items: Any = ()
) -> dict[str, Any]:
    """The cookie, and under *field* those of *items*, in order, that fit in *budget* bytes.

    An item too large is skipped, not a stop: a later, smaller one may still fit."""
    if field is None:
        return {COOKIE_FIELD: cookie}
    room = items_room(budget, field)
    chosen: list[Any] = []
    for item in items:
        size = packed_len(item)
        if size <= room:
            chosen.append(item)
            room -= size
    return {COOKIE_FIELD: cookie, field: chosen}


def unwrap_small_answer(answer: object) -> tuple[bytes | None, object]:
    """(the cookie, the answer in its ordinary shape) of a small form; (None, *answer*) else.

    A map with a cookie and anything but one known field unwraps to None (no answer)."""
    if not isinstance(answer, dict):
        return None, answer
    cookie = answer.get(COOKIE_FIELD)
    if not (isinstance(cookie, bytes) and len(cookie) == COOKIE_LEN):
        return None, answer
    rest = set(answer) - {COOKIE_FIELD}
    if rest == {"value"}:
        return cookie, {"value": answer["value"]}
    if rest == {"nodes"}:
        return cookie, answer["nodes"]
    return cookie, None
