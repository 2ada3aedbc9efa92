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
time on the models this serves. Prefix reuse and batching belong to the scheduler (later).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import attrs
import trio

from inference.model_file import ModelFileError, _check_header

# Loading with verbose=False redirects the process's stdout/stderr for a moment; two loads at
# once would restore each other's redirections wrongly. One load at a time, process-wide.
_LOAD_LOCK = threading.Lock()
# llama.cpp's "pick a random seed" value (LLAMA_DEFAULT_SEED).
_RANDOM_SEED = 0xFFFFFFFF
# llama-cpp-python's create_completion defaults, kept so sampled output matches what people
# get from llama.cpp elsewhere; only temperature, top_p and seed are per request.
_TOP_K = 40
_MIN_P = 0.05

# llama.cpp's log goes to the "llama.cpp" logger. llama-cpp-python installs its own callback, but
# maps ggml's levels (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5) one off, so with
# verbose=False warnings still reach stderr as if they were errors.
_LOG = logging.getLogger("llama.cpp")
_LOG.addHandler(logging.NullHandler())  # silent unless the application configures logging
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_log_state = {"level": logging.DEBUG}
_log_callback: Any = None  # the ctypes callback; kept referenced so it is never collected


def _install_log_bridge(llama_cpp: Any) -> None:
    """Called under _LOAD_LOCK, before the first model load."""
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


def _seed_ok(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 0 <= value < _RANDOM_SEED:
        raise ValueError(f"{attribute.name} must be in [0, {_RANDOM_SEED}), got {value}")


def _as_stops(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _stops_ok(
    _: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not all(isinstance(s, str) and s for s in value):
        raise ValueError(f"{attribute.name} must be non-empty strings")


@attrs.frozen
class GenerationRequest:
    prompt: str
    max_tokens: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    temperature: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    top_p: float = attrs.field(
        default=1.0, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)]
    )
    seed: int | None = attrs.field(default=None, validator=_seed_ok)
    stop: tuple[str, ...] = attrs.field(default=(), converter=_as_stops, validator=_stops_ok)


@attrs.frozen
class TokenChunk:
    """New text, never empty: bytes of an unfinished UTF-8 character or of a possible stop string
    are held back until they resolve. `token_count` is how many tokens this text came from."""

    text: str
    token_count: int


@attrs.frozen
class GenerationDone:
    finish_reason: str  # "stop" (end-of-sequence or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float  # from the worker picking the request up; queueing excluded
    decode_tokens_per_s: float  # after the first token; 0.0 with fewer than two tokens


Item = TokenChunk | GenerationDone


class WorkerBusy(Exception):
    """More than max_queue requests are already waiting; try another node or later."""


class GenerationError(Exception):
    """This request cannot be served (prompt too long for the context, worker closed, ...)."""


@attrs.define
class _Job:
    request: GenerationRequest
    send: trio.MemorySendChannel[Item | BaseException]
    receive: trio.MemoryReceiveChannel[Item | BaseException]
    cancelled: threading.Event = attrs.field(factory=threading.Event)


class _Close:
    """Sentinel on a job's channel: the worker is done with it."""


def _put(send: trio.MemorySendChannel[Item | BaseException], item: object) -> None:
    """Runs in trio (via run_sync_soon); must never raise, or trio would crash."""
    if isinstance(item, _Close):
        send.close()
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        send.send_nowait(item)  # type: ignore[arg-type]


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


def _token_piece(
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


class ModelWorker:
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
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers  # after start(): the number actually offloaded
        self.max_queue = max_queue
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._loaded = False
        self._load_error: Exception | None = None

    async def __aenter__(self) -> ModelWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Load the model in the worker thread; return once it can generate."""
        if self._thread is not None:
            raise RuntimeError("ModelWorker.start() called twice")
        _check_header(self.model_path)  # a clear ModelFileError before llama.cpp's vaguer one
        self._token = trio.lowlevel.current_trio_token()
        loaded = trio.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(loaded,),
            name=f"model-worker:{self.model_path.name}",
            daemon=True,  # a stuck native call must not keep the process alive at exit
        )
        self._thread.start()
        try:
            await loaded.wait()
        except BaseException:
            self._closing.set()
            self._jobs.put(None)
            raise
        if self._load_error is not None:
            raise self._load_error
        self._loaded = True

    @contextlib.asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[Item]]:
        """Queue a request; the context yields its stream of TokenChunk then GenerationDone.

        Raises WorkerBusy at once when max_queue requests are already waiting. Leaving the
        context before GenerationDone cancels the request.
        """
        job = self._submit(request)
        try:
            yield _Stream(job.receive)
        finally:
            job.cancelled.set()
            job.receive.close()

    async def aclose(self) -> None:
        """Stop the thread and free the model; queued requests fail with GenerationError."""
        thread = self._thread
        if thread is None:
            return
        self._closing.set()
        self._jobs.put(None)
        await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)

    # -- trio side -----------------------------------------------------------------------------

    def _submit(self, request: GenerationRequest) -> _Job:
        if not self._loaded:
            raise GenerationError("the model worker has not been started")
        if self._closing.is_set():
            raise GenerationError("the model worker is closed")
        with self._waiting_lock:
            if self._waiting >= self.max_queue:
                raise WorkerBusy(f"{self._waiting} requests already waiting for this model")
            self._waiting += 1
        send, receive = trio.open_memory_channel[Item | BaseException](math.inf)
        job = _Job(request, send, receive)
        self._jobs.put(job)
        return job

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
                with self._waiting_lock:
                    self._waiting -= 1
                if not (job.cancelled.is_set() or self._closing.is_set()):
                    try:
                        self._generate(llm, job)
                    except GenerationError as e:
                        self._to_trio(job, e)
                    except Exception as e:  # a llama.cpp failure ends this request, not the node
                        message = f"generation failed: {type(e).__name__}: {e}"
                        self._to_trio(job, GenerationError(message.replace("\n", " ")))
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
                if job is not None:
                    self._to_trio(job, GenerationError("the model worker is closed"))
                    self._to_trio(job, _Close())

    def _load(self) -> Any:
        try:
            import llama_cpp

            with _LOAD_LOCK:
                _install_log_bridge(llama_cpp)
                llm = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    n_gpu_layers=self.n_gpu_layers,
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
        n_ctx = llm.n_ctx()
        if len(prompt) + request.max_tokens > n_ctx:
            raise GenerationError(
                f"prompt is {len(prompt)} tokens; with max_tokens {request.max_tokens} it "
                f"exceeds this model's context of {n_ctx} tokens"
            )
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        piece_buf = ctypes.create_string_buffer(64)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending, unsent_tokens, completion = "", 0, 0
        first: float | None = None
        last = started
        finish = "length"

        llm.reset()  # see the module docstring: no prefix reuse
        llm.set_seed(_RANDOM_SEED if request.seed is None else request.seed)
        tokens = llm.generate(
            prompt,
            temp=request.temperature,
            top_p=request.top_p,
            top_k=_TOP_K,
            min_p=_MIN_P,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for token in tokens:
                now = time.perf_counter()
                first = now if first is None else first
                if job.cancelled.is_set() or self._closing.is_set():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    pending += decoder.decode(b"", final=True)
                    break
                completion += 1
                unsent_tokens += 1
                last = now
                piece, piece_buf = _token_piece(llama_cpp, vocab, token, piece_buf)
                at_limit = completion == request.max_tokens
                pending += decoder.decode(piece, final=at_limit)
                text, pending, stopped = split_at_stop(pending, request.stop)
                if at_limit and not stopped:
                    text, pending = text + pending, ""
                if text:
                    self._to_trio(job, TokenChunk(text, unsent_tokens))
                    unsent_tokens = 0
                if stopped:
                    finish = "stop"
                if stopped or at_limit:
                    break
        finally:
            tokens.close()
        if pending:  # end-of-sequence while text was held back for a possible stop string
            self._to_trio(job, TokenChunk(pending, unsent_tokens))
        first = started if first is None else first
        decode_s = last - first
        self._to_trio(
            job,
            GenerationDone(
                finish_reason=finish,
                prompt_tokens=len(prompt),
                completion_tokens=completion,
                time_to_first_token_s=first - started,
                decode_tokens_per_s=_rate(completion - 1, decode_s),
            ),
        )
