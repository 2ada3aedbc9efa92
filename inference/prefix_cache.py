"""BatchingWorker's prompt-prefix cache: which tokens each free slot's KV cells still hold.

A finished sequence's cells stay in its slot (the unified pool holds n_ctx cells per slot
anyway). A new request reuses the longest prefix of its prompt that is in the pool, cached in a
free slot or prefilled by a sequence in the batch, and prefills only the rest: at least the
prompt's last token, whose logits it needs. Its slot shares the prefix's cells (the unified pool
tags a cell with several sequences; `llama_memory_seq_cp` copies nothing), and it runs in a slot
that caches nothing while there is one, so the cache outlives it. A repeated system prompt or a
conversation's next turn thus skips most of its prefill, as llama-server's and
llama_cpp.server's caches do, and concurrent requests with one prompt prefix compute it once.

The cache keeps one copy of each token run: a free slot whose tokens begin a newly finished
sequence's lets go of them. That matters because idle cells are not free: every token decoded
later attends over the pool up to its highest used cell (7 idle slots of 140 cells made a lone
sequence's steps 3 % slower on 2 cores). The reused cells were computed in another batch shape,
so this is "greedy up to noise" like batching; a `reproducible` request never reuses (the whole
cache is cleared) and the self-benchmark drops the cache first.

Each slot holds at most n_ctx cells, so the pool of n_ctx × slots never runs out however the
cache is used. Scheduler thread only, except `cached_tokens` (read by `load` from any thread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from inference.llama_lowlevel import LoadedModel


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Free slots' cached tokens, and the choice of a slot for a new prompt."""

    def __init__(self) -> None:
        self._tokens: dict[int, list[int]] = {}
        self.cached_tokens = 0  # their total

    def pick_slot(
        self,
        model: LoadedModel,
        free: list[int],
        prompt: list[int],
        prefilled: Iterable[tuple[int, list[int]]],
        *,
        reuse_allowed: bool,
    ) -> tuple[int, int]:
        """A free slot for `prompt`, and how many of its first tokens are already in the KV
        cache: at most all but the last, which must be evaluated for its logits.

        The longest common prefix in the pool is reused, whether a free slot caches it or a
        sequence in the batch has prefilled it (*prefilled*: (slot, tokens in its cells)): the
        request's slot shares those cells (nothing is copied). It runs in a slot that caches
        nothing while there is one, so the caches stay for later requests; else in the slot
        holding its prefix, else in the lowest. Without *reuse_allowed* (the cache turned off,
        or a reproducible request, which must be prefilled exactly as a solo run is: a reused
        prefix was computed in another batch shape, close but not bitwise) nothing is reused."""
        reuse, source = self.longest_prefix(free, prompt, prefilled) if reuse_allowed else (0, -1)
        reuse = min(reuse, len(prompt) - 1)
        empty = [s for s in free if s not in self._tokens]  # descending, as free is
        best = empty[-1] if empty else source if source in free else free[-1]
        free.remove(best)
        cached = self._tokens.pop(best, None)
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

    def longest_prefix(
        self, free: list[int], prompt: list[int], prefilled: Iterable[tuple[int, list[int]]]
    ) -> tuple[int, int]:
        """(length, slot) of the longest prefix of `prompt` in the pool: cached in a free slot
        or prefilled by a sequence in the batch; (0, -1) when none."""
        reuse, source = 0, -1
        for slot in reversed(free):
            n = common_prefix(self._tokens.get(slot, ()), prompt)
            if n > reuse:
                reuse, source = n, slot
        for slot, tokens in prefilled:
            n = common_prefix(tokens, prompt)
            if n > reuse:
                reuse, source = n, slot
        return reuse, source

    def take_slot(self, model: LoadedModel, free: list[int]) -> int:
        """A free slot emptied for work outside the batch (scoring), taken out of `free`: one
        that caches nothing while there is one, else the lowest, whose cache is dropped. The
        caller empties it again before handing it back."""
        empty = [s for s in free if s not in self._tokens]  # descending, as free is
        slot = empty[-1] if empty else free[-1]
        free.remove(slot)
        if self._tokens.pop(slot, None) is not None:
            model.forget(slot)
            self._recount()
        return slot

    def keep(self, model: LoadedModel, slot: int, tokens: list[int]) -> None:
        """Cache a finished sequence's tokens in its slot, keeping one copy of each: a free
        slot whose tokens begin the new ones holds nothing the new ones lack, so it lets go (and
        the other way round)."""
        for other, cached in list(self._tokens.items()):
            common = common_prefix(cached, tokens)
            if common == len(cached):
                del self._tokens[other]
                model.forget(other)
            elif common == len(tokens):
                model.forget(slot)
                break
        else:
            self._tokens[slot] = tokens
        self._recount()

    def drop(self, model: LoadedModel) -> None:
        """Let go of every cached slot's cells."""
        for slot in self._tokens:
            model.forget(slot)
        self.forget()

    def forget(self) -> None:
        """Forget the bookkeeping only (the caller cleared the whole pool)."""
        self._tokens.clear()
        self._recount()

    def _recount(self) -> None:
        self.cached_tokens = sum(len(tokens) for tokens in self._tokens.values())
