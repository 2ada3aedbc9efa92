"""One llama.cpp model, context and batch, driven through llama-cpp-python's low-level API.

The high-level `llama_cpp.Llama` keeps one sequence per context; continuous batching needs
several sequences in one context (`n_seq_max`), a batch we fill ourselves, and per-sequence
removal from the KV cache. This module is that thin layer and nothing more: BatchingWorker's
scheduler thread owns a LoadedModel, and so does the self-benchmark when it borrows
ModelWorker's context. Not thread-safe; exactly one thread may use an instance.

The KV cache is unified (`kv_unified`): one pool of n_ctx × n_seq cells that all sequences
share, each request limited to n_ctx tokens by the caller (check_fits), so the pool never runs
out. The alternative, a stream of its own per sequence, was measured here and rejected: llama.cpp
then splits a decode step into several micro-batches unless the batch holds consecutive sequence
ids in increasing order, which continuous batching cannot keep (requests finish in any order):
8 sequences in mixed order took 111-125 ms a step against 59-61 ms in order (default model, 2
cores). The unified pool has no such constraint and cost only ~5% at long contexts (8 sequences
of 1,500 tokens: 73.5 against 70.2 ms a step), where each token's attention also runs over the
other sequences' (masked) cells. Flash attention is left to llama.cpp's default (auto: on where
the backend supports it, which includes the CPU).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.generation import MAX_SEED, GenerationError, GenerationRequest
from inference.grammar import Grammar
from inference.greedy_replay import BiasedArgmax, bias_table
from inference.model_file import ModelFileError
from inference.replayable_draw import Candidates, DrawStep, draw_margin


class LoadFailed(ModelFileError):
    """llama.cpp refused the model; `out_of_memory` when an allocation failed."""

    def __init__(self, message: str, *, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


# llama.cpp's default logical batch: the most tokens (prompt chunks + one per decoding sequence)
# one decode step takes.
DEFAULT_N_BATCH = 512
_backend_ready = False

# Loading with verbose=False redirects the process's stdout/stderr for a moment; two loads at
# once would restore each other's redirections wrongly. One load at a time, process-wide.
LOAD_LOCK = threading.Lock()

# llama.cpp's log goes to the "llama.cpp" logger. llama-cpp-python installs its own callback, but
# maps ggml's levels (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5) one off, so with
# verbose=False warnings still reach stderr as if they were errors.
_LOG = logging.getLogger("llama.cpp")
_LOG.addHandler(logging.NullHandler())  # silent unless the application configures logging
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_log_state = {"level": logging.DEBUG}
_log_callback: Any = None  # the ctypes callback; kept referenced so it is never collected


class _ErrorCapture(logging.Handler):
    """llama.cpp's error lines during one load (under LOAD_LOCK), to say why it failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 50:
            self.lines.append(record.getMessage().strip())


@contextlib.contextmanager
def _capture_errors() -> Iterator[list[str]]:
    handler = _ErrorCapture()
    _LOG.addHandler(handler)
    try:
        yield handler.lines
    finally:
        _LOG.removeHandler(handler)


def load_failure(path: Path, errors: Sequence[str]) -> LoadFailed:
    """One line from llama.cpp's error log: an unknown architecture, or memory, or the last
    error it printed."""
    for line in errors:
        match = re.search(r"unknown model architecture: '([^']{0,64})'", line)
        if match:
            return LoadFailed(
                f"{path.name}: this llama.cpp build cannot load the architecture "
                f"'{match.group(1)}' (a newer llama-cpp-python may)"
            )
    for line in errors:
        if re.search(r"(failed|unable) to allocate|out of memory|cudaMalloc failed", line, re.I):
            return LoadFailed(
                f"{path.name}: not enough memory to load it (llama.cpp: {line[:200]})",
                out_of_memory=True,
            )
    last = errors[-1][:200] if errors else "no error message"
    return LoadFailed(f"{path.name} could not be loaded by llama.cpp ({last})")


def install_log_bridge(llama_cpp: Any) -> None:
    """Called under LOAD_LOCK, before the first model load."""
    global _log_callback
    if _log_callback is not None:
        return

    def forward(level: int, text: bytes, _user_data: Any) -> None:
        if level != 5:
            _log_state["level"] = _LOG_LEVELS.get(level, logging.DEBUG)
        message = text.decode("utf-8", "replace").rstrip()
        if message:
            _LOG.log(_log_state["level"], "%s", message)

    _log_callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def token_piece(
    llama_cpp: Any, vocab: Any, token: int, buf: ctypes.Array[ctypes.c_char]
) -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """A token's bytes (possibly part of a UTF-8 character), growing `buf` when too small.

    llama-cpp-python's own detokenize asserts on pieces over 32 bytes; we ask llama.cpp directly.
    """
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n], buf


def check_replay(llama_cpp: Any, vocab: Any, replay: tuple[int, ...]) -> None:
    """GenerationError unless every replayed id is an ordinary token of this vocabulary."""
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    for token in replay:
        if token >= n_vocab:
            raise GenerationError(f"replay token {token} is not in this model's vocabulary")
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            raise GenerationError(f"replay token {token} ends generation; nothing to resume")


def default_threads() -> tuple[int, int]:
    """(decode threads, batch threads) as llama-cpp-python's Llama picks them."""
    cores = os.cpu_count() or 1
    return max(cores // 2, 1), cores


class LoadedModel:
    """A model and a context of `n_seq` sequences of `n_ctx` cells each (see module docstring).

    Either loads a file (`LoadedModel.load`) or borrows the model and context of a `Llama`
    (`LoadedModel.borrow`), in which case close() frees only the batch.
    """

    def __init__(
        self, llama_cpp: Any, model: Any, ctx: Any, *, owned: bool, n_batch: int, n_ctx: int
    ) -> None:
        self.lib = llama_cpp
        self.model = model
        self.ctx = ctx
        self.owned = owned
        self.n_batch = n_batch
        self.n_ctx = n_ctx  # cells per sequence
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_tokens = 0  # in the batch being filled
        self._piece_buf = ctypes.create_string_buffer(64)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        n_ctx: int,
        n_seq: int,
        n_threads: int | None,
        n_gpu_layers: int,
        tensor_split: Sequence[float] | None = None,
        n_batch: int = DEFAULT_N_BATCH,
        n_spare: int = 0,
    ) -> LoadedModel:
        """Load `path`; ModelFileError when llama.cpp cannot (architecture, memory, ...).
        `n_spare` sequence ids (and as many cells) beyond n_seq: inference/probe_rows.py."""
        global _backend_ready
        import llama_cpp

        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        split = None
        if tensor_split:
            split = (ctypes.c_float * llama_cpp.llama_max_devices())(*tensor_split)
            model_params.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
        threads, threads_batch = default_threads()
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx * n_seq + n_spare
        ctx_params.n_seq_max = n_seq + n_spare
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        # An explicit thread count holds for prompts and batches too, as llama-server's -t: a
        # node told --threads 1 must not take every core for a batched step.
        ctx_params.n_threads = n_threads or threads
        ctx_params.n_threads_batch = n_threads or threads_batch
        ctx_params.kv_unified = True  # see the module docstring
        ctx_params.no_perf = True
        with LOAD_LOCK:
            install_log_bridge(llama_cpp)
            if not _backend_ready:
                llama_cpp.llama_backend_init()
                _backend_ready = True
            with _capture_errors() as errors:
                model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
            if not model:
                raise load_failure(path, errors)
            with _capture_errors() as errors:
                ctx = llama_cpp.llama_init_from_model(model, ctx_params)
            if not ctx:
                llama_cpp.llama_model_free(model)
                raise LoadFailed(
                    f"{path.name}: not enough memory for the KV cache of {n_seq} sequences of "
                    f"{n_ctx} tokens (llama.cpp: {errors[-1][:200] if errors else 'no message'})",
                    out_of_memory=True,
                )
        del split  # llama.cpp copied it while loading
        return cls(llama_cpp, model, ctx, owned=True, n_batch=n_batch, n_ctx=n_ctx)

    @classmethod
    def borrow(cls, llm: Any) -> LoadedModel:
        """Use a `llama_cpp.Llama`'s model and context (sequence 0) from its owning thread."""
        import llama_cpp

        return cls(
            llama_cpp, llm.model, llm.ctx, owned=False, n_batch=llm.n_batch, n_ctx=llm.n_ctx()
        )

    def close(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.owned:
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.owned = False

    @property
    def n_layer(self) -> int:
        return int(self.lib.llama_model_n_layer(self.model))

    # -- text ------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """As Llama.tokenize(add_bos=True, special=True) does it."""
        data = text.encode("utf-8")
        room = len(data) + 16
        while True:
            tokens = (self.lib.llama_token * room)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), tokens, room, True, True)
            if n >= 0:
                return list(tokens[:n])
            room = -n

    def piece(self, token: int) -> bytes:
        piece, self._piece_buf = token_piece(self.lib, self.vocab, token, self._piece_buf)
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    @functools.cached_property
    def eog_tokens(self) -> tuple[int, ...]:
        """Every end-of-generation token (what ignore_eos bans); one scan of the vocabulary,
        kept for the model's life."""
        return tuple(t for t in range(self.n_vocab) if self.lib.llama_vocab_is_eog(self.vocab, t))

    # -- batches ---------------------------------------------------------------------------------

    def clear_batch(self) -> None:
        self.n_tokens = 0

    @property
    def room(self) -> int:
        return self.n_batch - self.n_tokens

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append one token to the batch; returns its index (for logits())."""
        i = self.n_tokens
        if i >= self.n_batch:
            raise OverflowError("batch is full")
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits
        self.n_tokens = i + 1
        return i

    def decode(self) -> int:
        """Run the batch; llama_decode's status (0 = success)."""
        self.batch.n_tokens = self.n_tokens
        return int(self.lib.llama_decode(self.ctx, self.batch))

    def logits(self, i: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The logits of batch index i (which was added with logits=True), as a view."""
        pointer = self.lib.llama_get_logits_ith(self.ctx, i)
        if not pointer:
            raise GenerationError(f"llama.cpp has no logits for batch index {i}")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def argmax(self, i: int) -> int:
        """Greedy choice: the first token of highest logit, as llama.cpp's greedy sampler."""
        return int(self.logits(i).argmax())

    def forget(self, seq_id: int) -> None:
        """Drop a sequence from the KV cache (its cells become free)."""
        self.lib.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def forget_from(self, seq_id: int, pos: int) -> None:
        """Drop a sequence's cells from position `pos` on, keeping its prefix."""
        self.lib.llama_memory_seq_rm(self.memory, seq_id, pos, -1)

    def share(self, src: int, dst: int, n: int) -> None:
        """Let sequence `dst` use `src`'s cells for positions [0, n) as well: in the unified pool
        the cells are tagged with both sequences, not copied."""
        self.lib.llama_memory_seq_cp(self.memory, src, dst, 0, n)

    def forget_all(self) -> None:
        self.lib.llama_memory_clear(self.memory, True)


class Sampler:
    """One request's sampling, as llama.cpp's sampler chain: logit_bias → penalties (repeat,
    frequency, presence over the last `penalty_last_n` tokens) → top-k → typical-p → top-p →
    min-p → temperature → a replayable Gumbel-max draw (inference/replayable_draw.py), or at
    temperature 0 bias and penalties → argmax. A plain greedy request (nothing before the
    argmax) skips the chain. A typical-p of 1 and neutral penalties are left out, not run as
    no-ops.

    The draw's noise is a pure function of (seed, step, token id), `step` counting every token
    of the run from 0, replayed ones included; a sampled request without a seed gets a random
    one (`seed`, reported in GenerationDone.seed). The chain's only state is the window of
    tokens the penalties see, which starts with the prompt's last tokens as llama-server's
    does; so feeding every step in order, replayed steps included (`advance`), continues
    exactly as an uninterrupted run, and `choice_margin` replays any step on other logits.
    A grammar is inference/grammar.py's (`exhausted`: it allows nothing more; the run ends).
    """

    def __init__(self, model: LoadedModel, request: GenerationRequest, prompt: Sequence[int]):
        self._lib = lib = model.lib
        self.chain: Any = None
        self._candidates: Candidates | None = None
        self._draw: DrawStep | None = None
        self.temperature = request.temperature
        self._draws = request.temperature > 0
        self.seed = request.seed
        if self._draws and self.seed is None:
            self.seed = secrets.randbelow(MAX_SEED + 1)
        self.step = 0  # index of the next token of the run
        self.grammar: Grammar | None = None
        self.exhausted = False
        self._biased_argmax: BiasedArgmax | None = None  # choice_margin's numpy replay
        if request.plain_greedy:
            return
        # before the chain: the table may refuse the request
        bias = bias_table(request, model.n_vocab, model.eog_tokens)
        if request.temperature == 0 and not request.penalized and not request.grammar:
            self._biased_argmax = BiasedArgmax(bias, model.n_vocab)
        if request.grammar:  # so may the grammar
            self.grammar = Grammar.for_request(model, request)
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        self.chain = chain
        samplers = []
        if bias:
            table = (lib.llama_logit_bias * len(bias))(*bias)
            samplers.append(lib.llama_sampler_init_logit_bias(model.n_vocab, len(bias), table))
        if request.penalized:
            samplers.append(
                lib.llama_sampler_init_penalties(
                    model.n_vocab,
                    request.penalty_last_n,
                    request.repeat_penalty,
                    request.frequency_penalty,
                    request.presence_penalty,
                )
            )
        if request.temperature == 0:
            samplers.append(lib.llama_sampler_init_greedy())
        else:  # the draw among the survivors is ours (replayable), not llama.cpp's `dist`
            samplers.append(lib.llama_sampler_init_top_k(request.top_k))
            if request.typical_p < 1:
                samplers.append(lib.llama_sampler_init_typical(request.typical_p, 1))
            assert self.seed is not None
            self._draw = DrawStep(lib, self.seed)
            samplers += [
                lib.llama_sampler_init_top_p(request.top_p, 1),
                lib.llama_sampler_init_min_p(request.min_p, 1),
                lib.llama_sampler_init_temp(request.temperature),
                self._draw.pointer,
            ]
        for sampler in samplers:
            lib.llama_sampler_chain_add(chain, sampler)  # the chain owns it now
        self._candidates = Candidates(lib, model.n_vocab)
        if request.penalized:
            for token in prompt[-request.penalty_last_n :]:
                lib.llama_sampler_accept(chain, token)

    def sample(self, model: LoadedModel, i: int) -> int:
        """The run's next token from the logits of batch index i."""
        if self._draw is not None:
            self._draw.step = self.step
        if self.chain is None:
            token = model.argmax(i)
        elif self._biased_argmax is not None:  # [bias, greedy]: the chain's pick, in numpy
            token = self._biased_argmax.pick(model.logits(i))
        elif self.grammar is not None:
            token = self.grammar.sample(self.chain, self._candidates, model, i, self._draw)
            self.exhausted = self.grammar.exhausted
        else:
            token = int(self._lib.llama_sampler_sample(self.chain, model.ctx, i))  # accepts
            if self._draw is not None:
                self._draw.check()
        self.step += 1
        return token

    def advance(self, model: LoadedModel, i: int, token: int) -> None:
        """A replayed step that produced `token`: the penalties see it and the step count
        moves on (the draw's noise has no state to move)."""
        del model, i  # the logits of a replayed step are not needed
        if self.grammar is not None:
            self.grammar.accept(token)  # checked at the start (check_tokens), and again
        self.accept(token, grammar=False)

    def accept(self, token: int, *, grammar: bool = True) -> None:
        """`token` is the run's token at this step (scoring: the given one; one the grammar
        forbids breaks the grammar, and every later margin is +inf)."""
        if grammar and self.grammar is not None:
            self.grammar.refuse(token)
        if self.chain is not None:
            self._lib.llama_sampler_accept(self.chain, token)
        self.step += 1

    def choice_margin(self, logits: np.ndarray[Any, np.dtype[np.float32]], token: int) -> float:
        """How far `token` is from what this chain would pick at the current step on `logits`,
        in logit units (before temperature): 0.0 when it picks exactly `token`, +inf when the
        filters (or a ban) remove it. Does not move the step; `accept` does."""
        if self.chain is None:
            return float(logits.max()) - float(logits[token])
        if self._biased_argmax is not None:  # bias → greedy: the same margin, 10x faster
            return self._biased_argmax.margin(logits, token)
        assert self._candidates is not None
        if self._draw is not None:
            self._draw.step = self.step  # it draws too (ignored here), at the right step
        kept = self._candidates.apply(self.chain, logits)
        if self.grammar is not None:  # `sample`'s two passes, replayed
            kept = self.grammar.survivors(self.chain, kept, logits, token, self._draw, self.step)
        if self._draw is not None:
            self._draw.check()
        if self._draws:
            assert self.seed is not None
            margin = draw_margin(self.seed, self.step, kept["id"], kept["logit"], token)
            return margin * self.temperature
        values = kept["logit"]
        mine = values[kept["id"] == token]
        if mine.size == 0 or not math.isfinite(float(mine[0])):
            return math.inf
        return max(0.0, float(values.max()) - float(mine[0]))

    def close(self) -> None:
        if self.grammar is not None:
            self.grammar.close()
            self.grammar = None
        if self.chain is not None:
            with contextlib.suppress(Exception):
                self._lib.llama_sampler_free(self.chain)
            self.chain = None
