"""Stream chunks built from the per-request template equal the generic ones, byte for byte."""

from __future__ import annotations

import json

import pytest

from p2p.api.responses import ResponseShape, sse

TEXTS = [
    "hello",
    " 1,",
    "",
    'quote " backslash \\ newline \n tab \t',
    "é ü 中文 🙂",
    "\x00 nul",
    "\u2028",
]


@pytest.mark.parametrize("kind", ["completion", "chat"])
@pytest.mark.parametrize("text", TEXTS)
def test_text_event_is_the_generic_chunk(kind: str, text: str) -> None:
    shape = ResponseShape.new(kind, 'model "with" quotes')
    event = shape.text_event(text)
    if text:
        assert event == sse(shape.chunk(text))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    body = json.loads(event[len(b"data: ") :])
    choice = body["choices"][0]
    assert (choice["delta"]["content"] if kind == "chat" else choice["text"]) == text
    assert body["id"] == shape.id and body["model"] == shape.model
