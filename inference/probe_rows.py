"""Prompt probes in BatchingWorker: the row of each probed position, with its logits.

A request's probes (inference/prompt_probes.py) ask for the log-probability of prompt token
p + 1 given prompt[0..p], at a few positions p the client's draws name. Where the request's
own prefill computes position p, that row simply gets logits on (`PromptProbes.mark`: the
output head for one row more, the cheapest way). Positions reused from the prefix cache (or
from a sibling's prefill) were never computed in this request, so once the whole prompt is in
the KV cache each of them gets one row of its own (`PromptProbes.feed`):

- a *spare* sequence id (the context has `SPARE_SEQS` ids beyond the slots,
  inference/llama_lowlevel.py `LoadedModel.load(n_spare=...)`) is tagged onto the sequence's
  cells of positions [0, p) — in the unified KV pool that tags cells, it copies nothing;
- one row, token prompt[p] at position p on the spare id, with logits: it attends to exactly
  [0, p) and itself, as a prefill's row p does;
- after the decode the spare id's cells are removed (the probe row's own cell is freed, the
  shared ones only lose the tag) and the id goes back to the pool.

Those rows ride in the sequence's next regular decode step (its second token's), so they add
rows to a step, never a step, and nothing to the time to first token. A request that finishes
on its first token holds its finish for one more step that carries only its probe rows.
A reproducible request marks no prefill row and feeds its probe rows only in that last step,
so that its own rows are computed exactly as in a solo run without probes.

Cells: each probe row takes one KV cell for the length of one decode. The pool has
`SPARE_SEQS` cells more than the slots' n_ctx × slots (the slots alone can never fill more),
and at most `SPARE_SEQS` probe rows are in flight at once (one per spare id), so a probe row
always finds a cell. When the spare ids are all lent (several requests starting in one step),
the others wait for the next step; so do they when the batch has no room left.

Values are exactly `token_logprob`'s: logits[t] − log_normalizer(logits), natural log, raw
softmax over the whole vocabulary (no sampler filters); the log-sum-exp may be computed by
the worker's helper thread (inference/normalizer_pool.py: the same value, or within 1e-12
relative for a row split in parts). Scheduler thread only.
"""

from __future__ import annotations

import attrs

from inference.llama_lowlevel import LoadedModel
from inference.normalizer_pool import Normalizer
from inference.prompt_probes import MAX_PROBES, probe_positions
from inference.token_logprobs import token_logprob

# Sequence ids lent to probe rows: one request's probes (at most MAX_PROBES distinct
# positions) fit in one step; more requests starting together take a step each.
SPARE_SEQS = MAX_PROBES


class SpareSeqs:
    """The context's sequence ids beyond the slots, lent to probe rows for one decode step."""

    def __init__(self, first: int, count: int = SPARE_SEQS) -> None:
        self._free = list(range(first + count - 1, first - 1, -1))
        self._lent: list[int] = []

    def take(self) -> int | None:
        """A spare id for one row of this step, or None when all are lent."""
        if not self._free:
            return None
        seq = self._free.pop()
        self._lent.append(seq)
        return seq

    def release(self, model: LoadedModel) -> None:
        """After the step's decode (or its failure): every lent id's cells out, ids back."""
        for seq in self._lent:
            model.forget(seq)
        self._free.extend(self._lent)
        self._free.sort(reverse=True)
        self._lent = []

    @property
    def available(self) -> int:
        return len(self._free)


@attrs.define(eq=False)
class PromptProbes:
    """One request's probes: the position each draw names, and the values found so far."""

    positions: tuple[int, ...]  # per draw, in order (two draws may name one position)
    pending: list[int]  # distinct positions not yet fed, in increasing order
    values: dict[int, float] = attrs.field(factory=dict)
    rows: list[tuple[int, int]] = attrs.field(factory=list)  # (position, batch index) this step

    @classmethod
    def for_prompt(cls, draws: tuple[int, ...], n_prompt: int) -> PromptProbes | None:
        """None when there is nothing to compute (no draws, or a prompt under two tokens)."""
        positions = probe_positions(draws, n_prompt)
        if not positions:
            return None
        return cls(positions, sorted(set(positions)))

    @property
    def done(self) -> bool:
        return not self.pending and not self.rows

    def feed(self, model: LoadedModel, prompt: list[int], seq_id: int, spares: SpareSeqs) -> None:
        """Add a row for each pending position while a spare id and batch room last; the
        sequence's whole prompt must already be in the KV cache (cells [0, len(prompt)))."""
        while self.pending and model.room > 0:
            spare = spares.take()
            if spare is None:
                return
            pos = self.pending.pop(0)
            if pos:
                model.share(seq_id, spare, pos)
            self.rows.append((pos, model.add(prompt[pos], pos, spare, True)))

    def mark(self, pos: int, index: int) -> None:
        """The prefill's own row of *pos* has logits at batch *index*: it is the probe's row."""
        self.pending.remove(pos)
        self.rows.append((pos, index))

    def read(self, model: LoadedModel, prompt: list[int], norm: Normalizer | None = None) -> None:
        """After the decode: the value of each row fed this step. `norm` gives a row's
        log-sum-exp (inference/normalizer_pool.py shares them with a helper thread)."""
        for pos, index in self.rows:
            logits = model.logits(index)
            given = None if norm is None else norm(index)
            entry = token_logprob(logits, prompt[pos + 1], 0, model.piece, given)
            self.values[pos] = entry.logprob
        self.rows = []

    def result(self) -> tuple[float, ...]:
        """Per draw, in order; () until every position is computed."""
        if not self.done:
            return ()
        return tuple(self.values[p] for p in self.positions)
