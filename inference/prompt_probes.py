"""Prompt probes: a node's proof that it computed the whole prompt (issue #16).

A node that drops the first part of a long prompt saves its prefill, and for many prompts its
answer hardly changes: the output's own statistics (inference/verification.py) then see little.
So every generate request carries a few random *draws* (the client's, fresh per request), each
naming a prompt position; the node returns, in its signed receipt, its log-probability of the
prompt token after each named position given every prompt token up to it (the logits of that
position's row, as OpenAI's echo computes them). A verifier's prefill of the prompt gives the
same numbers up to honest noise; a node that skipped the part before a position, or made the
value up, gives another one.

The client does not have the model, so it cannot count the prompt's tokens: a draw is a number
in [0, 2**32), and names position floor(draw × (n − 1) / 2**32) of the n-token prompt as the
model tokenises it (the rendered chat for a chat), a position from 0 to n − 2 (the last one's
logits choose the first generated token, which the output commitments cover already). The node
and the verifier tokenise with the same file, so they name the same positions.

This module is the contract both sides share: the bounds and the mapping. The node computes the
values in its batching worker; the verifier in its scoring prefill; the statistic is in
inference/probe_stat.py.
"""

from __future__ import annotations

from collections.abc import Sequence

# Draws per request: a node dropping half of a prompt meets one in the dropped half with
# probability 1 - 2**-16, and the sum over 16 probes caught it on every first check measured
# (8 probes: 47 of 48; tools/bench_probes.py). Cost: 16 more rows with logits in the prefill,
# or, for a prompt from the prefix cache, one decode step of 16 rows per request.
DEFAULT_PROBES = 16
MAX_PROBES = 16
DRAW_SPAN = 1 << 32  # a draw is in [0, DRAW_SPAN)


def check_draws(draws: Sequence[int]) -> None:
    """ValueError unless *draws* are at most MAX_PROBES integers in [0, DRAW_SPAN)."""
    if len(draws) > MAX_PROBES:
        raise ValueError(f"probes: at most {MAX_PROBES} draws, got {len(draws)}")
    for d in draws:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < DRAW_SPAN:
            raise ValueError(f"probes: each draw is a whole number from 0 to {DRAW_SPAN - 1}")


def probe_positions(draws: Sequence[int], n_prompt: int) -> tuple[int, ...]:
    """The prompt positions *draws* name in a prompt of *n_prompt* tokens, in the draws' order
    (two draws may name one position); none for a prompt under two tokens. The value at
    position p is the log-probability of prompt token p + 1 on the logits of position p."""
    if n_prompt < 2:
        return ()
    return tuple((d * (n_prompt - 1)) >> 32 for d in draws)
