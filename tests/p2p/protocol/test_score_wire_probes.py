"""`Scores.probe_logprobs` on the wire: built from a ScoreResult (clamped), round-trips, absent in
an older verifier's answer (empty), and bounded: at most MAX_PROBES finite log-probabilities from
MIN_LOGPROB to 0, anything else `Malformed` for that request."""

from __future__ import annotations

import math

import msgpack
import pytest

from inference.prompt_probes import MAX_PROBES
from inference.scoring import PositionScore, ScoreResult
from p2p.protocol import score_wire, wire

POSITION = PositionScore(token=3, logprob=-0.5, rank=0, margin=0.0, choice_margin=0.0)


def _scores(probes: tuple[float, ...]) -> score_wire.Scores:
    return score_wire.scores_message(7, ScoreResult(12, (POSITION,), 0.5, probes))


def _body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = msgpack.unpackb(wire.encode(_scores((-1.0,))), raw=False)
    body.update(changes)
    return body


def test_probe_values_round_trip_and_are_clamped() -> None:
    msg = _scores((-0.25, -7.5, 0.0, -2e6, math.nan))
    assert msg.probe_logprobs == (-0.25, -7.5, 0.0, score_wire.MIN_LOGPROB, score_wire.MIN_LOGPROB)
    again = wire.decode(wire.encode(msg))
    assert isinstance(again, score_wire.Scores) and again.probe_logprobs == msg.probe_logprobs


def test_an_older_verifiers_answer_has_none() -> None:
    body = _body()
    del body["probe_logprobs"]
    received = wire.decode_received(msgpack.packb(body, use_bin_type=True))
    assert isinstance(received, score_wire.Scores) and received.probe_logprobs == ()


@pytest.mark.parametrize(
    "values",
    [[-1.0] * (MAX_PROBES + 1), [0.5], [float("nan")], [float("-inf")], ["x"], [True], "ab"],
)
def test_bad_probe_values_are_malformed(values: object) -> None:
    body = _body(probe_logprobs=values)
    received = wire.decode_received(msgpack.packb(body, use_bin_type=True))
    assert isinstance(received, wire.Malformed)
    assert received.field == "probe_logprobs" and received.id == body["id"]
