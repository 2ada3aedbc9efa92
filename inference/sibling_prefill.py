"""Same-prompt requests that arrive together prefill once: a newcomer waits for its sibling.

The prefix cache (inference/prefix_cache.py) lets a new request share cells that a sequence in
the batch has already prefilled, but not cells still to come: requests admitted in the same step
(an OpenAI request with `n` > 1 arrives as n identical requests, p2p/api/choices.py) would each
prefill the whole prompt beside the others, n times the work in the same steps. So a newcomer
whose prompt shares a long prefix with a sequence still prefilling waits in line until that
prefill has covered the shared part, then joins and shares those cells (`llama_memory_seq_cp`
tags the cells with both sequences; nothing is copied), prefilling only its last prompt token.
It costs the newcomer about one decode step more than the sibling's time to first token, and
saves (n - 1) prefills: for n = 4, one prefill instead of four.

The wait is bounded: the sibling's prefill advances every step (a prompt chunk gets the batch's
room before drafts do), and a sibling that leaves (done, cancelled, failed) ends the wait. A
short shared prefix (a BOS token, a chat template's first line) is not worth a step:
`MIN_SHARED_TOKENS`. Requests behind a waiting one wait too (admission stays first come, first
served). Scheduler thread only.
"""

from __future__ import annotations

from collections.abc import Sequence

from inference.batch_sequence import BatchSequence
from inference.llama_lowlevel import LoadedModel
from inference.prefix_cache import PrefixCache, common_prefix
from inference.worker_thread import Job

# Fewer prompt tokens than this to gain are prefilled at once rather than waited for: on the
# default model (2 cores, prefill ~500 tok/s, docs/benchmarks.md) 16 tokens take ~30 ms, about
# what the step the newcomer would wait costs (16 ms for one sequence, 38 ms for four).
MIN_SHARED_TOKENS = 16


def waits_for_sibling(
    model: LoadedModel,
    cache: PrefixCache,
    free: list[int],
    job: Job,
    active: Sequence[BatchSequence],
) -> bool:
    """Whether a newcomer should wait a step for a sequence of *active* that is still
    prefilling a prefix of its prompt: True when waiting would let it share at least
    `MIN_SHARED_TOKENS` more prompt tokens than the pool holds now. Never for a reproducible
    request, nor one that wants its prompt's log-probabilities (each reuses nothing: it needs
    every prompt position's logits); the caller checks that the prefix cache is on."""
    request = job.request
    prefilling = [s for s in active if s.prefilled < len(s.prompt)]
    if not prefilling or request.reproducible or request.prompt_logprobs:
        return False  # the common case costs no tokenization
    prompt = model.tokenize(request.prompt)
    usable = len(prompt) - 1  # the last prompt token is always evaluated, for its logits
    coming = max(min(common_prefix(s.prompt, prompt), usable) for s in prefilling)
    if coming < MIN_SHARED_TOKENS:
        return False
    in_cells = ((s.seq_id, s.prompt[: s.prefilled]) for s in active)
    now, _ = cache.longest_prefix(free, prompt, in_cells)
    return coming - min(now, usable) >= MIN_SHARED_TOKENS
