"""The `logprobs` objects of OpenAI's answers, from the entries the node sent with each text.

Chat: `choices[].logprobs = {"content": [{token, logprob, bytes, top_logprobs: [{token,
logprob, bytes}]}], "refusal": null}`, whole or per streamed chunk (a chunk's own tokens).
Completions (the legacy shape): `{tokens, token_logprobs, top_logprobs: [{token: logprob}],
text_offset}`, the offsets counted in characters of the answer's text (the echoed prompt
included). The text a piece arrives as is p2p/client/token_stream.py's `LoggedText`; a piece
without entries (a node too old to send them) is counted in `missing` so the response can say
so rather than answer with gaps. Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

import attrs

from inference.token_logprobs import Alternative, TokenLogprob
from p2p.api.openai_errors import ApiError
from p2p.errors import ErrorCode
from p2p.protocol import wire


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _chat_entry(e: TokenLogprob) -> dict[str, Any]:
    return {
        "token": _text(e.piece),
        "logprob": e.logprob,
        "bytes": list(e.piece),
        "top_logprobs": [_chat_alternative(a) for a in e.top],
    }


def _chat_alternative(a: Alternative) -> dict[str, Any]:
    return {"token": _text(a.piece), "logprob": a.logprob, "bytes": list(a.piece)}


def _top_map(e: TokenLogprob) -> dict[str, float]:
    top: dict[str, float] = {}
    for a in e.top:  # best first: of two tokens with the same text, the likelier one
        top.setdefault(_text(a.piece), a.logprob)
    return top


class LogprobShapes:
    """The `logprobs` objects of one choice, piece by piece as the text arrives."""

    def __init__(self, kind: str, offset: int = 0) -> None:
        self.kind = kind
        self.offset = offset  # characters of the answer's text so far (an echoed prompt's)
        self.prompt_chars = offset
        self.entries: list[TokenLogprob] = []
        self.offsets: list[int] = []
        self.missing = 0  # pieces of text that came without entries

    def add(self, text: str) -> dict[str, Any]:
        """Take the entries of one piece of text; the `logprobs` object of its stream chunk."""
        entries: tuple[TokenLogprob, ...] = getattr(text, "logprobs", ())
        if text and not entries:
            self.missing += 1
        offsets, at = [], self.offset
        for e in entries:
            offsets.append(min(at, self.offset + len(text)))
            at += len(_text(e.piece))
        self.offset += len(text)
        self.entries.extend(entries)
        self.offsets.extend(offsets)
        return self._shape(entries, offsets)

    def gap(self) -> ApiError | None:
        """The error to answer with when text came without its entries (an older node)."""
        if not self.missing:
            return None
        return ApiError.from_code(
            ErrorCode.INTERNAL,
            f"the serving node sent no log-probabilities for {self.missing} pieces of text "
            "(a node of an older version?)",
            "logprobs",
        )

    def whole(self, done: wire.Done | None = None, *, generated: bool = True) -> dict[str, Any]:
        """The whole answer's object; with an echoed prompt, its entries (in `done`) first.
        `generated` False: the prompt's alone (echo with max_tokens 0)."""
        body = self._shape(self.entries, self.offsets) if generated else self._shape([], [])
        if self.kind == "chat" or done is None or not (done.prompt_first or done.prompt_logprobs):
            return body
        prompt = self._prompt(done)
        return {key: prompt[key] + body[key] for key in body}

    def _prompt(self, done: wire.Done) -> dict[str, list[Any]]:
        """The echoed prompt's part of the legacy shape: its first token has no logprob (null,
        as OpenAI's); offsets within the prompt's text (`offset` started at its length)."""
        texts = [_text(done.prompt_first), *(_text(e.piece) for e in done.prompt_logprobs)]
        offsets, at = [], 0
        for text in texts:
            offsets.append(min(at, self.prompt_chars))
            at += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [None, *(e.logprob for e in done.prompt_logprobs)],
            "top_logprobs": [None, *(_top_map(e) for e in done.prompt_logprobs)],
            "text_offset": offsets,
        }

    def _shape(self, entries: Any, offsets: list[int]) -> dict[str, Any]:
        if self.kind == "chat":
            return {"content": [_chat_entry(e) for e in entries], "refusal": None}
        return {
            "tokens": [_text(e.piece) for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [_top_map(e) for e in entries],
            "text_offset": list(offsets),
        }


def prompt_only_done(done: wire.Done) -> wire.Done:
    """The Done an echo with max_tokens 0 answers with: nothing generated (the one token the
    node was asked for is left out of the text and the usage), finish_reason "length"."""
    return attrs.evolve(done, finish_reason="length", completion_tokens=0)
