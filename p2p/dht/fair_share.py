"""Sharing a byte budget fairly between groups: deficit round robin (Shreedhar & Varghese, 1995).

A `find_value` answer holds as many records as fit one datagram's budget. Filled "latest expiry
first" (as before issue #14) it went to whoever chose the longest lifetime and the largest
records: seven strangers with 7 KiB, 1-hour records filled it, and no honest provider was listed.
Here each group (a source network) gets the same byte credit per round, so a network of
maximum-size records waits several rounds for one record while a network of small honest records
sends one every round or two, and no network's share of the answer depends on what it claims.
Within a group, items go in the order given (the store orders signers oldest-seen first).

Pure and deterministic: the same store gives the same answer, so tests can state it exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# The credit each group gets per round: about one honest record (a node with one model and a GPU
# publishes ~600-1200 bytes). Smaller rounds cost more loop turns for the same fairness.
QUANTUM_BYTES = 1024


def fair_pick(
    groups: Sequence[Sequence[T]],
    size: Callable[[T], int],
    budget: int,
    *,
    quantum: int = QUANTUM_BYTES,
) -> list[T]:
    """Items taken from *groups* by deficit round robin until nothing more fits *budget*.

    An item larger than what is left of the budget is skipped (a smaller one behind it may still
    fit). Ends: every round either takes or skips an item, or raises every waiting group's credit
    towards the size of its head, which is at most the budget."""
    if quantum < 1:
        raise ValueError("quantum must be at least 1 byte")
    queues = [deque(g) for g in groups if g]
    credit = [0] * len(queues)
    out: list[T] = []
    left = budget
    while queues:
        still: list[deque[T]] = []
        still_credit: list[int] = []
        for queue, have in zip(queues, credit, strict=True):
            have += quantum
            while queue:
                need = size(queue[0])
                if need > left:
                    queue.popleft()
                elif need <= have:
                    out.append(queue.popleft())
                    have -= need
                    left -= need
                else:
                    break
            if queue:
                still.append(queue)
                still_credit.append(have)
        queues, credit = still, still_credit
    return out
