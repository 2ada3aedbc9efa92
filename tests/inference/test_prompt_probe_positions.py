"""Prompt probes' contract: the positions draws name, their bounds, and the wire field."""

from __future__ import annotations

import pytest

from inference.generation import GenerationRequest
from inference.prompt_probes import DRAW_SPAN, MAX_PROBES, check_draws, probe_positions
from p2p.protocol import wire


def test_draws_name_every_position_but_the_last_evenly() -> None:
    n = 10
    assert probe_positions([0, DRAW_SPAN - 1], n) == (0, n - 2)
    # Draws spread evenly over the span name each of the n - 1 positions equally often.
    step = DRAW_SPAN // 900
    counts = [0] * (n - 1)
    for p in probe_positions(range(0, DRAW_SPAN, step), n):
        counts[p] += 1
    assert max(counts) - min(counts) <= 1
    assert probe_positions([5, 6], 1) == () and probe_positions([5], 0) == ()
    assert probe_positions([DRAW_SPAN // 2], 2) == (0,)


@pytest.mark.parametrize("draws", [[-1], [DRAW_SPAN], [1.5], [True], [0] * (MAX_PROBES + 1)])
def test_bad_draws_are_refused(draws: list[object]) -> None:
    with pytest.raises(ValueError, match="probes"):
        check_draws(draws)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probes"):
        GenerationRequest(prompt="hi", probes=draws)  # type: ignore[arg-type]


def test_probes_cross_the_wire_and_bad_ones_are_malformed() -> None:
    msg = wire.Generate(id=3, model="m", prompt="hello", probes=(0, 7, DRAW_SPAN - 1))
    assert wire.decode(wire.encode(msg)) == msg
    bad = wire.encode(wire.Generate(id=4, model="m", prompt="hello", probes=(DRAW_SPAN,)))
    with pytest.raises(wire.InvalidMessage) as caught:
        wire.decode(bad)
    assert caught.value.field == "probes" and caught.value.request_id == 4
