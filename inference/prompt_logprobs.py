"""The prompt's own log-probabilities, for OpenAI's `echo` with `logprobs` (lm-eval's way of
scoring text): each prompt token's entry on the logits of the positions before it, the first
token having none (as OpenAI's null).

BatchingWorker collects them during the sequence's own prefill (inference/batch_sequence.py):
an asking sequence feeds its prompt in chunks of at most PROMPT_ROWS_PER_STEP positions, each
with logits, and reads them after the step's decode, so no second pass runs and the logits
buffer stays bounded however long the prompt (a 262K vocabulary x 512 positions would be
0.5 GB). ModelWorker, which prefills alone, runs `score_prompt` before generating.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from inference.generation import GenerationError, PromptTooLong
from inference.llama_lowlevel import LoadedModel
from inference.token_logprobs import MAX_PROMPT_LOGPROB_TOKENS, TokenLogprob, token_logprob

# Prompt positions with logits in one decode: as scoring's SCORE_CHUNK, 64 rows of Gemma's
# 262K-token vocabulary are 64 MiB of float32 logits, however long the prompt.
PROMPT_ROWS_PER_STEP = 64


@attrs.define
class PromptLogprobs:
    """The entries of a prompt's tokens, collected as its prefill goes: the logits at position
    p give the entry of token p + 1; the first token has none (`first` is its text)."""

    n_top: int
    first: bytes = b""
    entries: list[TokenLogprob] = attrs.field(factory=list)
    rows: list[tuple[int, int]] = attrs.field(factory=list)  # (batch index, position) to read

    def mark(self, index: int, pos: int, prompt: Sequence[int]) -> None:
        if pos < len(prompt) - 1:  # the last one's logits pick the first generated token
            self.rows.append((index, pos))

    def read(self, model: LoadedModel, prompt: Sequence[int]) -> None:
        """After the decode: the marked rows' entries."""
        for index, pos in self.rows:
            self.entries.append(
                token_logprob(model.logits(index), prompt[pos + 1], self.n_top, model.piece)
            )
        self.rows.clear()


def check_prompt_logprobs(n_prompt: int) -> None:
    if n_prompt > MAX_PROMPT_LOGPROB_TOKENS:
        raise PromptTooLong(
            f"the prompt is {n_prompt} tokens; its log-probabilities (echo) are given for "
            f"prompts of at most {MAX_PROMPT_LOGPROB_TOKENS}"
        )


def score_prompt(
    model: LoadedModel, seq_id: int, prompt: Sequence[int], n_top: int
) -> PromptLogprobs:
    """The prompt's entries on `seq_id` (which must hold no cells; the caller empties it
    afterwards), in decodes of at most PROMPT_ROWS_PER_STEP positions: ModelWorker's way."""
    scores = PromptLogprobs(n_top, model.piece(prompt[0]))
    fed = 0
    while fed < len(prompt) - 1:
        model.clear_batch()
        while fed < len(prompt) - 1 and model.room > 0 and len(scores.rows) < PROMPT_ROWS_PER_STEP:
            scores.mark(model.add(prompt[fed], fed, seq_id, True), fed, prompt)
            fed += 1
        status = model.decode()
        if status != 0:
            raise GenerationError(f"llama_decode failed with status {status}")
        scores.read(model, prompt)
    return scores
