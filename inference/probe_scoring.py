"""The verifier's prompt-probe values: read from the rows of its own scoring prefill.

A spot check's Score carries the checked request, draws included (inference/prompt_probes.py).
The verifier's prefill (inference/scoring.py `score_tokens`) feeds every prompt token anyway,
so the probe positions only need their rows marked for logits: a few more output rows in a
decode that computes SCORE_CHUNK of them, no extra decode. `ProbeRows` says which positions to
mark and turns each marked row's logits into the value the node committed to: the
log-probability of the next prompt token, `logits[t] - log_normalizer(logits)`, the raw
log-softmax over the whole vocabulary in natural log (inference/token_logprobs.py computes
generated tokens' entries the same way).

Pure numpy over logits handed in; the caller owns the model, the batch and the decodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from inference.prompt_probes import probe_positions
from inference.token_logprobs import log_normalizer


class ProbeRows:
    """The probe positions of one prompt, and their values as the prefill's rows arrive."""

    def __init__(self, draws: Sequence[int], prompt: Sequence[int]) -> None:
        self._prompt = prompt
        self.positions = probe_positions(draws, len(prompt))
        self._wanted = frozenset(self.positions)
        self._values: dict[int, float] = {}

    def wants(self, position: int) -> bool:
        """Whether the row of prompt position *position* needs logits for a probe."""
        return position in self._wanted

    def read(self, position: int, logits: np.ndarray[Any, Any]) -> None:
        """Take the value at *position* from that row's logits (a view: read now, not later)."""
        token = self._prompt[position + 1]
        self._values[position] = float(logits[token]) - log_normalizer(logits)

    def values(self) -> tuple[float, ...]:
        """Per draw, in the draws' order, the value at the position it names; NaN for a position
        whose row was not read (a caller's bug, and NaN never passes as consistent)."""
        return tuple(self._values.get(p, math.nan) for p in self.positions)
