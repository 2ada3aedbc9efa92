"""Continuous batching: many requests decoded together by one scheduler thread.

Decoding is memory-bound: a step that computes one token per sequence for 8 sequences costs
little more than a step for one (measured on the default model, 2 cores: ~16 ms for 1 sequence,
~55 ms for 8), so serving concurrent requests in one batch multiplies aggregate tokens/s. A
BatchingWorker holds one llama.cpp model and one context with `slots` sequences and a thread that
owns both (llama.cpp objects are not thread-safe). Each turn of its loop is one decode step:

1. requests that are waiting join while a slot is free — their prompts are prefilled in this
   step's batch, in chunks when long, beside the other sequences' next tokens;
2. sequences whose client has gone are removed (`llama_memory_seq_rm`) and their slot freed;
3. one `llama_decode` over the batch: one token per generating sequence plus prompt chunks,
   plus draft tokens of greedy sequences whose text repeats (greedy speculation, below), as
   many as pay at this batch size once step costs are measured (inference/draft_policy.py);
4. each sequence that got logits samples with its own parameters (greedy argmax, or its own
   seeded sampler chain), applies its own stop strings and max_tokens, and leaves when done;
   a greedy one also keeps what it drafted while the drafts were right (below).

So a new request waits at most one step to start, a cancelled one costs at most one more step,
and a finished one frees its slot at once. Over `slots + max_queue` outstanding requests the
answer is WorkerBusy, at once. Admission is first come, first served.

Properties (docs/batching.md has the detail): batched greedy output is the solo argmax up to a
small logit margin, not bit-identical (a `reproducible` request runs alone and is); the
prompt-prefix cache (inference/prefix_cache.py) reuses a finished sequence's cells for a new
prompt's longest cached prefix; greedy speculation (inference/speculation.py) feeds the tokens a
repeating text predicts into the same step and keeps them while the request's own chain picks
them; exact replay (GenerationRequest.replay_tokens) feeds replayed tokens one per step as if
sampled; scoring (`score()`, inference/scoring.py) runs between two steps in a free slot.

The thread sends results to trio without blocking either side, as ModelWorker does
(inference/worker_thread.py), but gathers a step's items into one hand-off (`_flush`). Each
sequence's state and its share of a step are inference/batch_sequence.py's.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

from inference.batch_sequence import BatchSequence, may_draft, prepare, step_rows
from inference.draft_policy import DraftPolicy
from inference.generation import (
    GenerationError,
    WorkerBusy,
    WorkerLoad,
)
from inference.llama_lowlevel import DEFAULT_N_BATCH, LoadedModel
from inference.normalizer_pool import NormalizerPool, helper_wanted
from inference.online_step_costs import OnlineStepCosts
from inference.prefix_cache import PrefixCache
from inference.probe_rows import SPARE_SEQS, SpareSeqs
from inference.sibling_prefill import waits_for_sibling
from inference.speculation import NgramDrafter
from inference.step_costs import StepCostJob, StepCosts
from inference.streaming import TextAssembler
from inference.worker_thread import (
    Close,
    Job,
    MeasureJob,
    ScoreJob,
    ThreadOwnedWorker,
    WorkItem,
    deliver,
)

DEFAULT_SLOTS = 4
# Draft tokens in one step, all sequences together. Each needs its logits, and llama.cpp keeps
# room for every output of a step: with Gemma 3's 262,144-token vocabulary, 8 sequences drafting
# 32 each made the process 515 MB larger than without speculation; capped at 64, 130 MB more,
# at the same aggregate speed (8 streams, 2 cores: 189 and 215 tok/s against 198 and 184).
MAX_STEP_DRAFTS = 64


def _deliver_all(items: list[tuple[Job, object]]) -> None:
    """Runs in trio (via run_sync_soon): deliver a step's items in order; never raises."""
    for job, item in items:
        deliver(job.send, item)


class BatchingWorker(ThreadOwnedWorker):
    """Serves generation requests from one model, up to `slots` at a time in one batch.

    The same interface as ModelWorker (inference/worker.py), so either can serve a model:

        worker = BatchingWorker(path, slots=8)
        await worker.start()
        async with worker.generate(GenerationRequest("Hello")) as stream:
            async for item in stream: ...     # TokenChunk ..., then GenerationDone
        await worker.aclose()

    `n_ctx` is the context of each request (the KV cache holds n_ctx × slots cells);
    `max_queue` bounds the requests waiting for a slot; `n_gpu_layers` and `tensor_split` come
    from the offload planner (inference/offload.py, with n_seq=slots).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        max_queue: int = 8,
        slots: int = DEFAULT_SLOTS,
        tensor_split: Sequence[float] | None = None,
        n_batch: int = DEFAULT_N_BATCH,
        prefix_cache: bool = True,
        speculate: bool = True,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, got {max_queue}")
        self._init_thread(model_path, n_ctx, n_threads, n_gpu_layers)
        self.max_queue = max_queue
        self.slots = slots
        self.tensor_split = list(tensor_split) if tensor_split else None
        self.n_batch = max(n_batch, slots + SPARE_SEQS)  # llama.cpp: a row per sequence id
        self._outstanding = 0  # accepted and not yet finished: active + waiting
        self._count_lock = threading.Lock()
        self._active = 0
        self._steps = 0
        self._gate = threading.Event()  # set: requests may join the batch
        self._gate.set()
        self._outbox: list[tuple[Job, object]] = []  # scheduler thread only
        self.prefix_cache = prefix_cache
        self.speculate = speculate
        self.max_step_drafts = MAX_STEP_DRAFTS
        # Feeds only the drafts that pay once step costs are measured (measure_step_costs).
        self.draft_policy: DraftPolicy | None = None
        self.step_costs: OnlineStepCosts | None = None  # the policy's, corrected as served
        self._cache = PrefixCache()
        self._spares = SpareSeqs(slots)  # sequence ids for prompt probes (probe_rows.py)
        self._norms = NormalizerPool(helper_wanted(n_threads, gpu_layers=n_gpu_layers))

    @property
    def load(self) -> WorkerLoad:
        active = self._active
        return WorkerLoad(
            active_requests=active,
            free_slots=self.slots - active,
            queue_depth=max(0, self._outstanding - active),
            decode_steps=self._steps,
            cached_tokens=self._cache.cached_tokens,
        )

    _thread_label = "batching-worker"

    def _wake(self) -> None:
        self._gate.set()  # the scheduler may be holding new requests back
        self._jobs.put(None)

    @contextlib.contextmanager
    def admit_together(self) -> Iterator[None]:
        """Requests submitted inside this block join the batch in the same step once it ends.

        For tests and benchmarks that need several requests to start together (e.g. identical
        requests decoded side by side); serving never needs it.
        """
        self._gate.clear()
        try:
            yield
        finally:
            self._gate.set()

    # -- trio side -----------------------------------------------------------------------------

    async def measure_step_costs(self, *, budget_s: float = 2.0) -> StepCosts:
        """Seconds per decode step by row count on this context (inference/step_costs.py);
        queued like the self-benchmark, before serving. `use_step_costs` puts them to work."""
        if not self._loaded or self._closing.is_set():
            raise GenerationError("the model worker is not running")
        job = StepCostJob.make(self.slots, budget_s)
        self._jobs.put(job)
        return await job.wait_costs()

    def use_step_costs(self, costs: StepCosts) -> None:
        """From now on drafts are weighed against these costs (inference/draft_policy.py)."""
        self.step_costs = OnlineStepCosts(costs)
        self.draft_policy = DraftPolicy(self.step_costs)

    def _reserve(self) -> None:
        with self._count_lock:
            if self._outstanding >= self.slots + self.max_queue:
                raise WorkerBusy(
                    f"all {self.slots} slots busy and {self._outstanding - self._active} "
                    "requests waiting for this model"
                )
            self._outstanding += 1

    # -- scheduler thread: hand-off to trio ----------------------------------------------------

    def _to_trio(self, job: Job, item: object) -> None:
        """Queue an item for trio; _flush() hands over everything queued in one wake-up."""
        self._outbox.append((job, item))

    def _flush(self) -> None:
        """One `run_sync_soon` per decode step, not one per token: each wake-up of the trio
        thread competes with llama.cpp's threads for the cores, and on a 2-core machine one
        per sequence per step made 8-sequence steps up to twice as slow."""
        if not self._outbox:
            return
        assert self._token is not None
        items, self._outbox = self._outbox, []
        try:
            self._token.run_sync_soon(_deliver_all, items)
        except trio.RunFinishedError:  # the trio program has ended; nobody is listening
            for job, _ in items:
                job.cancelled.set()

    def _end(self, job: Job, last: object | None = None) -> None:
        """The job leaves the worker: count it out first (so a client answered at once may
        submit again), then send its last item and close its channel."""
        with self._count_lock:
            self._outstanding -= 1
        if last is not None:
            self._to_trio(job, last)
        self._to_trio(job, Close())

    # -- scheduler thread: the loop ------------------------------------------------------------

    def _open(self) -> tuple[LoadedModel, int]:
        model = LoadedModel.load(
            self.model_path,
            n_ctx=self.n_ctx,
            n_seq=self.slots,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            tensor_split=self.tensor_split,
            n_batch=self.n_batch,
            n_spare=SPARE_SEQS,
        )
        return model, model.n_layer

    def _serve(self, model: LoadedModel) -> None:
        free = list(range(self.slots - 1, -1, -1))  # pop() hands out slot 0 first
        active: list[BatchSequence] = []
        backlog: list[WorkItem] = []  # taken from the queue, not yet admitted
        try:
            while not self._closing.is_set():
                if not active and not backlog:
                    item = self._jobs.get()  # idle: sleep until there is work
                    if item is None:
                        break
                    backlog.append(item)
                if not self._take_queued(backlog):
                    break
                if self._gate.is_set():
                    self._admit(model, backlog, free, active)
                elif not active:  # admit_together(): newcomers wait; so do we, having no work
                    self._gate.wait()
                    continue
                for seq in [s for s in active if s.job.cancelled.is_set()]:
                    self._retire(model, seq, "cancelled", free, active)
                if active:
                    self._step(model, free, active)
                self._flush()
        finally:
            for seq in list(active):
                self._retire(model, seq, "cancelled", free, active)
            self._closing.set()
            self._drain_queue(backlog)
            for item in backlog:
                self._refuse(item)
            self._flush()
            self._norms.close()
            model.close()

    def _take_queued(self, backlog: list[WorkItem]) -> bool:
        """Move whatever is queued into the backlog; False once the worker is closing."""
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return not self._closing.is_set()
            if item is None:
                return False
            backlog.append(item)

    def _drain_queue(self, backlog: list[WorkItem]) -> None:
        """Closing: move every job still queued into the backlog, past any wake-ups."""
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                backlog.append(item)

    def _refuse(self, item: WorkItem) -> None:
        assert self._token is not None
        error = GenerationError("the model worker is closed")
        if isinstance(item, MeasureJob):
            item.fail(error, self._token)
        elif isinstance(item, ScoreJob):
            item.result = error
            self._end_score(item)
        else:
            self._end(item, error)

    # -- scheduler thread: who joins -----------------------------------------------------------

    def _admit(
        self,
        model: LoadedModel,
        backlog: list[WorkItem],
        free: list[int],
        active: list[BatchSequence],
    ) -> None:
        """Backlog items join in order while slots are free. A self-benchmark or a reproducible
        request waits for an empty batch, holding back everything behind it; a reproducible
        request then runs alone. Requests given up while waiting leave first, wherever they
        are in line, so they stop counting against the bound within one step. A request whose
        prompt a sequence in the batch is still prefilling waits for that prefill and shares
        its cells (same-prompt requests prefill once: inference/sibling_prefill.py)."""
        assert self._token is not None
        for gone in [i for i in backlog if not isinstance(i, MeasureJob) and i.cancelled.is_set()]:
            backlog.remove(gone)
            if isinstance(gone, ScoreJob):
                self._end_score(gone)
            else:
                self._end(gone)
        while backlog:
            if any(seq.request.reproducible for seq in active):
                return  # it runs alone
            item = backlog[0]
            if isinstance(item, MeasureJob):
                if active:
                    return
                backlog.pop(0)
                self._cache.drop(model)  # it uses the context's sequences itself
                item.run(model, self._token)
                continue
            if isinstance(item, ScoreJob):
                if not free:
                    return
                backlog.pop(0)
                self._score(model, item, free)
                continue
            if item.cancelled.is_set():
                backlog.pop(0)
                self._end(item)
                continue
            if not free or (item.request.reproducible and active):
                return  # a reproducible request waits for the batch to drain
            if self.prefix_cache and waits_for_sibling(model, self._cache, free, item, active):
                return  # its prompt is being prefilled beside it: share that, a step later
            backlog.pop(0)
            seq = self._start(model, item, free, active)
            if seq is not None:
                active.append(seq)
                self._active = len(active)

    def _score(self, model: LoadedModel, job: ScoreJob, free: list[int]) -> None:
        """Scoring between two decode steps, in a free slot: the batch's sequences pause for
        its decodes and are otherwise untouched; the slot is emptied again afterwards."""
        slot = self._cache.take_slot(model, free)
        try:
            job.compute(model, slot)
        finally:
            model.forget(slot)
            free.append(slot)
            free.sort(reverse=True)
        self._end_score(job)

    def _end_score(self, job: ScoreJob) -> None:
        """Count the scoring job out, then wake its task (as `_end` does for a stream)."""
        assert self._token is not None
        with self._count_lock:
            self._outstanding -= 1
        job.wake(self._token)

    def _start(
        self, model: LoadedModel, job: Job, free: list[int], active: list[BatchSequence]
    ) -> BatchSequence | None:
        """The job as a sequence in a slot, or None when it was refused (and answered)."""
        request = job.request
        if request.reproducible:
            # Alone in the pool too, not only in the batch: on a CUDA GPU the attention of
            # a lone sequence depends on where its cells lie among other cached ones.
            self._cache.drop(model)
            model.forget_all()
        try:
            prompt, sampler = prepare(model, request)
        except GenerationError as e:
            self._end(job, e)
            return None
        seq_id, cached = self._cache.pick_slot(
            model,
            free,
            prompt,
            ((s.seq_id, s.prompt[: s.prefilled]) for s in active),
            reuse_allowed=self.prefix_cache and not request.reproducible,
        )
        return BatchSequence(
            job=job,
            seq_id=seq_id,
            prompt=prompt,
            sampler=sampler,
            assembler=TextAssembler(request.stop),
            started=time.perf_counter(),
            prefilled=cached,
            cached=cached,
            drafter=NgramDrafter(prompt) if may_draft(request, self.speculate) else None,
        )

    # -- scheduler thread: one step, and who leaves --------------------------------------------

    def _step(self, model: LoadedModel, free: list[int], active: list[BatchSequence]) -> None:
        """One llama_decode: every generating sequence's next token, then prompt chunks, then
        draft tokens."""
        started = time.perf_counter()  # the whole step is what rows cost: feeding, sampling too
        model.clear_batch()
        generating = [seq for seq in active if seq.feed_next(model)]
        for seq in active:  # prompt probes: rows with logits, like the decoding ones
            seq.feed_probes(model, self._spares)
        decoding_rows = model.n_tokens
        for seq in active:
            seq.feed_prompt(model)
        timed = model.n_tokens == decoding_rows  # no prompt chunk: every row has logits
        budget, policy = self.max_step_drafts, self.draft_policy
        if policy is not None:
            # how far the batch still has to go, and whether a request waits for a slot:
            # what finishing a sequence sooner is worth (inference/draft_policy.py)
            longest = max((s.request.max_tokens - s.completion for s in generating), default=0)
            producing = sum(seq.out >= 0 for seq in active)
            policy.begin_step(model.n_tokens, producing, longest, self._outstanding > len(active))
        for seq in generating:  # after the prompts: a new request's first token comes first
            if seq.drafter is not None:
                budget -= seq.feed_draft(model, budget, policy)
        try:
            rows = model.n_tokens
            status = model.decode()
            self._spares.release(model)  # the probe rows' cells; their logits stay readable
            self._steps += 1
            if status != 0:
                raise GenerationError(f"llama_decode failed with status {status}")
            now = time.perf_counter()
            with self._norms.step(model, step_rows(active)) as norm:
                for seq in list(active):
                    if seq.due:  # logits to read: its tokens, prompt scores or probes
                        finish = seq.advance(model, now, self._to_trio, norm)
                        if finish is not None:
                            self._retire(model, seq, finish, free, active)
            if timed and self.step_costs is not None:  # the policy's costs follow the load
                self.step_costs.observe(rows, time.perf_counter() - started)
        except Exception as e:  # the batch's requests fail; the worker serves on
            error = (
                e
                if isinstance(e, GenerationError)
                else GenerationError(
                    f"generation failed: {type(e).__name__}: {e}".replace("\n", " ")
                )
            )
            for seq in list(active):
                self._retire(model, seq, None, free, active, error=error)
            self._spares.release(model)
            model.forget_all()
            self._cache.forget()

    def _retire(
        self,
        model: LoadedModel,
        seq: BatchSequence,
        finish: str | None,
        free: list[int],
        active: list[BatchSequence],
        *,
        error: BaseException | None = None,
    ) -> None:
        """The sequence leaves the batch: its slot keeps its cells for a later request with the
        same prompt prefix (not after an error); free its sampler and slot, then answer."""
        if error is None and finish is not None and self.prefix_cache:
            self._cache.keep(model, seq.seq_id, seq.prompt[: seq.prefilled] + seq.fed)
        else:
            model.forget(seq.seq_id)
        seq.sampler.close()
        active.remove(seq)
        free.append(seq.seq_id)
        free.sort(reverse=True)
        self._active = len(active)
        if error is not None or finish is None:
            self._end(seq.job, error or GenerationError("generation failed"))
            return
        if finish != "cancelled" and not seq.assembler.stopped:
            chunk = seq.assembler.finish()
            if chunk is not None:
                self._to_trio(seq.job, chunk)
        self._end(seq.job, seq.done(finish))
