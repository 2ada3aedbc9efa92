"""One request as a sequence of BatchingWorker's batch: its state, and its share of a step.

Each decode step, a sequence adds to the batch its next token (`feed_next`), a chunk of its
prompt while prefilling (`feed_prompt`) and, when greedy and repeating itself, draft tokens
(`feed_draft`, see inference/speculation.py); after the step it takes the tokens the logits give
(`advance`) and, once finished, says how it went (`done`). The scheduler (inference/batching.py)
decides who joins, who leaves and where the KV cells live. Scheduler thread only.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from inference.draft_policy import DraftPolicy, DraftStats
from inference.generation import GenerationDone, GenerationError, GenerationRequest, check_fits
from inference.llama_lowlevel import LoadedModel, Sampler, check_replay
from inference.normalizer_pool import Normalizer, in_this_thread
from inference.probe_rows import PromptProbes, SpareSeqs
from inference.prompt_logprobs import (
    PROMPT_ROWS_PER_STEP,
    PromptLogprobs,
    check_prompt_logprobs,
)
from inference.speculation import NgramDrafter
from inference.streaming import TextAssembler
from inference.token_logprobs import token_logprob
from inference.worker_thread import Job, per_second

# How a sequence hands text to its client: the scheduler's outbox, flushed once per step.
Send = Callable[[Job, object], None]


def prepare(model: LoadedModel, request: GenerationRequest) -> tuple[list[int], Sampler]:
    """A new request's prompt tokens and sampler; GenerationError when it cannot be served
    (empty or too long a prompt, a replayed or biased token outside the vocabulary)."""
    prompt = model.tokenize(request.prompt)
    if not prompt:
        raise GenerationError("the prompt is empty")
    check_fits(len(prompt), request.max_tokens, model.n_ctx)
    check_replay(model.lib, model.vocab, request.replay_tokens)
    if request.prompt_logprobs:
        check_prompt_logprobs(len(prompt))
    return prompt, Sampler(model, request, prompt)  # checks logit_bias against the vocabulary


def may_draft(request: GenerationRequest, speculate: bool) -> bool:
    """Whether the request speculates (when the worker does). Greedy requests do; a sampled one
    would need its draws checked against the draft's, and a reproducible one decodes one token
    per step like any solo run. A greedy request with penalties does not either: they
    discourage exactly the repeats drafts come from, and each kept draft would have to move the
    penalty window. One with only logit_bias or ignore_eos drafts: each draft token is checked
    against its chain's pick (bias → argmax), so a token the chain would not choose is never
    kept."""
    return (
        speculate
        and request.temperature == 0
        and not request.penalized
        and not request.reproducible
    )


@attrs.define(eq=False)
class BatchSequence:
    job: Job
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
    drafter: NgramDrafter | None = None  # greedy requests that may speculate (see feed_draft)
    draft: list[int] = attrs.field(factory=list)  # fed after next_token in the current step
    draft_out: int = -1  # batch index of the first of them (the others follow it)
    drafted: int = 0  # draft tokens fed so far
    accepted: int = 0  # of which kept
    draft_stats: DraftStats = attrs.field(factory=DraftStats)  # recent outcomes, for the policy
    first: float | None = None
    last: float = 0.0
    prompt_scores: PromptLogprobs | None = None  # the prompt's entries (echo), when asked
    # The request's prompt probes (inference/probe_rows.py), and a finish held back while they
    # are still to be computed.
    probes: PromptProbes | None = attrs.field(
        default=attrs.Factory(
            lambda s: PromptProbes.for_prompt(s.job.request.probes, len(s.prompt)), takes_self=True
        )
    )
    held: str | None = None

    @property
    def request(self) -> GenerationRequest:
        return self.job.request

    def feed_next(self, model: LoadedModel) -> bool:
        """Add the token sampled last step, with logits; False when there is none to feed."""
        self.out = -1
        if self.next_token is None:
            return False
        pos = len(self.prompt) + self.completion - 1
        self.out = model.add(self.next_token, pos, self.seq_id, True)
        self.fed.append(self.next_token)
        self.next_token = None
        return True

    def feed_prompt(self, model: LoadedModel) -> None:
        """Add as much of the prompt still to prefill as the batch has room for; the last
        prompt token gets logits."""
        scores = self._prompt_scores(model)
        left = len(self.prompt) - self.prefilled
        if left == 0 or model.room == 0:
            return
        take = min(left, model.room, left if scores is None else PROMPT_ROWS_PER_STEP)
        probes = None if self.request.reproducible else self.probes  # see feed_probes
        for pos in range(self.prefilled, self.prefilled + take):
            last = pos == len(self.prompt) - 1
            probed = probes is not None and pos in probes.pending  # its row is the probe's
            index = model.add(
                self.prompt[pos], pos, self.seq_id, last or scores is not None or probed
            )
            if scores is not None:
                scores.mark(index, pos, self.prompt)
            if probes is not None and probed:
                probes.mark(pos, index)
        self.prefilled += take
        if self.prefilled == len(self.prompt) or scores is not None:
            self.out = index  # mid-prompt: advance() reads the prompt's logits, samples nothing

    def _prompt_scores(self, model: LoadedModel) -> PromptLogprobs | None:
        """The prompt's entries being collected (echo with logprobs), else None. Every
        position needs its logits, so a prefix reused from the cache is prefilled again."""
        if not self.request.prompt_logprobs:
            return None
        if self.prompt_scores is None:
            self.prompt_scores = PromptLogprobs(self.request.logprobs, model.piece(self.prompt[0]))
            if self.prefilled:
                model.forget(self.seq_id)
                self.prefilled = self.cached = 0
        return self.prompt_scores

    @property
    def due(self) -> bool:
        """Whether `advance` has something to read after this step's decode."""
        return self.out >= 0 or self.held is not None or bool(self.probes and self.probes.rows)

    def feed_probes(self, model: LoadedModel, spares: SpareSeqs) -> bool:
        """Add rows for the prompt probes the prefill did not compute (positions reused from the
        prefix cache) once the whole prompt is in the cache from an earlier step; a
        reproducible request's only once it has finished, so that its own rows stay
        solo-computed (its prefill marks none either). Whether any were added."""
        probes = self.probes
        if probes is None or not probes.pending or self.prefilled < len(self.prompt):
            return False
        if self.request.reproducible and self.held is None:
            return False
        probes.feed(model, self.prompt, self.seq_id, spares)
        return bool(probes.rows)

    def feed_draft(self, model: LoadedModel, budget: int, policy: DraftPolicy | None = None) -> int:
        """Feed the tokens the sequence's repeats predict after its next token, each with
        logits, at most `budget` and in what room the batch has left (see
        inference/speculation.py), and of those only as many as `policy` expects to pay
        (inference/draft_policy.py); how many it fed."""
        assert self.drafter is not None
        done = len(self.prompt) + len(self.fed)  # the next token is in fed already
        if self.completion < len(self.request.replay_tokens):
            return 0  # replayed tokens go one per step, as if sampled
        self.drafter.extend(self.fed[len(self.drafter) - len(self.prompt) :])
        limit = min(self.request.max_tokens - self.completion - 1, model.room, budget)
        self.draft = self.drafter.draft(limit)
        if policy is not None:
            self.draft_stats.settle(self.fed)  # a draft declined earlier: would it have paid?
        if policy is not None and self.draft:
            left = self.request.max_tokens - self.completion
            keep = policy.choose(len(self.draft), self.drafter.evidence, self.draft_stats, left)
            if keep == 0:  # learn from it all the same, as the tokens come
                self.draft_stats.watch(self.draft, len(self.fed))
            del self.draft[keep:]
            self.drafter.shorten(keep)
        self.draft_out = model.n_tokens  # the index the first one gets
        for i, token in enumerate(self.draft):
            model.add(token, done + i, self.seq_id, True)
        self.drafted += len(self.draft)
        return len(self.draft)

    def normalized_rows(self) -> list[int]:
        """The batch indexes whose log-sum-exp `advance` will certainly compute this step, in
        the order it does (probe rows, then its token's row when it asks for logprobs): what
        inference/normalizer_pool.py shares with its helper thread. Draft rows are not
        certain (only kept ones are read), nor a replayed token's or an echo's."""
        rows = [index for _, index in self.probes.rows] if self.probes is not None else []
        request = self.request
        if (
            self.held is None
            and self.out >= 0
            and self.prompt_scores is None
            and request.logprobs >= 0
            and self.completion >= len(request.replay_tokens)
        ):
            rows.append(self.out)
        return rows

    def advance(
        self, model: LoadedModel, now: float, send: Send, norm: Normalizer | None = None
    ) -> str | None:
        """Take this step's tokens: the one its next token predicts, then each draft token
        while it is the token the model chose before it, whose cells and logits are then
        already there. The finish reason when it is done (held back while probes are due).
        `norm` gives a row's log-sum-exp (inference/normalizer_pool.py); by default this
        thread computes it."""
        norm = in_this_thread(model) if norm is None else norm
        if self.probes is not None and self.probes.rows:
            self.probes.read(model, self.prompt, norm)
        if self.held is not None or self.out < 0:  # a step of probe rows only
            return self._unless_probing(self.held)
        if self.prompt_scores is not None and self.prompt_scores.rows:
            self.prompt_scores.read(model, self.prompt)
            if self.prefilled < len(self.prompt):
                return None  # a chunk of the prompt, not yet its end
        finish = self._take(model, self.out, now, send, norm)
        kept = 0
        while finish is None and kept < len(self.draft) and self.next_token == self.draft[kept]:
            self.fed.append(self.draft[kept])
            self.next_token = None
            finish = self._take(model, self.draft_out + kept, now, send, norm)
            kept += 1
        if kept < len(self.draft):  # the rest were wrong or not needed: out of the cache
            model.forget_from(self.seq_id, len(self.prompt) + len(self.fed))
        if self.draft:
            self.draft_stats.observe(kept, wrong=finish is None and kept < len(self.draft))
        self.accepted += kept
        self.draft = []
        return self._unless_probing(finish)

    def _unless_probing(self, finish: str | None) -> str | None:
        """*finish*, or None while probe rows are still due (it is held until they are read)."""
        if finish is not None and self.probes is not None and not self.probes.done:
            self.held = finish
            return None
        return finish

    def _take(
        self, model: LoadedModel, out: int, now: float, send: Send, norm: Normalizer
    ) -> str | None:
        """The token at batch index `out`; the finish reason when the sequence is done."""
        request = self.request
        if self.completion < len(request.replay_tokens):
            token = request.replay_tokens[self.completion]
            self.sampler.advance(model, out, token)
            self.assembler.replay(model.piece(token))
            self.completion += 1
            self.next_token = token
            return None
        token = self.sampler.sample(model, out)
        self.first = now if self.first is None else self.first
        # ignore_eos bans them, but be sure; an exhausted grammar ends the run regardless
        if model.is_eog(token) and (not request.ignore_eos or self.sampler.exhausted):
            return "stop"
        self.completion += 1
        self.last = now
        entry = None
        if request.logprobs >= 0:  # kept draft tokens too: their logits are at `out`
            logits = model.logits(out)
            entry = token_logprob(logits, token, request.logprobs, model.piece, norm(out))
        chunk = self.assembler.add(token, model.piece(token), entry)
        if chunk is not None:
            send(self.job, chunk)
        if self.assembler.stopped:
            return "stop"
        if self.completion == request.max_tokens:
            return "length"
        self.next_token = token
        return None

    def done(self, finish: str) -> GenerationDone:
        scores = self.prompt_scores  # the prompt's entries, when asked (echo)
        first = self.started if self.first is None else self.first
        generated = self.completion - min(self.completion, len(self.request.replay_tokens))
        return GenerationDone(
            finish_reason=finish,
            prompt_tokens=len(self.prompt),
            completion_tokens=self.completion,
            time_to_first_token_s=first - self.started,
            decode_tokens_per_s=per_second(generated - 1, self.last - first),
            token_ids=self.assembler.unreleased,
            cached_prompt_tokens=self.cached,
            draft_tokens=self.drafted,
            accepted_draft_tokens=self.accepted,
            seed=self.sampler.seed,
            prompt_logprobs=tuple(scores.entries) if scores else (),
            prompt_first=scores.first if scores else b"",
            probe_logprobs=self.probes.result() if self.probes else (),
        )


def step_rows(active: list[BatchSequence]) -> list[int]:
    """The step's certain normalizer rows, sequence by sequence in the scheduler's order."""
    return [index for seq in active if seq.due for index in seq.normalized_rows()]
