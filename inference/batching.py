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
   plus draft tokens of greedy sequences whose text repeats (greedy speculation, below);
4. each sequence that got logits samples with its own parameters (greedy argmax, or its own
   seeded sampler chain), applies its own stop strings and max_tokens, and leaves when done;
   a greedy one also keeps what it drafted while the drafts were right (below).

So a new request waits at most one step to start, a cancelled one costs at most one more step,
and a finished one frees its slot at once. Over `slots + max_queue` outstanding requests the
answer is WorkerBusy, at once. Admission is first come, first served.

**Not batch-invariant.** llama.cpp's kernels give slightly different logits for a sequence
decoded beside others than alone, so a batched greedy run can take a different (near-tie) token
than a solo run. What does hold, and is tested: every batched greedy token is the solo argmax or
within a small logit margin of it. A request that needs bit-reproducible output sets
`reproducible`: it waits for the batch to drain, empties the KV cache (the prompt-prefix cache
below included), then runs alone — nothing joins until it leaves — so it decodes exactly as any
other reproducible run of it on this build and hardware, whatever ran before.

On the CPU more holds, and is tested there: identical requests that join together give
bit-identical outputs (no cross-talk), and so does a replay in another slot. Not with the layers
on a CUDA GPU (seen on an H100 with the default model and the tiny test model): identical
requests in one batch drift apart after some tokens, each still greedy within the margin. The
likely cause is that the GPU's attention kernels sum over the pool's cells in tiles, so a
sequence's logits depend on where its cells lie among the others'.

**Prompt-prefix cache.** A finished sequence's cells stay in its slot (the unified pool holds
n_ctx cells per slot anyway). A new request reuses the longest prefix of its prompt that is in
the pool, cached in a free slot or prefilled by a sequence in the batch, and prefills only the
rest: at least the prompt's last token, whose logits it needs. Its slot shares the prefix's
cells (the unified pool tags a cell with several sequences; `llama_memory_seq_cp` copies
nothing), and it runs in a slot that caches nothing while there is one, so the cache outlives
it. A repeated system prompt or a conversation's next turn thus skips most of its prefill, as
llama-server's and llama_cpp.server's caches do, and concurrent requests with one prompt prefix
compute it once. The cache keeps one copy of each token run: a free slot whose tokens begin a
newly finished sequence's lets go of them. That matters because idle cells are not free: every
token decoded later attends over the pool up to its highest used cell (7 idle slots of 140 cells
made a lone sequence's steps 3 % slower on 2 cores). The reused cells were computed in another
batch shape, so this is "greedy up to noise" like batching; a `reproducible` request never
reuses (the whole cache is cleared) and the self-benchmark drops the cache first.

**Greedy speculation** (inference/speculation.py, on unless `speculate=False`). A greedy
request whose text has been repeating itself feeds the tokens the repeat predicts into the same
step as its next token, each with logits, after the prompt chunks (a newcomer's first token
comes first). Each draft token is kept while it is the token the model chose before it; the
rest leave the KV cache (`llama_memory_seq_rm` from the first wrong one). So a step can yield
several tokens of one sequence: on the benchmark's prompt, whose answer repeats a digit, the
default model's 128 tokens took 19 steps instead of 128. A several-token step rounds
differently from single ones, so this too is greedy up to noise; sampled and reproducible
requests never draft, and replayed tokens go one per step.

**Exact replay** (GenerationRequest.replay_tokens): the prompt is prefilled as for a fresh
request, then each replayed token is fed in a decode step of its own, as if sampled (the sampler
draws and discards, so a seeded chain's random state stays in step), with no text sent; then
generation continues. See inference/streaming.py for how token ids travel with the text.

The thread sends results to trio without blocking either side, exactly as ModelWorker does
(`TrioToken.run_sync_soon` onto an unbounded channel per request).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import trio

from inference.generation import (
    GenerationDone,
    GenerationError,
    GenerationRequest,
    WorkerBusy,
    WorkerLoad,
)
from inference.llama_lowlevel import DEFAULT_N_BATCH, LoadedModel, Sampler
from inference.model_file import ModelFileError
from inference.speculation import NgramDrafter
from inference.streaming import TextAssembler
from inference.worker import (
    ThreadOwnedWorker,
    _Close,
    _Job,
    _Measure,
    _put,
    _rate,
    check_fits,
    check_replay,
)

DEFAULT_SLOTS = 4
# Draft tokens in one step, all sequences together. Each needs its logits, and llama.cpp keeps
# room for every output of a step: with Gemma 3's 262,144-token vocabulary, 8 sequences drafting
# 32 each made the process 515 MB larger than without speculation; capped at 64, 130 MB more,
# at the same aggregate speed (8 streams, 2 cores: 189 and 215 tok/s against 198 and 184).
MAX_STEP_DRAFTS = 64


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _put_all(items: list[tuple[_Job, object]]) -> None:
    """Runs in trio (via run_sync_soon): deliver a step's items in order; never raises."""
    for job, item in items:
        _put(job.send, item)


@attrs.define(eq=False)
class _Sequence:
    job: _Job
    seq_id: int
    prompt: list[int]
    sampler: Sampler
    assembler: TextAssembler
    started: float
    prefilled: int = 0  # prompt tokens in the KV cache
    cached: int = 0  # of which reused from the slot's previous request
    fed: list[int] = attrs.field(factory=list)  # generated/replayed tokens added to the cache
    completion: int = 0  # replayed + generated tokens so far
    next_token: int | None = None  # fed in the next step
    out: int = -1  # batch index of this sequence's logits in the current step
    drafter: NgramDrafter | None = None  # greedy requests that may speculate (see _draft)
    draft: list[int] = attrs.field(factory=list)  # fed after next_token in the current step
    draft_out: int = -1  # batch index of the first of them (the others follow it)
    drafted: int = 0  # draft tokens fed so far
    accepted: int = 0  # of which kept
    first: float | None = None
    last: float = 0.0

    @property
    def request(self) -> GenerationRequest:
        return self.job.request


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
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers  # after start(): the number actually offloaded
        self.max_queue = max_queue
        self.slots = slots
        self.tensor_split = list(tensor_split) if tensor_split else None
        self.n_batch = max(n_batch, slots)
        self._jobs: queue.SimpleQueue[_Job | _Measure | None] = queue.SimpleQueue()
        self._outstanding = 0  # accepted and not yet finished: active + waiting
        self._count_lock = threading.Lock()
        self._active = 0
        self._steps = 0
        self._closing = threading.Event()
        self._gate = threading.Event()  # set: requests may join the batch
        self._gate.set()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._loaded = False
        self._load_error: Exception | None = None
        self._outbox: list[tuple[_Job, object]] = []  # scheduler thread only
        # A free slot keeps its last request's cells; these are the tokens in them (scheduler
        # thread only). Each slot holds at most n_ctx cells, so the pool of n_ctx x slots never
        # runs out however the cache is used.
        self.prefix_cache = prefix_cache
        self.speculate = speculate
        self.max_step_drafts = MAX_STEP_DRAFTS
        self._kv_tokens: dict[int, list[int]] = {}
        self._cached_tokens = 0  # their total, for `load` (read from other threads)

    @property
    def load(self) -> WorkerLoad:
        active = self._active
        return WorkerLoad(
            active_requests=active,
            free_slots=self.slots - active,
            queue_depth=max(0, self._outstanding - active),
            decode_steps=self._steps,
            cached_tokens=self._cached_tokens,
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

    def _reserve(self) -> None:
        with self._count_lock:
            if self._outstanding >= self.slots + self.max_queue:
                raise WorkerBusy(
                    f"all {self.slots} slots busy and {self._outstanding - self._active} "
                    "requests waiting for this model"
                )
            self._outstanding += 1

    # -- scheduler thread ----------------------------------------------------------------------

    def _to_trio(self, job: _Job, item: object) -> None:
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
            self._token.run_sync_soon(_put_all, items)
        except trio.RunFinishedError:  # the trio program has ended; nobody is listening
            for job, _ in items:
                job.cancelled.set()

    def _end(self, job: _Job, last: object | None = None) -> None:
        """The job leaves the worker: count it out first (so a client answered at once may
        submit again), then send its last item and close its channel."""
        with self._count_lock:
            self._outstanding -= 1
        if last is not None:
            self._to_trio(job, last)
        self._to_trio(job, _Close())

    def _load(self) -> LoadedModel | None:
        try:
            import llama_cpp

            model = LoadedModel.load(
                self.model_path,
                n_ctx=self.n_ctx,
                n_seq=self.slots,
                n_threads=self.n_threads,
                n_gpu_layers=self.n_gpu_layers,
                tensor_split=self.tensor_split,
                n_batch=self.n_batch,
            )
        except ImportError as e:
            self._load_error = GenerationError(f"llama-cpp-python is not installed ({e})")
            return None
        except ModelFileError as e:
            self._load_error = e
            return None
        except Exception as e:
            self._load_error = ModelFileError(
                f"{self.model_path} could not be loaded by llama.cpp ({e})".replace("\n", " ")
            )
            return None
        if not llama_cpp.llama_supports_gpu_offload():
            self.n_gpu_layers = 0
        else:
            limit = model.n_layer + 1  # every block plus the output layer
            self.n_gpu_layers = limit if self.n_gpu_layers < 0 else min(self.n_gpu_layers, limit)
        return model

    def _run(self, loaded: trio.Event) -> None:
        model = self._load()
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(loaded.set)
        if model is None:
            return
        free = list(range(self.slots - 1, -1, -1))  # pop() hands out slot 0 first
        active: list[_Sequence] = []
        backlog: list[_Job | _Measure] = []  # taken from the queue, not yet admitted
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
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    backlog.append(item)
            for item in backlog:
                self._refuse(item)
            self._flush()
            model.close()

    def _take_queued(self, backlog: list[_Job | _Measure]) -> bool:
        """Move whatever is queued into the backlog; False once the worker is closing."""
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return not self._closing.is_set()
            if item is None:
                return False
            backlog.append(item)

    def _refuse(self, item: _Job | _Measure) -> None:
        assert self._token is not None
        error = GenerationError("the model worker is closed")
        if isinstance(item, _Measure):
            item.fail(error, self._token)
        else:
            self._end(item, error)

    def _admit(
        self,
        model: LoadedModel,
        backlog: list[_Job | _Measure],
        free: list[int],
        active: list[_Sequence],
    ) -> None:
        """Backlog items join in order while slots are free. A self-benchmark or a reproducible
        request waits for an empty batch, holding back everything behind it; a reproducible
        request then runs alone. Requests given up while waiting leave first, wherever they
        are in line, so they stop counting against the bound within one step."""
        assert self._token is not None
        for gone in [i for i in backlog if isinstance(i, _Job) and i.cancelled.is_set()]:
            backlog.remove(gone)
            self._end(gone)
        while backlog:
            if any(seq.request.reproducible for seq in active):
                return  # it runs alone
            item = backlog[0]
            if isinstance(item, _Measure):
                if active:
                    return
                backlog.pop(0)
                self._drop_prefix_cache(model)  # it uses the context's sequences itself
                item.run(model, self._token)
                continue
            if item.cancelled.is_set():
                backlog.pop(0)
                self._end(item)
                continue
            if not free or (item.request.reproducible and active):
                return  # a reproducible request waits for the batch to drain
            backlog.pop(0)
            if item.request.reproducible:
                # Alone in the pool too, not only in the batch: on a CUDA GPU the attention of
                # a lone sequence depends on where its cells lie among other cached ones.
                self._drop_prefix_cache(model)
                model.forget_all()
            try:
                prompt = model.tokenize(item.request.prompt)
                if not prompt:
                    raise GenerationError("the prompt is empty")
                check_fits(len(prompt), item.request.max_tokens, model.n_ctx)
                check_replay(model.lib, model.vocab, item.request.replay_tokens)
            except GenerationError as e:
                self._end(item, e)
                continue
            seq_id, cached = self._pick_slot(model, free, prompt, item.request, active)
            active.append(
                _Sequence(
                    job=item,
                    seq_id=seq_id,
                    prompt=prompt,
                    sampler=Sampler(model.lib, item.request),
                    assembler=TextAssembler(item.request.stop),
                    started=time.perf_counter(),
                    prefilled=cached,
                    cached=cached,
                    drafter=NgramDrafter(prompt) if self._may_draft(item.request) else None,
                )
            )
            self._active = len(active)

    def _may_draft(self, request: GenerationRequest) -> bool:
        """Greedy requests speculate; a sampled one would need its draws checked against the
        draft's, and a reproducible one decodes one token per step like any solo run."""
        return self.speculate and request.temperature == 0 and not request.reproducible

    def _pick_slot(
        self,
        model: LoadedModel,
        free: list[int],
        prompt: list[int],
        request: GenerationRequest,
        active: list[_Sequence],
    ) -> tuple[int, int]:
        """A free slot for `prompt`, and how many of its first tokens are already in the KV
        cache: at most all but the last, which must be evaluated for its logits.

        The longest common prefix in the pool is reused, whether a free slot caches it or a
        sequence in the batch has prefilled it: the request's slot shares those cells (the
        unified pool tags a cell with several sequences; nothing is copied). It runs in a slot
        that caches nothing while there is one, so the caches stay for later requests; else in
        the slot holding its prefix, else in the lowest. A reproducible request reuses nothing,
        so it is prefilled exactly as a solo run is (a reused prefix was computed in another
        batch shape: close, not bitwise)."""
        reuse, source = 0, -1
        if self.prefix_cache and not request.reproducible:
            for slot in reversed(free):
                n = _common_prefix(self._kv_tokens.get(slot, ()), prompt)
                if n > reuse:
                    reuse, source = n, slot
            for seq in active:
                n = _common_prefix(seq.prompt[: seq.prefilled], prompt)
                if n > reuse:
                    reuse, source = n, seq.seq_id
        reuse = min(reuse, len(prompt) - 1)
        empty = [s for s in free if s not in self._kv_tokens]  # descending, as free is
        best = empty[-1] if empty else source if source in free else free[-1]
        free.remove(best)
        cached = self._kv_tokens.pop(best, None)
        if best == source:
            assert cached is not None
            if len(cached) > reuse:
                model.forget_from(best, reuse)
        else:
            if cached is not None:
                model.forget(best)
            if reuse:
                model.share(source, best, reuse)
        self._recount()
        return best, reuse

    def _keep_cached(self, model: LoadedModel, slot: int, tokens: list[int]) -> None:
        """Cache a finished sequence's tokens in its slot, keeping one copy of each: a free
        slot whose tokens begin the new ones holds nothing the new ones lack, so it lets go (and
        the other way round). Idle cells are not free: every token decoded later attends over
        the pool up to its highest used cell, so duplicates would slow a lone stream."""
        for other, cached in list(self._kv_tokens.items()):
            common = _common_prefix(cached, tokens)
            if common == len(cached):
                del self._kv_tokens[other]
                model.forget(other)
            elif common == len(tokens):
                model.forget(slot)
                break
        else:
            self._kv_tokens[slot] = tokens
        self._recount()

    def _recount(self) -> None:
        self._cached_tokens = sum(len(tokens) for tokens in self._kv_tokens.values())

    def _drop_prefix_cache(self, model: LoadedModel) -> None:
        for slot in self._kv_tokens:
            model.forget(slot)
        self._kv_tokens.clear()
        self._recount()

    def _step(self, model: LoadedModel, free: list[int], active: list[_Sequence]) -> None:
        """One llama_decode: every generating sequence's next token, then prompt chunks, then
        draft tokens."""
        model.clear_batch()
        generating = []
        for seq in active:
            seq.out = -1
            if seq.next_token is not None:
                pos = len(seq.prompt) + seq.completion - 1
                seq.out = model.add(seq.next_token, pos, seq.seq_id, True)
                seq.fed.append(seq.next_token)
                seq.next_token = None
                generating.append(seq)
        for seq in active:
            left = len(seq.prompt) - seq.prefilled
            if left == 0 or model.room == 0:
                continue
            take = min(left, model.room)
            for pos in range(seq.prefilled, seq.prefilled + take):
                index = model.add(seq.prompt[pos], pos, seq.seq_id, pos == len(seq.prompt) - 1)
            seq.prefilled += take
            if seq.prefilled == len(seq.prompt):
                seq.out = index
        budget = self.max_step_drafts
        for seq in generating:  # after the prompts: a new request's first token comes first
            if seq.drafter is not None:
                budget -= self._draft(model, seq, budget)
        try:
            status = model.decode()
            self._steps += 1
            if status != 0:
                raise GenerationError(f"llama_decode failed with status {status}")
            now = time.perf_counter()
            for seq in list(active):
                if seq.out >= 0:
                    finish = self._advance(model, seq, now)
                    if finish is not None:
                        self._retire(model, seq, finish, free, active)
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
            model.forget_all()
            self._kv_tokens.clear()
            self._recount()

    def _draft(self, model: LoadedModel, seq: _Sequence, budget: int) -> int:
        """Feed the tokens the sequence's repeats predict after its next token, each with
        logits, at most `budget` and in what room the batch has left (see
        inference/speculation.py); how many it fed."""
        assert seq.drafter is not None
        done = len(seq.prompt) + len(seq.fed)  # the next token is in fed already
        if seq.completion < len(seq.request.replay_tokens):
            return 0  # replayed tokens go one per step, as if sampled
        seq.drafter.extend(seq.fed[len(seq.drafter) - len(seq.prompt) :])
        limit = min(seq.request.max_tokens - seq.completion - 1, model.room, budget)
        seq.draft = seq.drafter.draft(limit)
        seq.draft_out = model.n_tokens  # the index the first one gets
        for i, token in enumerate(seq.draft):
            model.add(token, done + i, seq.seq_id, True)
        seq.drafted += len(seq.draft)
        return len(seq.draft)

    def _advance(self, model: LoadedModel, seq: _Sequence, now: float) -> str | None:
        """Take this step's tokens for `seq`: the one its next token predicts, then each draft
        token while it is the token the model chose before it, whose cells and logits are then
        already there. The finish reason when it is done."""
        finish = self._take(model, seq, seq.out, now)
        kept = 0
        while finish is None and kept < len(seq.draft) and seq.next_token == seq.draft[kept]:
            seq.fed.append(seq.draft[kept])
            seq.next_token = None
            finish = self._take(model, seq, seq.draft_out + kept, now)
            kept += 1
        if kept < len(seq.draft):  # the rest were wrong or not needed: out of the cache
            model.forget_from(seq.seq_id, len(seq.prompt) + len(seq.fed))
        seq.accepted += kept
        seq.draft = []
        return finish

    def _take(self, model: LoadedModel, seq: _Sequence, out: int, now: float) -> str | None:
        """The token at batch index `out`; the finish reason when the sequence is done."""
        request = seq.request
        if seq.completion < len(request.replay_tokens):
            seq.sampler.advance(model, out)
            token = request.replay_tokens[seq.completion]
            seq.assembler.replay(model.piece(token))
            seq.completion += 1
            seq.next_token = token
            return None
        token = seq.sampler.sample(model, out)
        seq.first = now if seq.first is None else seq.first
        if model.is_eog(token):
            return "stop"
        seq.completion += 1
        seq.last = now
        chunk = seq.assembler.add(token, model.piece(token))
        if chunk is not None:
            self._to_trio(seq.job, chunk)
        if seq.assembler.stopped:
            return "stop"
        if seq.completion == request.max_tokens:
            return "length"
        seq.next_token = token
        return None

    def _retire(
        self,
        model: LoadedModel,
        seq: _Sequence,
        finish: str | None,
        free: list[int],
        active: list[_Sequence],
        *,
        error: BaseException | None = None,
    ) -> None:
        """The sequence leaves the batch: its slot keeps its cells for a later request with the
        same prompt prefix (not after an error); free its sampler and slot, then answer."""
        if error is None and finish is not None and self.prefix_cache:
            self._keep_cached(model, seq.seq_id, seq.prompt[: seq.prefilled] + seq.fed)
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
        first = seq.started if seq.first is None else seq.first
        generated = seq.completion - min(seq.completion, len(seq.request.replay_tokens))
        self._end(
            seq.job,
            GenerationDone(
                finish_reason=finish,
                prompt_tokens=len(seq.prompt),
                completion_tokens=seq.completion,
                time_to_first_token_s=first - seq.started,
                decode_tokens_per_s=_rate(generated - 1, seq.last - first),
                token_ids=seq.assembler.unreleased,
                cached_prompt_tokens=seq.cached,
                draft_tokens=seq.drafted,
                accepted_draft_tokens=seq.accepted,
            ),
        )
