"""A request's GBNF grammar (GenerationRequest.grammar) as llama.cpp's grammar sampler, applied
lazily beside the request's sampler chain (inference/llama_lowlevel.py `Sampler`).

Three facts about llama.cpp's grammar sampler shape this module:

- Applying it to every candidate of a step is slow on a large vocabulary (each token's piece is
  matched against the grammar's stacks: Gemma 3's 262,144 tokens cost 40-70 ms), so a step
  is sampled as llama.cpp's common sampler does it: the chain picks a token without the grammar
  (`Sampler.sample`'s usual path), the grammar checks that one token (`legal`: a one-candidate
  array, microseconds), and only when the grammar forbids it is the step sampled again with the
  grammar applied to every candidate first (`restricted`). Greedy, the pick is exactly the
  best token the grammar allows; sampled, the replayable draw (inference/replayable_draw.py)
  uses the same noise in both passes, so the step stays a pure function of (logits, seed, step,
  grammar state) and `Sampler.choice_margin` replays it by the same two passes. The second pass
  itself mostly avoids the full vocabulary: when the chain is its filters alone, the top-k
  tokens the grammar allows among the best logits are all the full pass would keep (`restricted`
  says when; docs/benchmarks.md has the figures).
- The grammar matches code points, and byte-fallback tokens (<0xE0>, ...) let a model spell
  bytes that are no UTF-8 at all: llama.cpp decodes an overlong or out-of-range sequence into
  some code point and lets it through, and the text then holds U+FFFD where the grammar saw a
  character (a JSON string longer than its maxLength, an enum value misspelt). So under a
  grammar a token is also illegal when the text so far plus its bytes is no valid UTF-8 prefix
  (Python's strict decoder decides; `irregular_pieces` lists the few tokens that need asking).
- Accepting a token the grammar forbids throws a C++ exception that crosses ctypes and aborts
  the process. So nothing is accepted unchecked: `accept` checks first, replayed tokens are
  walked through a grammar of their own before the run starts (`check_tokens`), and scoring
  marks the grammar broken at the first given token it forbids (`refuse`), after which every
  margin is +inf.

The grammar's state is its stacks, moved only by `accept`; a speculative draft never reaches it
(BatchSequence keeps a draft token only when the chain, grammar included, sampled it).
Scheduler thread only, as the Sampler that owns it.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.generation import GenerationError, GenerationRequest
from inference.replayable_draw import TOKEN_DATA, draw

if TYPE_CHECKING:
    from inference.replayable_draw import Candidates, DrawStep

# inference/llama_lowlevel.py's LoadedModel (which imports this module, so not named here).
LoadedModel = Any

# What a parse failure says when llama.cpp logged no reason (it prints the parser's own message
# to stderr, not through its log).
_PARSE_FAILED = "llama.cpp could not parse the grammar (GBNF, with a rule named root)"


# (model address, vocabulary size) -> (fingerprint pieces, irregular table); a few models.
_IRREGULAR: dict[tuple[int, int], tuple[list[bytes], dict[int, bytes]]] = {}
_IRREGULAR_LOCK = threading.Lock()  # each worker thread scans its own model


def irregular_pieces(model: LoadedModel) -> dict[int, bytes]:
    """The tokens whose piece is not whole UTF-8 (byte-fallback and partial-character tokens),
    with their bytes. One scan of the vocabulary per model (about a second for 262,144 tokens),
    kept by the model's address and checked against 64 of its pieces, so that ModelWorker's
    borrowed views and a model loaded later at the same address are told apart."""
    n = model.n_vocab
    key = (ctypes.cast(model.model, ctypes.c_void_p).value or 0, n)
    probe = [model.piece(t) for t in range(0, n, max(1, n // 64))]
    with _IRREGULAR_LOCK:
        known = _IRREGULAR.get(key)
    if known is not None and known[0] == probe:
        return known[1]
    table = {}
    for token in range(n):
        piece = model.piece(token)
        if _utf8_tail(piece) != b"":
            table[token] = piece
    with _IRREGULAR_LOCK:
        if len(_IRREGULAR) >= 16:
            _IRREGULAR.clear()
        _IRREGULAR[key] = (probe, table)
    return table


def _utf8_tail(data: bytes) -> bytes | None:
    """The unfinished character at the end of `data` (b"" when none); None when `data` is no
    valid UTF-8 prefix."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.end == len(data) and e.reason == "unexpected end of data":
            return data[e.start :]
        return None
    return b""


# Tokens `restricted`'s shortcut checks one by one, best logit first, before the full pass.
_WALK = 4096
_SPAN = 16.0  # logit units: e**-16 of the best token's probability
_MAX_SHORTCUT_TOP_K = 64
_GREEDY_PEEK = 16


def _shortcut(request: GenerationRequest) -> int:
    """How many legal tokens `restricted`'s shortcut must find: 1 greedy, top_k sampled; 0
    (no shortcut) when something before top-k reorders the logits or top-k is off or large."""
    if request.logit_bias or request.ignore_eos or request.penalized:
        return 0
    if request.temperature == 0:
        return 1
    return request.top_k if 0 < request.top_k <= _MAX_SHORTCUT_TOP_K else 0


def _min_p_gap(request: GenerationRequest) -> float | None:
    """log(min_p): how far below the best logit min_p cuts (llama.cpp compares logits, before
    temperature), when nothing between top-k and min_p depends on the other candidates
    (top_p and typical_p off); None otherwise."""
    if request.temperature == 0 or request.min_p <= 0:
        return None
    if request.top_p < 1 or request.typical_p < 1:
        return None
    return math.log(request.min_p)


# llama.cpp parses a grammar by recursive descent: parentheses nested ~20,000 deep overflow the
# C stack (measured: a segfault with an 8 MiB stack at 20,000, fine at 15,000), so a peer's
# grammar is refused past this depth before llama.cpp sees it. Schemas stay far below it
# (inference/json_schema_grammar.py bounds repetitions at MAX_REPEAT).
MAX_GRAMMAR_NESTING = 1024


def grammar_nesting(text: str) -> int:
    """How deep the grammar's parentheses nest, outside literals, classes and comments."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in '"[':  # a literal or a character class: skip to its end, past escapes
            end = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != end:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] not in "\r\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def _init(lib: Any, vocab: Any, text: str) -> Any:
    """A new grammar sampler for `text`; GenerationError naming the grammar when it does not
    parse (llama.cpp returns NULL: a syntax error, an undefined rule, left recursion)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GenerationError("grammar: not valid Unicode") from e
    if b"\0" in data:
        raise GenerationError("grammar: must not contain NUL characters")
    if grammar_nesting(text) > MAX_GRAMMAR_NESTING:
        raise GenerationError(f"grammar: parentheses nest more than {MAX_GRAMMAR_NESTING} deep")
    pointer = lib.llama_sampler_init_grammar(vocab, data, b"root")
    if not pointer:
        raise GenerationError(f"grammar: {_PARSE_FAILED}")
    return pointer


class Grammar:
    """One run's grammar state, with the buffers its checks reuse."""

    def __init__(
        self,
        lib: Any,
        vocab: Any,
        n_vocab: int,
        text: str,
        *,
        irregular: dict[int, bytes],
        stateful: bool = False,
        needed: int = 0,
        min_p_gap: float | None = None,
    ) -> None:
        self._lib = lib
        self._needed = needed  # restricted's shortcut: how many legal tokens the chain keeps
        self._min_p_gap = min_p_gap  # log(min_p) when min_p alone cuts after top-k
        self._irregular = irregular
        self._pending = b""  # the accepted text's unfinished UTF-8 character
        self._banned: dict[bytes, np.ndarray[Any, Any]] = {}  # per pending: irregular misfits
        self._vocab = vocab
        self._text = text
        # Whether the chain's own accept moves state (the penalty window): then its pick is
        # made without llama_sampler_sample, which would accept it before the grammar checks.
        self._stateful = stateful
        self._pointer: Any = _init(lib, vocab, text)
        self._one = np.zeros(1, dtype=TOKEN_DATA)
        self._all = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        # Scoring only: a given token the grammar forbids. The state cannot move past it, and no
        # run under this grammar could have produced what follows.
        self.broken = False
        self.exhausted = False  # no token the grammar allows was left: the run ends

    @classmethod
    def for_request(cls, model: LoadedModel, request: GenerationRequest) -> Grammar:
        """The grammar of a request whose replayed tokens it allows; GenerationError (and
        nothing left allocated) otherwise."""
        grammar = cls(
            model.lib,
            model.vocab,
            model.n_vocab,
            request.grammar,
            irregular=irregular_pieces(model),
            stateful=request.penalized,
            needed=_shortcut(request),
            min_p_gap=_min_p_gap(request),
        )
        try:
            grammar.check_tokens(request.replay_tokens)
        except BaseException:
            grammar.close()
            raise
        return grammar

    def sample(
        self,
        chain: Any,
        candidates: Candidates | None,
        model: LoadedModel,
        i: int,
        draw_step: DrawStep | None,
    ) -> int:
        """The run's token from batch index i's logits, sampled by `chain` (its draw at the
        step it is set to) under the grammar, as the module docstring says; accepted by the
        grammar and, when stateful, by the chain. When the grammar allows nothing the chain
        keeps: the end-of-sequence token, not accepted, and `exhausted` is set."""
        lib = self._lib
        logits = model.logits(i)
        assert candidates is not None  # a grammar comes with a chain
        if self._needed == 1:  # the chain is greedy alone: its pick is the argmax
            token = int(logits.argmax())
        elif self._stateful:
            seed, step = (None, 0) if draw_step is None else (draw_step.seed, draw_step.step)
            token = first_pick(candidates.apply(chain, logits), seed, step)
        else:  # a stateless chain's accept (inside llama_sampler_sample) changes nothing
            token = int(lib.llama_sampler_sample(chain, model.ctx, i))
        if draw_step is not None:
            draw_step.check()
        if not self.legal(token):
            kept, selected = self.restricted(chain, logits)
            if draw_step is not None:
                draw_step.check()
            if selected < 0:
                self.exhausted = True
                return int(lib.llama_vocab_eos(self._vocab))
            token = int(kept["id"][selected])
        self.accept(token)
        if self._stateful:
            lib.llama_sampler_accept(chain, token)
        return token

    def survivors(
        self,
        chain: Any,
        kept: np.ndarray[Any, Any],
        logits: np.ndarray[Any, Any],
        token: int,
        draw_step: DrawStep | None,
        step: int,
    ) -> np.ndarray[Any, Any]:
        """Scoring's replay of `sample` at `step`: of the chain's survivors `kept` (its pass
        without the grammar), those the token was picked among — `kept` when the grammar allows
        their pick, else the survivors of the pass with the grammar first; none when the
        grammar forbids `token` (its margin is then +inf)."""
        if not self.legal(token):
            return kept[:0]
        seed = None if draw_step is None else draw_step.seed
        if self.legal(first_pick(kept, seed, step)):
            return kept
        return self.restricted(chain, logits)[0]

    def _array(self, data: np.ndarray[Any, Any]) -> Any:
        lib = self._lib
        return lib.llama_token_data_array(
            data=data.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)),
            size=len(data),
            selected=-1,
            sorted=False,
        )

    def legal(self, token: int) -> bool:
        """Whether the grammar allows `token` next (an end-of-generation token: whether the
        grammar is complete)."""
        if self.broken or self._tail(token) is None:
            return False
        one = self._one
        one["id"] = token
        one["logit"] = 0.0
        one["p"] = 0.0
        array = self._array(one)
        self._lib.llama_sampler_apply(self._pointer, ctypes.byref(array))
        return bool(array.size == 1 and math.isfinite(float(one["logit"][0])))

    def _best_legal(self, logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
        """The `_needed` best tokens the grammar allows, checked one by one down the _WALK
        best logits (best first, lower id first on ties); None when fewer are among them."""
        n = len(logits)
        if self._needed == 1:  # greedy: the next few best by argmax first (a partition of the
            masked = logits.copy()  # whole vocabulary costs milliseconds)
            for _ in range(min(_GREEDY_PEEK, n)):
                token = int(masked.argmax())
                if self.legal(token):
                    return np.array([token], dtype=np.int32)
                masked[token] = -np.inf
        # The tokens within _SPAN of the best logit (one pass, no partition), or the _WALK best;
        # every token not walked has a logit below `below`.
        below = float(logits.max()) - _SPAN
        ids = np.flatnonzero(logits >= below)
        if len(ids) > _WALK:
            top = min(_WALK, n)
            ids = np.argpartition(logits, n - top)[n - top :]
            below = float(logits[ids].min()) + 1e-3  # ties with the least may lie outside
        ids = ids[np.lexsort((ids, -logits[ids]))].astype(np.int32)
        found: np.ndarray[Any, Any] = ids[self._legal_many(ids)]
        if len(found) >= self._needed:
            return found[: self._needed]
        # Fewer: still all that min_p keeps when every token not walked (logit at most the
        # last walked one's) is below min_p's bar, which the best legal token sets.
        gap = self._min_p_gap
        if found.size and gap is not None and below <= float(logits[found[0]]) + gap:
            return found
        return None

    def _legal_many(self, ids: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """`legal` of each of `ids` (a mask), in one application of the grammar."""
        if self.broken:
            return np.zeros(len(ids), dtype=bool)
        data = self._all[: len(ids)]
        data["id"] = ids
        data["logit"] = 0.0
        data["p"] = 0.0
        array = self._array(data)
        self._lib.llama_sampler_apply(self._pointer, ctypes.byref(array))
        ok: np.ndarray[Any, Any] = np.isfinite(data["logit"])
        if self._pending:  # only the right continuation bytes may follow
            ok &= np.isin(ids, self._continuations())
        else:
            ok &= ~np.isin(ids, self._misfits())
        return ok

    def accept(self, token: int) -> None:
        """Move the grammar past `token`; GenerationError (never llama.cpp's abort) when the
        grammar forbids it."""
        if not self.legal(token):
            raise GenerationError(f"token {token} is not allowed by the request's grammar here")
        self._lib.llama_sampler_accept(self._pointer, token)
        self._pending = self._tail(token) or b""

    def refuse(self, token: int) -> bool:
        """Scoring's accept: move past `token` when allowed, else mark the grammar broken.
        Whether it was allowed."""
        if self.legal(token):
            self.accept(token)
            return True
        self.broken = True
        return False

    def check_tokens(self, tokens: Iterable[int]) -> None:
        """GenerationError unless the grammar allows `tokens` in order from its start (a
        replay), checked on a grammar of their own so that this one does not move."""
        tokens = tuple(tokens)
        if not tokens:
            return
        other = Grammar(self._lib, self._vocab, 1, self._text, irregular=self._irregular)
        try:
            for i, token in enumerate(tokens):
                if not other.legal(token):
                    raise GenerationError(
                        f"replay token {token} (position {i}) is not allowed by the request's "
                        "grammar"
                    )
                other.accept(token)
        finally:
            other.close()

    def restricted(
        self, chain: Any, logits: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], int]:
        """The step sampled with the grammar first: every candidate the grammar forbids gets
        -inf, then `chain` (filters and the final pick) runs over them. The survivors (a copy)
        and the index of the chain's pick among them; -1 when the grammar allows no token that
        the chain left (its logit would be -inf).

        The shortcut, when the chain is its filters alone (no bias, ban or penalty before top-k)
        and top-k (1 when greedy) is small: the top-k tokens the grammar allows, found among the
        best logits, are all the filters would keep of the full pass, so the chain runs over just
        them (the same pick and survivors, up to exact ties) at a few per cent of the cost. So
        are fewer, when min_p would cut every token not walked (`_best_legal`)."""
        lib, data = self._lib, self._all
        best = self._best_legal(logits) if self._needed else None
        if best is not None:
            data = data[: len(best)]
            data["id"] = best
            data["logit"] = logits[best]
        else:
            data["id"] = self._ids
            data["logit"] = logits
        data["p"] = 0.0
        array = self._array(data)
        if best is None:
            lib.llama_sampler_apply(self._pointer, ctypes.byref(array))
            if self._pending:  # only the right continuation bytes may follow
                keep = data["logit"][self._continuations()]
                data["logit"] = -np.inf
                data["logit"][self._continuations()] = keep
            else:
                data["logit"][self._misfits()] = -np.inf
        lib.llama_sampler_apply(chain, ctypes.byref(array))
        size = int(array.size)
        address = ctypes.cast(array.data, ctypes.c_void_p).value
        if address == data.ctypes.data:
            kept = data[:size].copy()
        else:  # a sampler replaced the array (llama.cpp's do not today)
            raw = (ctypes.c_char * (size * TOKEN_DATA.itemsize)).from_address(address or 0)
            kept = np.frombuffer(memoryview(raw), dtype=TOKEN_DATA, count=size).copy()
        selected = int(array.selected)
        if not 0 <= selected < size or not math.isfinite(float(kept["logit"][selected])):
            return kept, -1
        return kept, selected

    def _tail(self, token: int) -> bytes | None:
        """The unfinished character after `token`; None when it would make the text no UTF-8."""
        piece = self._irregular.get(token)
        if piece is None:  # whole UTF-8 of its own: fits unless a character is unfinished
            return self._pending if not self._pending else None
        return _utf8_tail(self._pending + piece)

    def _misfits(self) -> np.ndarray[Any, Any]:
        """With no unfinished character: the irregular tokens that cannot start one."""
        if b"" not in self._banned:
            bad = [t for t in self._irregular if self._tail(t) is None]
            self._banned[b""] = np.array(bad, dtype=np.int64)
        return self._banned[b""]

    def _continuations(self) -> np.ndarray[Any, Any]:
        """With an unfinished character: the tokens that continue it validly."""
        pending = self._pending
        if pending not in self._banned:
            good = [t for t in self._irregular if self._tail(t) is not None]
            self._banned[pending] = np.array(good, dtype=np.int64)
        return self._banned[pending]

    def close(self) -> None:
        if self._pointer is not None:
            self._lib.llama_sampler_free(self._pointer)
            self._pointer = None


def first_pick(kept: np.ndarray[Any, Any], seed: int | None, step: int) -> int:
    """The token the chain picks among its survivors `kept`: the replayable draw at (seed,
    step), or greedy (seed None) the first of highest logit, as llama.cpp's greedy sampler."""
    if kept.size == 0:
        return -1
    if seed is None:
        return int(kept["id"][int(np.argmax(kept["logit"]))])
    return draw(seed, step, kept["id"], kept["logit"])
