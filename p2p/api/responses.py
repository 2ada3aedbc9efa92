"""The bodies of OpenAI responses: whole and chunked completions, usage, SSE framing.

Pure functions, no I/O, separate from the ASGI response in p2p/api/generation_response.py so
that the JSON a client sees can be read (and tested) apart from the streaming and cancellation
around it. Error bodies are p2p/api/openai_errors.py's.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from typing import Any

import attrs

from p2p.api.tool_params import assistant_message
from p2p.protocol import wire

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies (nginx) must not buffer the stream
]


def usage_json(done: wire.Done) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        # OpenAI's field for prompt tokens served from a cache (the node's prompt-prefix cache)
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def openai_finish_reason(done: wire.Done) -> str:
    # "cancelled" only happens when we cancelled; OpenAI knows stop and length.
    return done.finish_reason if done.finish_reason in ("stop", "length") else "stop"


@attrs.frozen
class ResponseShape:
    """Builds the JSON objects of one response (completion or chat, whole or chunked)."""

    kind: str
    id: str
    model: str
    created: int
    # The declared functions whose calls a chat answer is parsed for (p2p/api/tool_params.py).
    tool_names: tuple[str, ...] = ()

    @classmethod
    def new(cls, kind: str, model: str, tool_names: tuple[str, ...] = ()) -> ResponseShape:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return cls(kind, prefix + secrets.token_hex(12), model, int(time.time()), tool_names)

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, done: wire.Done) -> dict[str, Any]:
        if self.kind == "chat":
            message, called = assistant_message(text, self.tool_names)
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if called else openai_finish_reason(done),
            }
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage_json(done)}
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": openai_finish_reason(done),
        }
        return {**self._head("text_completion"), "choices": [choice], "usage": usage_json(done)}

    def chunk(self, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
        """A stream chunk; for chat, text None is the opening chunk that carries the role."""
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if text is None:
                delta = {"role": "assistant", "content": ""}
            elif text:
                delta = {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def tool_calls_chunk(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        """The stream chunk that carries a chat answer's tool calls (all of them, at its end)."""
        chunk = self.chunk("")
        chunk["choices"][0]["delta"] = {"tool_calls": calls}
        return chunk

    def text_event(self, text: str) -> bytes:
        """`sse(self.chunk(text))` for non-empty text, from a template: this runs once per
        token, and only the text needs encoding (the rest of the chunk is fixed)."""
        head, tail = self._text_event_parts
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    @functools.cached_property
    def _text_event_parts(self) -> tuple[bytes, bytes]:
        marker = "\x00text\x00"  # json.dumps escapes NUL, so the marker cannot occur otherwise
        event = sse(self.chunk(marker))
        head, _, tail = event.partition(json.dumps(marker, ensure_ascii=False).encode())
        return head, tail

    def usage_chunk(self, done: wire.Done) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage_json(done)}


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
