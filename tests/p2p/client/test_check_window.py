"""A spot check's positions (p2p/client/check_window.py): always its number of the node's own
positions, the first ones among them, the feed cut after the last; no position of an answer,
its last ones included, less likely to be checked than the window's share; and the Score a
spot check sends carries the tokens up to the last checked one only."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from p2p.client.check_window import FIRST_POSITIONS, WINDOW_SPAN, check_positions
from p2p.client.segments import Segment
from p2p.client.spot_check import CHECK_POSITIONS, score_request
from p2p.protocol import wire


@pytest.mark.parametrize(("start", "end"), [(0, 33), (0, 128), (5, 300), (0, 4096)])
def test_every_check_scores_its_number_of_positions(start: int, end: int) -> None:
    rng = random.Random(1)
    for _ in range(300):
        only, feed_end = check_positions(start, end, CHECK_POSITIONS, rng)
        assert len(only) == CHECK_POSITIONS and list(only) == sorted(set(only))
        assert only[:FIRST_POSITIONS] == tuple(range(start, start + FIRST_POSITIONS))
        assert start <= only[0] and only[-1] < end and feed_end == only[-1] + 1
        window = only[FIRST_POSITIONS:]
        assert window[-1] - window[0] < WINDOW_SPAN


def test_a_short_answer_is_checked_whole() -> None:
    assert check_positions(3, 3 + CHECK_POSITIONS, CHECK_POSITIONS) == (
        tuple(range(3, 3 + CHECK_POSITIONS)),
        3 + CHECK_POSITIONS,
    )
    with pytest.raises(ValueError):
        check_positions(0, 100, 0)


def test_no_part_of_an_answer_is_checked_less_often() -> None:
    """The window's start is clamped, never cut: the last positions are checked at least as
    often as the middle ones, which is the window's share of the answer."""
    rng = random.Random(7)
    n, draws = 128, 20_000
    seen: Counter[int] = Counter()
    ends = []
    for _ in range(draws):
        only, feed_end = check_positions(0, n, CHECK_POSITIONS, rng)
        seen.update(only)
        ends.append(feed_end)
    rest = CHECK_POSITIONS - FIRST_POSITIONS
    least = rest / (n - FIRST_POSITIONS + WINDOW_SPAN - 1)  # per position, in the window's share
    rates = [seen[p] / draws for p in range(FIRST_POSITIONS, n)]
    assert min(rates) > 0.9 * least
    assert min(rates[-8:]) > 0.9 * least and min(rates[:8]) > 0.9 * least
    assert all(seen[p] == draws for p in range(FIRST_POSITIONS))
    # and the feed stops well before the end on average (the check's saving)
    assert 0.5 * n < sum(ends) / draws < 0.8 * n


def test_the_score_carries_the_tokens_up_to_the_last_checked_one() -> None:
    request = wire.Generate(0, "0" * 64, "hello", 200, replay_tokens=tuple(range(100, 120)))
    segment = Segment("p" * 52, "0" * 64, request, tuple(range(120, 300)), None)
    output = segment.output
    rng = random.Random(3)
    for _ in range(50):
        score = score_request(segment, CHECK_POSITIONS, rng)
        assert score.only[0] == 20 and len(score.only) == CHECK_POSITIONS  # its own tokens
        assert tuple(score.tokens) == output[: score.only[-1] + 1]
    assert tuple(score_request(segment).tokens) == output  # a full check feeds it all
