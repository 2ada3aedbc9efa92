"""One thread that owns one llama.cpp model, driven from trio.

Why a dedicated thread rather than `trio.to_thread.run_sync` per call: a `Llama` object used from
two threads at once aborts the whole process (GGML_ASSERT in llama.cpp), and even strictly
serialised calls from trio's thread pool would hop between OS threads. Here the `Llama` is
created, used and freed by one thread, which takes requests one at a time from a queue.

Results travel back without ever blocking either side: the thread hands each item to trio with
`TrioToken.run_sync_soon`, which puts it on an unbounded memory channel (a request produces at
most max_tokens + 1 items). The thread never waits for a slow consumer, and the trio loop never
waits for the model.

Cancellation is cooperative: leaving `generate()`'s context sets a flag that the thread checks
after every token, so a client that goes away costs at most one more token of compute.

The thread re-evaluates every prompt from an empty KV cache. llama.cpp is not batch-invariant, so
reusing a cached prefix could change greedy output; determinism matters more than the prefill
time on the models this serves. Serving several requests at once is BatchingWorker's job
(inference/batching.py, the same interface); this worker stays as the one-at-a-time reference:
its greedy output is bit-identical from run to run, and a request with `replay_tokens` resumes
an interrupted greedy run exactly (see inference/streaming.py for the token ids in each chunk).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Self

import attrs
import trio

from inference.benchmark import Throughput, measure_throughput
from inference.generation import RANDOM_SEED as _RANDOM_SEED
from inference.generation import (
    GenerationDone,
    GenerationError,
    GenerationRequest,
    Item,
    PromptTooLong,
    TokenChunk,
    WorkerBusy,
    WorkerLoad,
)
from inference.llama_lowlevel import (
    LOAD_LOCK,
    MIN_P,
    TOP_K,
    LoadedModel,
    install_log_bridge,
    token_piece,
)
from inference.model_file import ModelFileError, _check_header
from inference.streaming import TextAssembler, split_at_stop

__all__ = [
    "GenerationDone",
    "GenerationError",
    "GenerationRequest",
    "Item",
    "ModelWorker",
    "PromptTooLong",
    "TokenChunk",
    "WorkerBusy",
    "WorkerLoad",
    "split_at_stop",
]


@attrs.define
class _Job:
    request: GenerationRequest
    send: trio.MemorySendChannel[Item | BaseException]
    receive: trio.MemoryReceiveChannel[Item | BaseException]
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    queued: bool = True  # ModelWorker: still counted as waiting (under its lock)


class _Close:
    """Sentinel on a job's channel: the worker is done with it."""


@attrs.define
class _Measure:
    """A self-benchmark request for the worker thread (see inference/benchmark.py)."""

    prompt_tokens: int
    decode_tokens: int
    budget_s: float
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Throughput | BaseException | None = None

    def run(self, model: LoadedModel, token: trio.lowlevel.TrioToken) -> None:
        """In the worker thread: measure, then wake the awaiting task."""
        try:
            self.result = measure_throughput(
                model,
                prompt_tokens=self.prompt_tokens,
                decode_tokens=self.decode_tokens,
                budget_s=self.budget_s,
            )
        except Exception as e:
            self.result = GenerationError(f"self-benchmark failed: {type(e).__name__}: {e}")
        self.wake(token)

    def fail(self, error: BaseException, token: trio.lowlevel.TrioToken) -> None:
        self.result = error
        self.wake(token)

    def wake(self, token: trio.lowlevel.TrioToken) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self.done.set)

    async def wait(self) -> Throughput:
        await self.done.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        assert self.result is not None
        return self.result


def _put(send: trio.MemorySendChannel[Item | BaseException], item: object) -> None:
    """Runs in trio (via run_sync_soon); must never raise, or trio would crash."""
    if isinstance(item, _Close):
        send.close()
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        send.send_nowait(item)  # type: ignore[arg-type]


def _rate(count: int, seconds: float) -> float:
    return count / seconds if count > 0 and seconds > 0 else 0.0


class _Stream:
    """What `generate()` yields: the items of one request, ending after GenerationDone."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Item | BaseException]) -> None:
        self._receive = receive
        self._done = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Item:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self._done = True
            raise GenerationError("the model worker stopped before finishing") from None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = isinstance(item, GenerationDone)
        return item


class ThreadOwnedWorker:
    """What ModelWorker and BatchingWorker share: one thread owns the llama.cpp model, trio
    talks to it through a job queue, and results come back through memory channels.

    Subclasses set the attributes below in __init__ and provide `_run` (the owning thread's
    body) and `_reserve` (count a new request in, raising WorkerBusy over the bound); and
    `_abandon` where a request given up while it waits must leave the count at once."""

    _thread_label = "model-worker"
    model_path: Path
    _jobs: queue.SimpleQueue[_Job | _Measure | None]
    _closing: threading.Event
    _thread: threading.Thread | None
    _token: trio.lowlevel.TrioToken | None
    _loaded: bool
    _load_error: Exception | None

    def _run(self, loaded: trio.Event) -> None:
        raise NotImplementedError

    def _reserve(self) -> None:
        raise NotImplementedError

    def _abandon(self, job: _Job) -> None:
        """The client left (the request may still be queued)."""

    def _submit(self, request: GenerationRequest) -> _Job:
        if not self._loaded:
            raise GenerationError("the model worker has not been started")
        if self._closing.is_set():
            raise GenerationError("the model worker is closed")
        self._reserve()
        send, receive = trio.open_memory_channel[Item | BaseException](math.inf)
        job = _Job(request, send, receive)
        self._jobs.put(job)
        return job

    def _wake(self) -> None:
        """Tell the owning thread to stop (it may be waiting for a job)."""
        self._jobs.put(None)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Load the model in the owning thread; return once it can generate."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__}.start() called twice")
        _check_header(self.model_path)  # a clear ModelFileError before llama.cpp's vaguer one
        self._token = trio.lowlevel.current_trio_token()
        loaded = trio.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(loaded,),
            name=f"{self._thread_label}:{self.model_path.name}",
            daemon=True,  # a stuck native call must not keep the process alive at exit
        )
        self._thread.start()
        try:
            await loaded.wait()
        except BaseException:
            self._closing.set()
            self._wake()
            raise
        if self._load_error is not None:
            raise self._load_error
        self._loaded = True

    @contextlib.asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[Item]]:
        """Queue a request; the context yields its stream of TokenChunk then GenerationDone.

        Raises WorkerBusy at once over the worker's bound. Leaving the context before
        GenerationDone cancels the request (it stops between two decode steps).
        """
        job = self._submit(request)
        try:
            yield _Stream(job.receive)
        finally:
            job.cancelled.set()
            job.receive.close()
            self._abandon(job)

    async def measure_throughput(
        self, *, prompt_tokens: int = 256, decode_tokens: int = 32, budget_s: float = 3.0
    ) -> Throughput:
        """Prefill and single-stream decode tokens/s of this model as loaded (a few seconds;
        see inference/benchmark.py). Queued like a request; run it before serving."""
        if not self._loaded or self._closing.is_set():
            raise GenerationError("the model worker is not running")
        item = _Measure(prompt_tokens, decode_tokens, budget_s)
        self._jobs.put(item)
        return await item.wait()

    async def aclose(self) -> None:
        """Stop the thread and free the model; queued requests fail with GenerationError."""
        thread = self._thread
        if thread is None:
            return
        self._closing.set()
        self._wake()
        await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)


class ModelWorker(ThreadOwnedWorker):
    """Serves generation requests from one model, one request at a time, in its own thread.

        worker = ModelWorker(path)
        await worker.start()
        async with worker.generate(GenerationRequest("Hello")) as stream:
            async for item in stream: ...
        await worker.aclose()

    A request that cannot be served (prompt too long, worker closed) raises GenerationError from
    the stream's first step, since only the model thread can tokenize.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        max_queue: int = 8,
        tensor_split: Sequence[float] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers  # after start(): the number actually offloaded
        self.max_queue = max_queue
        self.tensor_split = list(tensor_split) if tensor_split else None  # OffloadPlan's
        self._jobs: queue.SimpleQueue[_Job | _Measure | None] = queue.SimpleQueue()
        self._waiting = 0
        self._active = 0  # 1 while the thread generates
        self._steps = 0
        self._waiting_lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._loaded = False
        self._load_error: Exception | None = None

    slots = 1  # requests generated at once (BatchingWorker has more)

    @property
    def load(self) -> WorkerLoad:
        active = self._active
        return WorkerLoad(
            active_requests=active,
            free_slots=1 - active,
            queue_depth=self._waiting,
            decode_steps=self._steps,
        )

    # -- trio side -----------------------------------------------------------------------------

    def _reserve(self) -> None:
        with self._waiting_lock:
            if self._waiting >= self.max_queue:
                raise WorkerBusy(f"{self._waiting} requests already waiting for this model")
            self._waiting += 1

    def _abandon(self, job: _Job) -> None:
        # A request cancelled while queued frees its place now, not when the thread reaches it.
        self._unqueue(job)

    def _unqueue(self, job: _Job) -> None:
        with self._waiting_lock:
            if job.queued:
                job.queued = False
                self._waiting -= 1

    # -- worker thread -------------------------------------------------------------------------

    def _to_trio(self, job: _Job, item: object) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(_put, job.send, item)
        except trio.RunFinishedError:  # the trio program has ended; nobody is listening
            job.cancelled.set()

    def _run(self, loaded: trio.Event) -> None:
        llm = self._load()
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(loaded.set)
        if llm is None:
            return
        try:
            while (job := self._jobs.get()) is not None:
                if isinstance(job, _Measure):
                    self._measure(llm, job)
                    continue
                self._unqueue(job)
                if not (job.cancelled.is_set() or self._closing.is_set()):
                    self._active = 1
                    try:
                        self._generate(llm, job)
                    except GenerationError as e:
                        self._to_trio(job, e)
                    except Exception as e:  # a llama.cpp failure ends this request, not the node
                        message = f"generation failed: {type(e).__name__}: {e}"
                        self._to_trio(job, GenerationError(message.replace("\n", " ")))
                    finally:
                        self._active = 0
                elif self._closing.is_set():
                    self._to_trio(job, GenerationError("the model worker is closed"))
                self._to_trio(job, _Close())
        finally:
            llm.close()
            self._closing.set()
            while True:  # fail whatever was queued behind the stop
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, _Measure):
                    job.fail(GenerationError("the model worker is closed"), self._token)
                elif job is not None:
                    self._to_trio(job, GenerationError("the model worker is closed"))
                    self._to_trio(job, _Close())

    def _measure(self, llm: Any, item: _Measure) -> None:
        assert self._token is not None
        model = LoadedModel.borrow(llm)
        try:
            llm.reset()
            item.run(model, self._token)
        finally:
            model.close()
            llm.reset()

    def _load(self) -> Any:
        try:
            import llama_cpp

            with LOAD_LOCK:
                install_log_bridge(llama_cpp)
                llm = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,  # None: llama-cpp-python's default
                    n_gpu_layers=self.n_gpu_layers,
                    tensor_split=self.tensor_split,
                    verbose=False,
                    logits_all=False,
                )
            if not llama_cpp.llama_supports_gpu_offload():
                self.n_gpu_layers = 0
            else:
                # llama.cpp offloads at most every block plus the output layer.
                limit = int(llama_cpp.llama_model_n_layer(llm.model)) + 1
                self.n_gpu_layers = (
                    limit if self.n_gpu_layers < 0 else min(self.n_gpu_layers, limit)
                )
            return llm
        except ImportError as e:
            self._load_error = GenerationError(f"llama-cpp-python is not installed ({e})")
        except Exception as e:
            self._load_error = ModelFileError(
                f"{self.model_path} could not be loaded by llama.cpp ({e})".replace("\n", " ")
            )
        return None

    def _generate(self, llm: Any, job: _Job) -> None:
        import llama_cpp

        request = job.request
        started = time.perf_counter()
        prompt = llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True)
        check_fits(len(prompt), request.max_tokens, llm.n_ctx())
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        check_replay(llama_cpp, vocab, request.replay_tokens)
        piece_buf = ctypes.create_string_buffer(64)
        assembler = TextAssembler(request.stop)
        completion = 0
        first: float | None = None
        last = started
        finish = "length"

        llm.reset()  # see the module docstring: no prefix reuse
        llm.set_seed(_RANDOM_SEED if request.seed is None else request.seed)
        if request.replay_tokens:
            # Exact replay: the prompt as one evaluation, then each replayed token in a decode
            # step of its own, as generate() would have fed them; generate() then finds all of
            # it cached and samples straight from the last logits. Bit-identical to the
            # uninterrupted run for greedy decoding; a sampled run continues with a fresh random
            # state (BatchingWorker also replays the sampler's random state).
            llm.eval(prompt)
            self._steps += 1
            for token in request.replay_tokens:
                if job.cancelled.is_set() or self._closing.is_set():
                    break
                llm.eval([token])
                self._steps += 1
                piece, piece_buf = token_piece(llama_cpp, vocab, token, piece_buf)
                assembler.replay(piece)
                completion += 1
        tokens = llm.generate(
            [*prompt, *request.replay_tokens],
            temp=request.temperature,
            top_p=request.top_p,
            top_k=TOP_K,
            min_p=MIN_P,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for token in tokens:
                self._steps += 1  # the decode that produced this token
                now = time.perf_counter()
                first = now if first is None else first
                if job.cancelled.is_set() or self._closing.is_set():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                completion += 1
                last = now
                piece, piece_buf = token_piece(llama_cpp, vocab, token, piece_buf)
                chunk = assembler.add(token, piece)
                if chunk is not None:
                    self._to_trio(job, chunk)
                if assembler.stopped:
                    finish = "stop"
                    break
                if completion == request.max_tokens:
                    break
        finally:
            tokens.close()
        if not assembler.stopped and finish != "cancelled":
            chunk = assembler.finish()  # text held back for a possible stop string, if any
            if chunk is not None:
                self._to_trio(job, chunk)
        first = started if first is None else first
        generated = completion - len(request.replay_tokens)
        self._to_trio(
            job,
            GenerationDone(
                finish_reason=finish,
                prompt_tokens=len(prompt),
                completion_tokens=completion,
                time_to_first_token_s=first - started,
                decode_tokens_per_s=_rate(generated - 1, last - first),
                token_ids=assembler.unreleased,
            ),
        )


def check_fits(n_prompt: int, max_tokens: int, n_ctx: int) -> None:
    """PromptTooLong unless prompt + max_tokens fit one sequence's context."""
    if n_prompt + max_tokens > n_ctx:
        raise PromptTooLong(
            f"prompt is {n_prompt} tokens; with max_tokens {max_tokens} it "
            f"exceeds this model's context of {n_ctx} tokens"
        )


def check_replay(llama_cpp: Any, vocab: Any, replay: tuple[int, ...]) -> None:
    """GenerationError unless every replayed id is an ordinary token of this vocabulary."""
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    for token in replay:
        if token >= n_vocab:
            raise GenerationError(f"replay token {token} is not in this model's vocabulary")
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            raise GenerationError(f"replay token {token} ends generation; nothing to resume")
