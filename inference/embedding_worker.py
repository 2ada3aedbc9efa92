"""The embedding worker: a llama.cpp context in embedding mode, pooled as the model says.

An embedding GGUF (one whose metadata names `<arch>.pooling_type`, inference/model_file.py) is
served by this worker instead of a batching one: its context has `embeddings` on and llama.cpp's
pooling of the model (mean, CLS, last token), so one decode gives one vector per sequence. The
inputs of every request waiting at that moment are packed into one batch, one sequence each, up
to `EMBED_SEQUENCES` sequences and the context's cells, oldest request first; the cells are
cleared after each batch. A request alone gives bit-identical vectors each time; packed with
others, llama.cpp's kernels sum in another order and a vector moves by ~1e-5 (cosine > 0.99999).

Thread ownership is inference/worker_thread.py's `ModelThread` (whose life cycle the generating
workers share): one thread creates, uses and frees the model, takes its jobs from a queue and
hands each answer back with `TrioToken.run_sync_soon`; the trio side never waits on llama.cpp
and the thread never waits on trio. A generation or scoring request on this worker is refused
at once with `GenerationError` (the wire's `bad_request`), so a node may hold it where it holds
a batching worker (p2p/node/models.py).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Self

import attrs
import numpy as np
import trio

from inference.embedding import POOLING_NAMES, EmbeddingRequest, EmbeddingResult
from inference.generation import GenerationError, PromptTooLong, WorkerBusy
from inference.llama_lowlevel import LOAD_LOCK, LoadFailed, install_log_bridge, load_failure
from inference.model_file import ModelFileError
from inference.worker_thread import ModelThread

# Sequences packed into one decode (llama.cpp's n_seq_max for this context).
EMBED_SEQUENCES = 16


@attrs.define(eq=False)
class EmbedJob:
    """One request in the worker: the thread fills `result`, then wakes the waiting task."""

    request: EmbeddingRequest
    done: trio.Event = attrs.field(factory=trio.Event)
    result: EmbeddingResult | BaseException | None = None
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    vectors: dict[int, bytes] = attrs.field(factory=dict)
    tokens: list[list[int]] = attrs.field(factory=list)
    started: float = 0.0

    async def wait(self) -> EmbeddingResult:
        await self.done.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        if self.result is None:
            raise GenerationError("the embedding worker is closed")
        return self.result


class _Context:
    """The llama.cpp model, its embedding context and one batch (owning thread only)."""

    def __init__(self, lib: Any, model: Any, ctx: Any, n_ctx: int, n_seq: int) -> None:
        self.lib, self.model, self.ctx = lib, model, ctx
        self.n_ctx, self.n_seq = n_ctx, n_seq
        self.vocab = lib.llama_model_get_vocab(model)
        self.dimensions = int(lib.llama_model_n_embd(model))
        self.pooling = int(lib.llama_pooling_type(ctx))
        self.memory = lib.llama_get_memory(ctx)
        self.batch = lib.llama_batch_init(n_ctx, 0, 1)

    @classmethod
    def load(cls, path: Path, *, n_ctx: int, n_threads: int | None, n_gpu_layers: int) -> Self:
        import llama_cpp as lib

        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        # A non-causal model (BERT) needs each sequence in one micro-batch: the whole context.
        params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = EMBED_SEQUENCES
        params.kv_unified = True  # the sequences of a batch share the n_ctx cells
        params.embeddings = True
        params.no_perf = True
        if n_threads:
            params.n_threads = params.n_threads_batch = n_threads
        with LOAD_LOCK:
            install_log_bridge(lib)
            lib.llama_backend_init()
            model = lib.llama_model_load_from_file(str(path).encode(), model_params)
            if not model:
                raise load_failure(path, [])
            ctx = lib.llama_init_from_model(model, params)
            if not ctx:
                lib.llama_model_free(model)
                message = f"{path.name}: not enough memory for an embedding context"
                raise LoadFailed(message, out_of_memory=True)
        loaded = cls(lib, model, ctx, n_ctx, EMBED_SEQUENCES)
        if loaded.pooling not in POOLING_NAMES:
            loaded.close()
            raise ModelFileError(
                f"{path.name} has no pooling llama.cpp can give one vector per text with "
                f"(pooling type {loaded.pooling}): not an embedding model gpunet serves"
            )
        return loaded

    def tokenize(self, text: str) -> list[int]:
        """As llama-cpp-python's `Llama.embed` does it: special tokens added, none parsed."""
        data = text.encode("utf-8", "replace")
        room = len(data) + 16
        while True:
            buf = (self.lib.llama_token * room)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, room, True, False)
            if n >= 0:
                return list(buf[:n])
            room = -n

    def embed(self, inputs: Sequence[list[int]]) -> list[bytes]:
        """One pooled, normalised vector per token list (all of them in one decode)."""
        lib, batch = self.lib, self.batch
        n = 0
        for seq, tokens in enumerate(inputs):
            for pos, token in enumerate(tokens):
                batch.token[n], batch.pos[n] = token, pos
                batch.n_seq_id[n], batch.seq_id[n][0], batch.logits[n] = 1, seq, True
                n += 1
        batch.n_tokens = n
        try:
            status = int(lib.llama_decode(self.ctx, batch))
            if status != 0:
                raise GenerationError(f"llama.cpp could not embed this batch (status {status})")
            out = []
            for seq in range(len(inputs)):
                pointer = lib.llama_get_embeddings_seq(self.ctx, seq)
                if not pointer:
                    raise GenerationError("llama.cpp gave no pooled embedding")
                pooled = np.ctypeslib.as_array(pointer, shape=(self.dimensions,))
                vector = pooled.astype(np.float64)
                norm = float(np.linalg.norm(vector))
                if norm > 0 and math.isfinite(norm):
                    vector = vector / norm
                out.append(vector.astype("<f4").tobytes())
            return out
        finally:
            if self.memory:  # an encoder-only model keeps no cells
                lib.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)


class EmbeddingWorker(ModelThread[EmbedJob]):
    """Embeds texts with one model on its own thread; `embed` is the trio side.

    `slots` and `max_queue` bound the requests in it (WorkerBusy at once past them), as the
    batching worker's do; `n_ctx` is the longest input in tokens (PromptTooLong past it)."""

    _thread_label = "embedder"

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        slots: int = 4,
        max_queue: int = 8,
    ) -> None:
        self._init_thread(model_path, n_ctx, n_threads, n_gpu_layers)
        self.slots = slots
        self.max_queue = max_queue
        self.dimensions = 0  # after start()
        self.pooling = ""  # after start(): "mean", "cls" or "last"
        self._outstanding = 0
        self._count_lock = threading.Lock()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """The vectors of *request*'s inputs. WorkerBusy at once over the bound; PromptTooLong
        when an input is longer than the context; GenerationError when the worker is closed."""
        if not self._loaded or self._closing.is_set():
            raise GenerationError("the embedding worker is not running")
        with self._count_lock:
            if self._outstanding >= self.slots + self.max_queue:
                raise WorkerBusy(f"{self._outstanding} embedding requests already here")
            self._outstanding += 1
        job = EmbedJob(request)
        self._jobs.put(job)
        try:
            return await job.wait()
        finally:
            job.cancelled.set()  # the thread skips what is left of it

    def refuse(self, what: str) -> NoReturn:
        raise GenerationError(
            f"{self.model_path.stem} is an embedding model: it serves /v1/embeddings, not {what}"
        )

    @contextlib.asynccontextmanager
    async def generate(self, _request: object) -> AsyncIterator[AsyncIterator[Any]]:
        """Refused: an embedding model does not generate (the wire's `bad_request`)."""
        self.refuse("text generation")
        yield  # pragma: no cover  (never reached; makes this an async generator)

    async def score(self, _request: object) -> NoReturn:
        self.refuse("scoring")

    # -- owning thread -------------------------------------------------------------------------

    def _open(self) -> tuple[_Context, int]:
        context = _Context.load(
            self.model_path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
        )
        self.dimensions, self.pooling = context.dimensions, POOLING_NAMES[context.pooling]
        return context, int(context.lib.llama_model_n_layer(context.model))

    def _serve(self, context: _Context) -> None:
        try:
            self._serve_jobs(context)
        finally:
            context.close()

    def _serve_jobs(self, context: _Context) -> None:
        waiting: list[EmbedJob] = []
        while not self._closing.is_set():
            if not waiting:
                item = self._jobs.get()  # idle: sleep until there is work
                if item is not None:
                    waiting.append(item)
            with contextlib.suppress(queue.Empty):
                while len(waiting) < self.slots + self.max_queue:
                    item = self._jobs.get_nowait()
                    if item is not None:
                        waiting.append(item)
            waiting = self._step(context, waiting)
        for job in waiting:
            self._finish(job, GenerationError("the embedding worker is closed"))
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._finish(item, GenerationError("the embedding worker is closed"))

    def _step(self, context: _Context, waiting: list[EmbedJob]) -> list[EmbedJob]:
        """One decode over the first inputs still to embed, oldest request first; the jobs
        still waiting afterwards."""
        packed: list[tuple[EmbedJob, int]] = []
        cells = 0
        for job in waiting:
            if job.cancelled.is_set():
                continue
            if not job.tokens:
                job.started = time.monotonic()
                job.tokens = [context.tokenize(t) for t in job.request.inputs]
                longest = max(len(t) for t in job.tokens)
                if min(len(t) for t in job.tokens) == 0:
                    self._finish(job, GenerationError("input: a text with no tokens to embed"))
                    continue
                if longest > context.n_ctx:
                    self._finish(job, PromptTooLong(
                        f"an input has {longest} tokens; this node embeds at most "
                        f"{context.n_ctx} tokens per input"
                    ))  # fmt: skip
                    continue
            for i, tokens in enumerate(job.tokens):
                if i in job.vectors:
                    continue
                if len(packed) == context.n_seq or cells + len(tokens) > context.n_ctx:
                    break
                packed.append((job, i))
                cells += len(tokens)
        if packed:
            try:
                vectors = context.embed([job.tokens[i] for job, i in packed])
            except Exception as e:  # a llama.cpp failure ends these requests, not the worker
                failed = e if isinstance(e, GenerationError) else GenerationError(str(e))
                for job in {id(j): j for j, _ in packed}.values():
                    self._finish(job, failed)
                vectors = []
            for (job, i), vector in zip(packed, vectors, strict=False):
                job.vectors[i] = vector
        left = []
        for job in waiting:
            if job.cancelled.is_set() or job.result is not None:
                if job.result is None:
                    self._finish(job, GenerationError("cancelled"))
                continue
            if job.tokens and len(job.vectors) == len(job.tokens):
                self._finish(job, EmbeddingResult(
                    vectors=tuple(job.vectors[i] for i in range(len(job.tokens))),
                    dimensions=context.dimensions,
                    prompt_tokens=sum(len(t) for t in job.tokens),
                    seconds=time.monotonic() - job.started,
                ))  # fmt: skip
                continue
            left.append(job)
        return left

    def _finish(self, job: EmbedJob, result: EmbeddingResult | BaseException) -> None:
        if job.result is not None:
            return
        job.result = result
        with self._count_lock:
            self._outstanding -= 1
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(job.done.set)
