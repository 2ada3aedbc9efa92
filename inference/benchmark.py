"""Self-benchmark: prefill and decode tokens/s of a loaded model, in a few seconds.

The capability record publishes both (`prefill_tok_s`, `decode_tok_s`) so clients can rank
providers by measured speed instead of by GPU names. The workers run this in their own thread on
the context they serve with (`await worker.measure_throughput()`), before taking requests: no
second copy of the model, and the figures are those of the real configuration (threads,
offloaded layers, flash attention).

What is measured, on sequence 0 of the context:
- prefill: one batch of up to `prompt_tokens` ordinary text tokens (capped by the batch and the
  context), after a 16-token warm-up that both keeps first-use allocations out of the figure and
  sizes the batch so that the prefill takes about a third of `budget_s` on a slow machine;
- decode: greedy single-stream decoding, one token per step, as a lone request sees it — what
  the record calls decode_tok_s. (A BatchingWorker serves more in aggregate under load.)
The sequence is cleared afterwards.
"""

from __future__ import annotations

import time

import attrs

from inference.llama_lowlevel import LoadedModel

# Plain English, tokenized and repeated to the wanted length: ordinary tokens, not one token
# repeated (which some backends could shortcut) and not special tokens.
_TEXT = (
    "The network spreads inference across machines that volunteers lend. Each node measures "
    "how fast it reads a prompt and how fast it writes tokens, and publishes both figures, so "
    "that a client can choose the provider that will answer soonest. "
)


_WARM_UP_TOKENS = 16


@attrs.frozen
class Throughput:
    prefill_tok_s: float
    decode_tok_s: float
    prompt_tokens: int  # how many tokens the prefill figure is over
    decode_tokens: int  # how many the decode figure is over
    seconds: float  # wall time of the whole measurement


def measure_throughput(
    model: LoadedModel,
    *,
    prompt_tokens: int = 256,
    decode_tokens: int = 32,
    budget_s: float = 3.0,
    seq_id: int = 0,
) -> Throughput:
    """Measure on `model` (from its owning thread). Decoding stops early at `budget_s`."""
    started = time.perf_counter()
    text = model.tokenize(_TEXT)
    n_prompt = max(1, min(prompt_tokens, model.n_batch, model.n_ctx - decode_tokens - 2))
    prompt = (text * (n_prompt // max(len(text), 1) + 1))[:n_prompt]

    def run_batch() -> None:
        status = model.decode()
        if status != 0:
            model.forget(seq_id)
            raise RuntimeError(f"llama_decode failed during the self-benchmark ({status})")

    model.forget(seq_id)
    model.clear_batch()
    warm = prompt[:_WARM_UP_TOKENS]
    for pos, token in enumerate(warm):
        model.add(token, pos, seq_id, pos == len(warm) - 1)
    t0 = time.perf_counter()
    run_batch()
    rate = len(warm) / max(time.perf_counter() - t0, 1e-9)
    model.forget(seq_id)
    n_prompt = max(len(warm), min(n_prompt, int(rate * budget_s / 3)))
    prompt = prompt[:n_prompt]

    model.clear_batch()
    for pos, token in enumerate(prompt):
        last = model.add(token, pos, seq_id, pos == n_prompt - 1)
    t0 = time.perf_counter()
    run_batch()
    token = model.argmax(last)
    prefill_s = time.perf_counter() - t0

    decoded = 0
    t0 = time.perf_counter()
    deadline = started + budget_s
    while decoded < decode_tokens and (decoded < 2 or time.perf_counter() < deadline):
        model.clear_batch()
        model.add(token, n_prompt + decoded, seq_id, True)
        run_batch()
        token = model.argmax(0)
        decoded += 1
    decode_s = time.perf_counter() - t0
    model.forget(seq_id)
    model.clear_batch()
    return Throughput(
        prefill_tok_s=n_prompt / prefill_s if prefill_s > 0 else 0.0,
        decode_tok_s=decoded / decode_s if decode_s > 0 else 0.0,
        prompt_tokens=n_prompt,
        decode_tokens=decoded,
        seconds=time.perf_counter() - started,
    )
