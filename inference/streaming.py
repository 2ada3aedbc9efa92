"""Turning generated tokens into the chunks of text a client receives: pure, no llama.cpp.

Both workers feed every generated token's bytes to a TextAssembler and send what it releases.
Text is held back while it ends in an unfinished UTF-8 character or in what could be the start of
a stop string, and on a stop string everything from it on is dropped.

**Token ids travel with their text.** Each TokenChunk carries `token_ids`, the tokens its text
was decoded from, and text is released only at token boundaries where the UTF-8 decoder holds no
partial character: a token whose text is partly held back (or that ends inside a character) is
held back whole. So, at any moment, the text a client has received is exactly the decoding of
the ids it has received. That is what mid-stream failover needs: the client sends the ids it has
as `replay_tokens` to another node, which feeds them one per decode step without emitting their
text (`replay()` here), and goes on where the first node stopped, with no text lost or doubled.

Ids whose text was never released — the tokens from a stop string on, or tokens of no text at
the very end — are listed in GenerationDone.token_ids, so chunks + done give every generated
token. End-of-generation tokens are never listed (they are not text and not counted).

A request that asks for log-probabilities hands each token's entry (inference/token_logprobs.py)
to `add` with the token; a chunk carries the entries of exactly its own token ids.
"""

from __future__ import annotations

import codecs

from inference.generation import TokenChunk
from inference.token_logprobs import TokenLogprob


def split_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """Split pending text into (safe to send, hold back, stopped).

    Text that could be the start of a stop string is held back until the next token decides;
    on a match everything from the stop string on is dropped.
    """
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return text[: min(hits)], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return text[: len(text) - hold], text[len(text) - hold :], False


class TextAssembler:
    """The text of one generation, released chunk by chunk (see the module docstring).

    asm = TextAssembler(stops)
    for each replayed token: asm.replay(piece)
    for each new token:      chunk = asm.add(token, piece); send it if not None;
                             break if asm.stopped
    at the end (not on a stop): chunk = asm.finish(); send it if not None
    GenerationDone(token_ids=asm.unreleased, ...)
    """

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._stops = stops
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._text = ""  # decoded, not yet released
        self._ends: list[int] = []  # per pending token: len(self._text) once it was decoded
        self._clean: list[bool] = []  # per pending token: no partial character after it
        self._ids: list[int] = []  # pending tokens
        # per pending token: its log-probability entry, when the request asked for them
        self._entries: list[TokenLogprob] = []
        self._unreleased: list[int] = []
        self.stopped = False

    @property
    def unreleased(self) -> tuple[int, ...]:
        """Generated tokens that no chunk carried: for GenerationDone.token_ids."""
        return tuple(self._unreleased)

    def replay(self, piece: bytes) -> None:
        """A token the client already has (its text was delivered): only the UTF-8 decoder's
        state moves. (Ids from a chunk always end on a whole character; should a client replay
        half of one anyway, the next token completes it.)"""
        if self._ids or self._text:
            raise RuntimeError("replayed tokens must come before new ones")
        self._decoder.decode(piece)

    def add(self, token: int, piece: bytes, entry: TokenLogprob | None = None) -> TokenChunk | None:
        """A newly generated token (with its log-probability `entry` when the request asked
        for them: the chunk that releases the token carries it); returns the text it releases,
        if any."""
        if self.stopped:
            raise RuntimeError("add() after a stop string")
        if entry is not None:
            self._entries.append(entry)
        self._text += self._decoder.decode(piece)
        self._ends.append(len(self._text))
        self._clean.append(not self._decoder.getstate()[0])
        self._ids.append(token)
        safe, _, stopped = split_at_stop(self._text, self._stops)
        if stopped:
            self.stopped = True
            # Tokens that begin before the stop string carry the text before it; the rest
            # (the stop string's own tokens) are reported in GenerationDone.
            starts = [0, *self._ends[:-1]]
            carried = sum(1 for start in starts if start < len(safe))
            chunk = self._release(len(safe), carried) if safe else None
            self._unreleased.extend(self._ids)
            self._text, self._ends, self._clean, self._ids = "", [], [], []
            self._entries = []
            return chunk
        carried = 0
        for i, (end, clean) in enumerate(zip(self._ends, self._clean, strict=True)):
            if end > len(safe):
                break
            if clean:
                carried = i + 1
        if carried and self._ends[carried - 1] > 0:
            return self._release(self._ends[carried - 1], carried)
        return None

    def finish(self) -> TokenChunk | None:
        """End of generation (end-of-sequence token or max_tokens): release everything held."""
        self._text += self._decoder.decode(b"", final=True)  # an unfinished char becomes U+FFFD
        # Text without pending ids can only be half a character the client itself replayed:
        # its tokens are the client's, so is its text.
        chunk = self._release(len(self._text), len(self._ids)) if self._ids and self._text else None
        self._unreleased.extend(self._ids)
        self._text, self._ends, self._clean, self._ids = "", [], [], []
        self._entries = []
        return chunk

    def _release(self, n_chars: int, n_tokens: int) -> TokenChunk:
        text, ids = self._text[:n_chars], tuple(self._ids[:n_tokens])
        self._text = self._text[n_chars:]
        self._ends = [end - n_chars for end in self._ends[n_tokens:]]
        self._clean = self._clean[n_tokens:]
        self._ids = self._ids[n_tokens:]
        # Entries exist for every token or none (the request asked for them or not).
        entries, self._entries = tuple(self._entries[:n_tokens]), self._entries[n_tokens:]
        return TokenChunk(text, len(ids), token_ids=ids, logprobs=entries)
