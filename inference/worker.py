"""ModelWorker: one llama.cpp model serving one request at a time, in the thread that owns it.

The thread plumbing (why one thread owns the model, how items reach trio, cancellation) is
inference/worker_thread.py's, shared with BatchingWorker.

The thread re-evaluates every prompt from an empty KV cache. llama.cpp is not batch-invariant, so
reusing a cached prefix could change greedy output; determinism matters more than the prefill
time on the models this serves. Serving several requests at once is BatchingWorker's job
(inference/batching.py, the same interface); this worker stays as the one-at-a-time reference:
its greedy output is bit-identical from run to run, and a request with `replay_tokens` resumes
an interrupted greedy run exactly (see inference/streaming.py for the token ids in each chunk).
Greedy requests go through llama-cpp-python's `Llama.generate`; sampled ones through the same
sampler chain and replayable draw as BatchingWorker's (`_sample`), so that a verifier can replay
them and a resumed sampled run continues exactly too. Prompt probes (GenerationRequest.probes)
are BatchingWorker's only: this worker returns no values for them (GenerationDone's
`probe_logprobs` is ()); the node never serves generation on it.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from inference.generation import (
    BAN_BIAS,
    RANDOM_SEED,
    GenerationDone,
    GenerationError,
    GenerationRequest,
    WorkerBusy,
    WorkerLoad,
    check_fits,
)
from inference.llama_lowlevel import (
    LOAD_LOCK,
    LoadedModel,
    Sampler,
    check_replay,
    install_log_bridge,
    token_piece,
)
from inference.prompt_logprobs import PromptLogprobs, check_prompt_logprobs, score_prompt
from inference.streaming import TextAssembler
from inference.token_logprobs import TokenLogprob, token_logprob
from inference.worker_thread import (
    Close,
    Job,
    MeasureJob,
    ScoreJob,
    ThreadOwnedWorker,
    per_second,
)


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
        self._init_thread(model_path, n_ctx, n_threads, n_gpu_layers)
        self.max_queue = max_queue
        self.tensor_split = list(tensor_split) if tensor_split else None  # OffloadPlan's
        self._waiting = 0
        self._active = 0  # 1 while the thread generates
        self._steps = 0
        self._waiting_lock = threading.Lock()

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

    def _abandon(self, job: Job | ScoreJob) -> None:
        # A request cancelled while queued frees its place now, not when the thread reaches it.
        self._unqueue(job)

    def _unqueue(self, job: Job | ScoreJob) -> None:
        with self._waiting_lock:
            if job.queued:
                job.queued = False
                self._waiting -= 1

    # -- worker thread -------------------------------------------------------------------------

    def _serve(self, llm: Any) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                if isinstance(job, MeasureJob):
                    self._measure(llm, job)
                elif isinstance(job, ScoreJob):
                    self._score(llm, job)
                else:
                    self._serve_one(llm, job)
        finally:
            llm.close()
            self._closing.set()
            self._refuse_queued()

    def _serve_one(self, llm: Any, job: Job) -> None:
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
        self._to_trio(job, Close())

    def _refuse_queued(self) -> None:
        """Fail whatever was queued behind the stop."""
        assert self._token is not None
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, MeasureJob):
                job.fail(GenerationError("the model worker is closed"), self._token)
            elif isinstance(job, ScoreJob):
                self._unqueue(job)
                job.result = GenerationError("the model worker is closed")
                job.wake(self._token)
            elif job is not None:
                self._to_trio(job, GenerationError("the model worker is closed"))
                self._to_trio(job, Close())

    def _score(self, llm: Any, job: ScoreJob) -> None:
        """Scoring on the context's sequence 0, from an empty KV cache and leaving it empty, so
        the next request is evaluated afresh as every request here is."""
        assert self._token is not None
        self._unqueue(job)
        if self._closing.is_set():
            job.result = GenerationError("the model worker is closed")
        elif not job.cancelled.is_set():
            self._active = 1
            model = LoadedModel.borrow(llm)
            try:
                llm.reset()
                model.forget_all()
                job.compute(model, 0)
            finally:
                model.forget_all()
                model.close()
                llm.reset()
                self._active = 0
        job.wake(self._token)

    def _score_prompt(self, llm: Any, prompt: list[int], n_top: int) -> PromptLogprobs:
        """The prompt's own entries (inference/prompt_logprobs.py), from an empty KV cache
        and leaving it empty, as `_score` does."""
        check_prompt_logprobs(len(prompt))
        model = LoadedModel.borrow(llm)
        try:
            llm.reset()
            model.forget_all()
            return score_prompt(model, 0, prompt, n_top)
        finally:
            model.forget_all()
            model.close()
            llm.reset()

    def _measure(self, llm: Any, item: MeasureJob) -> None:
        assert self._token is not None
        model = LoadedModel.borrow(llm)
        try:
            llm.reset()
            item.run(model, self._token)
        finally:
            model.close()
            llm.reset()

    def _open(self) -> tuple[Any, int]:
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
        return llm, int(llama_cpp.llama_model_n_layer(llm.model))

    def _generate(self, llm: Any, job: Job) -> None:
        import llama_cpp

        request = job.request
        started = time.perf_counter()
        prompt = llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True)
        check_fits(len(prompt), request.max_tokens, llm.n_ctx())
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        check_replay(llama_cpp, vocab, request.replay_tokens)
        run = _Run(llama_cpp, vocab, TextAssembler(request.stop), started)
        if request.prompt_logprobs:  # echo with logprobs: a scoring pass of its own first
            run.prompt_scores = self._score_prompt(llm, prompt, request.logprobs)

        llm.reset()  # see the module docstring: no prefix reuse
        if request.temperature > 0 or request.grammar:  # Llama.generate has no lazy grammar
            finish = self._sample(llm, job, prompt, run)
        else:
            # Llama reads its penalty window from this attribute when generate() builds the chain.
            llm.last_n_tokens_size = request.penalty_last_n
            llm.set_seed(RANDOM_SEED if request.seed is None else request.seed)
            if request.replay_tokens:
                self._replay(llm, job, prompt, run)
            finish = self._decode(llm, job, prompt, run)
        if not run.assembler.stopped and finish != "cancelled":
            chunk = run.assembler.finish()  # text held back for a possible stop string, if any
            if chunk is not None:
                self._to_trio(job, chunk)
        self._to_trio(job, run.done(finish, len(prompt), len(request.replay_tokens)))

    def _sample(self, llm: Any, job: Job, prompt: list[int], run: _Run) -> str:
        """A sampled request, on the context's sequence 0 with BatchingWorker's sampler chain
        (inference/llama_lowlevel.py `Sampler`): its replayable draw makes the run verifiable
        and its replay exact, which llama-cpp-python's own `dist` draw is not. The prompt is
        prefilled in batches, then one token per decode, replayed tokens included."""
        request = job.request
        model = LoadedModel.borrow(llm)
        sampler = None
        try:
            model.forget_all()
            sampler = Sampler(model, request, prompt)  # checks logit_bias
            run.seed = sampler.seed
            out = 0
            for start in range(0, len(prompt), model.n_batch):
                model.clear_batch()
                for pos in range(start, min(start + model.n_batch, len(prompt))):
                    out = model.add(prompt[pos], pos, 0, pos == len(prompt) - 1)
                self._feed(model)
            while True:
                if job.cancelled.is_set() or self._closing.is_set():
                    return "cancelled"
                if run.completion < len(request.replay_tokens):
                    token = request.replay_tokens[run.completion]
                    sampler.advance(model, out, token)
                    run.assembler.replay(run.piece(token))
                else:
                    token = sampler.sample(model, out)
                    now = time.perf_counter()
                    run.first = now if run.first is None else run.first
                    if model.is_eog(token) and (not request.ignore_eos or sampler.exhausted):
                        return "stop"
                    run.last = now
                    entry = None
                    if request.logprobs >= 0:
                        entry = run.entry(model.logits(out), token, request.logprobs)
                    chunk = run.assembler.add(token, run.piece(token), entry)
                    if chunk is not None:
                        self._to_trio(job, chunk)
                run.completion += 1
                if run.assembler.stopped:
                    return "stop"
                if run.completion == request.max_tokens:
                    return "length"
                model.clear_batch()
                out = model.add(token, len(prompt) + run.completion - 1, 0, True)
                self._feed(model)
        finally:
            if sampler is not None:
                sampler.close()
            model.forget_all()
            model.close()
            llm.reset()

    def _feed(self, model: LoadedModel) -> None:
        status = model.decode()
        self._steps += 1
        if status != 0:
            raise GenerationError(f"llama_decode failed with status {status}")

    def _replay(self, llm: Any, job: Job, prompt: list[int], run: _Run) -> None:
        """Exact replay of a greedy run: the prompt as one evaluation, then each replayed token
        in a decode step of its own, as generate() would have fed them; generate() then finds
        all of it cached and samples straight from the last logits. Bit-identical to the
        uninterrupted run (a sampled one is `_sample`'s)."""
        llm.eval(prompt)
        self._steps += 1
        for token in job.request.replay_tokens:
            if job.cancelled.is_set() or self._closing.is_set():
                break
            llm.eval([token])
            self._steps += 1
            run.assembler.replay(run.piece(token))
            run.completion += 1

    def _decode(self, llm: Any, job: Job, prompt: list[int], run: _Run) -> str:
        """Generate and send tokens until a stop, max_tokens or cancellation: the finish."""
        request = job.request
        tokens = llm.generate(
            [*prompt, *request.replay_tokens],
            temp=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            typical_p=request.typical_p,
            repeat_penalty=request.repeat_penalty,
            frequency_penalty=request.frequency_penalty,
            presence_penalty=request.presence_penalty,
            logits_processor=_bias_processor(llm, run, request),
            reset=True,
        )
        try:
            for token in tokens:
                self._steps += 1  # the decode that produced this token
                now = time.perf_counter()
                run.first = now if run.first is None else run.first
                if job.cancelled.is_set() or self._closing.is_set():
                    return "cancelled"
                if run.lib.llama_vocab_is_eog(run.vocab, token) and not request.ignore_eos:
                    return "stop"
                run.completion += 1
                run.last = now
                entry = None
                if request.logprobs >= 0:  # the logits generate() sampled this token from
                    logits = np.ctypeslib.as_array(
                        run.lib.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)
                    )
                    entry = run.entry(logits, token, request.logprobs)
                chunk = run.assembler.add(token, run.piece(token), entry)
                if chunk is not None:
                    self._to_trio(job, chunk)
                if run.assembler.stopped:
                    return "stop"
                if run.completion == request.max_tokens:
                    return "length"
            return "length"
        finally:
            tokens.close()


def _bias_processor(llm: Any, run: _Run, request: GenerationRequest) -> Any:
    """logit_bias and ignore_eos as a logits processor of Llama.generate (None when neither is
    asked for); -100 and the banned end-of-generation tokens become -infinity, as in
    BatchingWorker's chain (inference/llama_lowlevel.py `Sampler`)."""
    if not request.logit_bias and not request.ignore_eos:
        return None
    n_vocab = llm.n_vocab()
    bias = np.zeros(n_vocab, dtype=np.float32)
    for token, value in request.logit_bias:
        if token >= n_vocab:
            raise GenerationError(f"logit_bias token {token} is not in this model's vocabulary")
        bias[token] = -np.inf if value <= BAN_BIAS else value
    if request.ignore_eos:
        for token in range(n_vocab):
            if run.lib.llama_vocab_is_eog(run.vocab, token):
                bias[token] = -np.inf

    def add_bias(_input_ids: Any, scores: Any) -> Any:
        return scores + bias

    return [add_bias]


@attrs.define
class _Run:
    """One request's progress in ModelWorker's thread."""

    lib: Any  # the llama_cpp module
    vocab: Any
    assembler: TextAssembler
    started: float
    completion: int = 0  # replayed + generated tokens so far
    seed: int | None = None  # of a sampled run's replayable draws
    prompt_scores: PromptLogprobs | None = None  # the prompt's entries, when asked (echo)
    first: float | None = None
    last: float = attrs.field(default=attrs.Factory(lambda self: self.started, takes_self=True))
    _piece_buf: ctypes.Array[ctypes.c_char] = attrs.field(
        factory=lambda: ctypes.create_string_buffer(64)
    )

    def entry(self, logits: Any, token: int, n_top: int) -> TokenLogprob:
        """The log-probability entry of `token`, sampled from `logits`."""
        return token_logprob(logits, token, n_top, self.piece)

    def piece(self, token: int) -> bytes:
        piece, self._piece_buf = token_piece(self.lib, self.vocab, token, self._piece_buf)
        return piece

    def done(self, finish: str, prompt_tokens: int, replayed: int) -> GenerationDone:
        first = self.started if self.first is None else self.first
        generated = self.completion - replayed
        return GenerationDone(
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=self.completion,
            time_to_first_token_s=first - self.started,
            decode_tokens_per_s=per_second(generated - 1, self.last - first),
            token_ids=self.assembler.unreleased,
            seed=self.seed,
            prompt_logprobs=tuple(self.prompt_scores.entries) if self.prompt_scores else (),
            prompt_first=self.prompt_scores.first if self.prompt_scores else b"",
        )
