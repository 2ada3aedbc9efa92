"""A request body into JSON, with its bounds checked before the parser sees it.

Pure functions over bytes. Two bounds, both refused as a 400 (or 413) instead of a 500:

- size: `MAX_BODY_BYTES`, checked by the caller while the body streams in;
- nesting: Python's json module recurses once per `[` or `{`, so a body of 100,000 brackets
  raises RecursionError inside `json.loads` (a 500 before this check). `nesting_depth` counts
  the depth with two C-speed passes (strings blanked out by a regex, then every byte that is no
  bracket deleted) and one bounded walk over the brackets that remain, so the parser only ever
  sees bodies at most `MAX_JSON_DEPTH` deep.
"""

from __future__ import annotations

import json
import re

from crypto.secure_session import MAX_FRAME_PLAINTEXT
from p2p.api.openai_errors import ApiError, bad_request

# A request is one session frame once it is a `wire.Generate`; its JSON form can be larger
# (escapes such as \u00e9 take 6 bytes for 2), so the body may be twice a frame. Anything the
# wire could carry fits; a prompt over the wire's limit still gets its 400 `too_long` from
# request_parsing.py rather than a 413.
MAX_BODY_BYTES = 2 * MAX_FRAME_PLAINTEXT
# An OpenAI request is 4 levels deep (body → messages → message → content parts); a JSON schema
# in response_format or tools adds a handful more. 32 leaves room for any client library and
# stays far below Python's recursion limit (1000), which json.loads would otherwise meet.
MAX_JSON_DEPTH = 32

# A JSON string: quote, then runs of ordinary bytes or escapes (the unrolled, linear form).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")


def nesting_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of arrays and objects in *body*, counted up to `limit + 1`.

    Invalid JSON gets a number too (the parser then refuses it); an unterminated string is
    counted as if its brackets were structure, which can only over-count.
    """
    brackets = _STRING.sub(b'""', body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        depth = depth + 1 if byte in _OPENERS else depth - 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


def parse_json_body(body: bytes) -> object:
    """The JSON value of a request body, or a 400 naming why it is not one.

    UTF-8 only (RFC 8259 §8.1), checked first: `json.loads` would also take UTF-16 and UTF-32,
    whose bytes can fake a quote (U+0122 is 22 01 in UTF-16-LE) and hide brackets from the
    depth scan. In UTF-8 no byte of a multi-byte character is ASCII, so the scan is exact.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not UTF-8 ({exc.reason})") from exc
    if nesting_depth(body) > MAX_JSON_DEPTH:
        raise bad_request(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except ValueError as exc:  # over-long integers included
        raise bad_request(f"the request body is not valid JSON ({exc})") from exc


def body_too_large() -> ApiError:
    return ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
