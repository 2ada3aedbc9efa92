"""The thread that owns a llama.cpp model, and how trio talks to it: what both workers share.

Why a dedicated thread rather than `trio.to_thread.run_sync` per call: a `Llama` object used from
two threads at once aborts the whole process (GGML_ASSERT in llama.cpp), and even strictly
serialised calls from trio's thread pool would hop between OS threads. Here the model is
created, used and freed by one thread, which takes its work from a queue (`Job` for a request,
`MeasureJob` for the self-benchmark, None to wake it for closing).

Results travel back without ever blocking either side: the thread hands each item to trio with
`TrioToken.run_sync_soon`, and `deliver` puts it on the request's unbounded memory channel (a
request produces at most max_tokens + 1 items). The thread never waits for a slow consumer, and
the trio loop never waits for the model. `Close` on a channel means the worker is done with it.

Cancellation is cooperative: leaving `generate()`'s context sets the job's `cancelled` flag,
which the thread checks between decode steps.

`ModelWorker` (inference/worker.py, one request at a time) and `BatchingWorker`
(inference/batching.py, many in one batch) are the two `ThreadOwnedWorker`s; `EmbeddingWorker`
(inference/embedding_worker.py) shares only the thread's life cycle, `ModelThread`.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import attrs
import trio

from inference.benchmark import Throughput, measure_throughput
from inference.generation import GenerationDone, GenerationError, GenerationRequest, Item
from inference.llama_lowlevel import LoadedModel
from inference.model_file import ModelFileError, check_header
from inference.scoring import ScoreRequest, ScoreResult, score_tokens

Outcome = Item | BaseException


@attrs.define
class Job:
    """One request on its way through a worker, and the channel its items go back on."""

    request: GenerationRequest
    send: trio.MemorySendChannel[Outcome]
    receive: trio.MemoryReceiveChannel[Outcome]
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    queued: bool = True  # ModelWorker: still counted as waiting (under its lock)


class Close:
    """Sentinel on a job's channel: the worker is done with it."""


@attrs.define
class MeasureJob:
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


@attrs.define(eq=False)
class ScoreJob:
    """A scoring request (inference/scoring.py) for the worker thread: one answer, no stream.
    The thread computes it (`compute`), counts it out of the worker's bound, then wakes the
    awaiting task (`wake`)."""

    request: ScoreRequest
    done: trio.Event = attrs.field(factory=trio.Event)
    result: ScoreResult | BaseException | None = None
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    queued: bool = True  # ModelWorker: still counted as waiting (under its lock)

    def compute(self, model: LoadedModel, seq_id: int) -> None:
        """In the worker thread; never raises (a failure is the result)."""
        try:
            self.result = score_tokens(model, seq_id, self.request)
        except GenerationError as e:
            self.result = e
        except Exception as e:  # a llama.cpp failure ends this request, not the worker
            message = f"scoring failed: {type(e).__name__}: {e}"
            self.result = GenerationError(message.replace("\n", " "))

    def wake(self, token: trio.lowlevel.TrioToken) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self.done.set)

    async def wait(self) -> ScoreResult:
        await self.done.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        if self.result is None:
            raise GenerationError("the model worker is closed")
        return self.result


WorkItem = Job | MeasureJob | ScoreJob
J = TypeVar("J")  # what a ModelThread's queue carries


def deliver(send: trio.MemorySendChannel[Outcome], item: object) -> None:
    """Runs in trio (via run_sync_soon); must never raise, or trio would crash."""
    if isinstance(item, Close):
        send.close()
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        send.send_nowait(item)  # type: ignore[arg-type]


def per_second(count: int, seconds: float) -> float:
    return count / seconds if count > 0 and seconds > 0 else 0.0


class ItemStream:
    """What `generate()` yields: the items of one request, ending after GenerationDone."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Outcome]) -> None:
        self._receive = receive
        self._done = False

    def __aiter__(self) -> ItemStream:
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


def load_error(path: Path, exc: Exception) -> Exception:
    """What `start()` raises when the owning thread could not load the model."""
    if isinstance(exc, ImportError):
        return GenerationError(f"llama-cpp-python is not installed ({exc})")
    if isinstance(exc, ModelFileError):
        return exc
    return ModelFileError(f"{path} could not be loaded by llama.cpp ({exc})".replace("\n", " "))


def offloaded_layers(llama_cpp: Any, requested: int, n_layer: int) -> int:
    """The layers llama.cpp actually put on the GPU: none on a CPU build; otherwise at most
    every block plus the output layer (-1 asks for all of them)."""
    if not llama_cpp.llama_supports_gpu_offload():
        return 0
    limit = n_layer + 1
    return limit if requested < 0 else min(requested, limit)


class ModelThread(Generic[J]):
    """The thread that owns one llama.cpp model, and its life cycle as trio sees it: `start()`
    loads the model in that thread, `aclose()` stops it; jobs of type J reach it on a queue.

    Subclasses call `_init_thread` in __init__ and provide `_open` (in the owning thread: the
    model and its layer count) and `_serve` (the owning thread's loop over the queue, freeing
    the model when it ends).
    ThreadOwnedWorker is the generating one; inference/embedding_worker.py's EmbeddingWorker
    the embedding one."""

    _thread_label = "model-worker"
    model_path: Path
    n_ctx: int
    n_threads: int | None
    n_gpu_layers: int  # after start(): the number actually offloaded
    _jobs: queue.SimpleQueue[J | None]
    _closing: threading.Event
    _thread: threading.Thread | None
    _token: trio.lowlevel.TrioToken | None
    _loaded: bool
    _load_error: Exception | None

    def _init_thread(
        self, model_path: Path, n_ctx: int, n_threads: int | None, n_gpu_layers: int
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx, self.n_threads, self.n_gpu_layers = n_ctx, n_threads, n_gpu_layers
        self._jobs = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread = None
        self._token = None
        self._loaded = False
        self._load_error = None

    # -- to override ---------------------------------------------------------------------------

    def _open(self) -> tuple[Any, int]:
        """In the owning thread: the loaded model and its number of layers (blocks)."""
        raise NotImplementedError

    def _serve(self, model: Any) -> None:
        raise NotImplementedError

    # -- trio side -----------------------------------------------------------------------------

    def _wake(self) -> None:
        """Tell the owning thread to stop (it may be waiting for a job)."""
        self._jobs.put(None)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Load the model in the owning thread; return once it can serve."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__}.start() called twice")
        check_header(self.model_path)  # a clear ModelFileError before llama.cpp's vaguer one
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

    async def aclose(self) -> None:
        """Stop the thread and free the model; queued requests fail with GenerationError."""
        thread = self._thread
        if thread is None:
            return
        self._closing.set()
        self._wake()
        await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)

    # -- owning thread -------------------------------------------------------------------------

    def _load(self) -> Any:
        """The model `_open` loads, `n_gpu_layers` now the layers llama.cpp really offloaded;
        None, with `_load_error` set, when it could not be loaded."""
        try:
            import llama_cpp

            model, n_layer = self._open()
            self.n_gpu_layers = offloaded_layers(llama_cpp, self.n_gpu_layers, n_layer)
        except Exception as e:
            self._load_error = load_error(self.model_path, e)
            return None
        return model

    def _run(self, loaded: trio.Event) -> None:
        model = self._load()
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(loaded.set)
        if model is not None:
            self._serve(model)


class ThreadOwnedWorker(ModelThread[WorkItem]):
    """What ModelWorker and BatchingWorker share: one thread owns the llama.cpp model, trio
    talks to it through a job queue, and results come back through memory channels.

    Besides ModelThread's `_load` and `_serve`, subclasses provide `_reserve` (count a new
    request in, raising WorkerBusy over the bound); and `_abandon` where a request given up
    while it waits must leave the count at once."""

    def _reserve(self) -> None:
        raise NotImplementedError

    def _abandon(self, job: Job | ScoreJob) -> None:
        """The client left (the request may still be queued)."""

    # -- trio side -----------------------------------------------------------------------------

    def _submit(self, request: GenerationRequest) -> Job:
        if not self._loaded:
            raise GenerationError("the model worker has not been started")
        if self._closing.is_set():
            raise GenerationError("the model worker is closed")
        self._reserve()
        send, receive = trio.open_memory_channel[Outcome](math.inf)
        job = Job(request, send, receive)
        self._jobs.put(job)
        return job

    @contextlib.asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[Item]]:
        """Queue a request; the context yields its stream of TokenChunk then GenerationDone.

        Raises WorkerBusy at once over the worker's bound. Leaving the context before
        GenerationDone cancels the request (it stops between two decode steps).
        """
        job = self._submit(request)
        try:
            yield ItemStream(job.receive)
        finally:
            job.cancelled.set()
            job.receive.close()
            self._abandon(job)

    async def score(self, request: ScoreRequest) -> ScoreResult:
        """Teacher-force `request.tokens` after its prompt and score every position
        (inference/scoring.py). Queued like a generation request and counted in the same bound:
        WorkerBusy at once over it; GenerationError / PromptTooLong as generate() raises them.
        """
        if not self._loaded:
            raise GenerationError("the model worker has not been started")
        if self._closing.is_set():
            raise GenerationError("the model worker is closed")
        self._reserve()
        job = ScoreJob(request)
        self._jobs.put(job)
        try:
            return await job.wait()
        finally:
            job.cancelled.set()
            self._abandon(job)

    async def measure_throughput(
        self, *, prompt_tokens: int = 256, decode_tokens: int = 32, budget_s: float = 3.0
    ) -> Throughput:
        """Prefill and single-stream decode tokens/s of this model as loaded (a few seconds;
        see inference/benchmark.py). Queued like a request; run it before serving."""
        if not self._loaded or self._closing.is_set():
            raise GenerationError("the model worker is not running")
        item = MeasureJob(prompt_tokens, decode_tokens, budget_s)
        self._jobs.put(item)
        return await item.wait()

    # -- owning thread -------------------------------------------------------------------------

    def _to_trio(self, job: Job, item: object) -> None:
        """Hand one item to trio now (BatchingWorker gathers a step's items instead)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(deliver, job.send, item)
        except trio.RunFinishedError:  # the trio program has ended; nobody is listening
            job.cancelled.set()
