"""How a cheating node lies (tests only; docs/security.md): what it runs instead of a request,
and what it commits to in the receipt instead of what it computed.

`ServedModel.cheat` (from GPUNET_TEST_CHEAT, read by p2p/cli/node.py) is one of:

- "other-model:PATH": runs another GGUF (p2p/node/models.py loads it); its probes and
  commitments are computed honestly by that model.
- "random-tokens": samples at temperature 10 whatever the request asked; probes honest.
- "drop-prefix": computes only the second half of the prompt's text, as a node saving the
  prefill would. It behaves as a realistic cheater does: it tokenises the whole prompt (cheap;
  inference/vocab_tokens.py) and so knows which positions the probe draws name. A probe in the
  kept part gets the value its truncated context gives at the same token (position p − dropped
  in the kept sequence); one in the dropped part a made-up, plausible value: the mean of its
  computed probes (−3.0 when it has none).
- "lying-logprobs": commits to random log-probabilities, for the output tokens and the probes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from inference.generation import GenerationRequest
from inference.prompt_probes import DRAW_SPAN, probe_positions
from inference.vocab_tokens import count_tokens

MADE_UP_PROBE = -3.0  # nats: a drop-prefix cheat's guess when it computed no probe at all


@attrs.frozen
class DroppedPrefix:
    """drop-prefix's bookkeeping for one request: the token counts of the whole prompt and of
    the part it kept (both with their BOS), and the draws the honest request carried."""

    full: int
    kept: int
    draws: tuple[int, ...]

    @property
    def dropped(self) -> int:
        return max(0, self.full - self.kept)

    def kept_positions(self) -> list[int | None]:
        """Per draw, the position in the kept prompt of the one it names (None: dropped)."""
        return [
            p - self.dropped if p >= self.dropped else None
            for p in probe_positions(self.draws, self.full)
        ]

    def worker_draws(self) -> tuple[int, ...]:
        """Draws naming, in the kept prompt, the kept positions (the smallest draw that does)."""
        if self.kept < 2:
            return ()
        span = self.kept - 1
        return tuple(
            min(-(-q * DRAW_SPAN // span), DRAW_SPAN - 1)
            for q in self.kept_positions()
            if q is not None and q < span
        )

    def commit(self, computed: Sequence[float]) -> tuple[float, ...]:
        """Per draw: the kept probes' computed values, made-up ones for the others."""
        if not probe_positions(self.draws, self.full):
            return ()
        values = iter(computed)
        guess = sum(computed) / len(computed) if computed else MADE_UP_PROBE
        span = self.kept - 1
        out = []
        for q in self.kept_positions():
            real = q is not None and q < span and self.kept >= 2
            out.append(next(values, guess) if real else guess)
        return tuple(out)


def cheat_request(
    request: GenerationRequest, cheat: str, model_path: str = ""
) -> tuple[GenerationRequest, DroppedPrefix | None]:
    """What a cheating node really runs for *request*, and drop-prefix's bookkeeping (needs
    *model_path* to count tokens)."""
    if cheat == "random-tokens":
        evolved = attrs.evolve(request, temperature=10.0, top_k=0, top_p=1.0, min_p=0.0, seed=None)
        return evolved, None
    if cheat == "drop-prefix":
        kept_text = request.prompt[len(request.prompt) // 2 :]
        if not request.probes:
            return attrs.evolve(request, prompt=kept_text), None
        plan = DroppedPrefix(
            count_tokens(model_path, request.prompt),
            count_tokens(model_path, kept_text),
            request.probes,
        )
        evolved = attrs.evolve(request, prompt=kept_text, probes=plan.worker_draws())
        return evolved, plan
    return request, None


def commitments(entries: list[float | None], cheat: str) -> list[float | None]:
    """What the receipt commits to for the output tokens: the worker's values, or made-up ones."""
    if cheat == "lying-logprobs":
        return [-random.uniform(0.0, 5.0) for _ in entries]
    return entries


def probe_commitments(
    computed: Sequence[float], cheat: str, plan: DroppedPrefix | None
) -> tuple[float, ...]:
    """What the receipt commits to for the prompt probes."""
    if plan is not None:
        return plan.commit(computed)
    if cheat == "lying-logprobs":
        return tuple(-random.uniform(0.0, 5.0) for _ in computed)
    return tuple(computed)
