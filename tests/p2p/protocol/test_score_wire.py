"""The Score request and its Scores answer on the wire, the receipt in Done: round trips, bounds,
and hostile input answered as `Malformed` for that request, never a crash."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.scoring import PositionScore, ScoreResult
from p2p.protocol import score_wire, wire

REQUEST = wire.Generate(0, "m", "a prompt", 16, 0.7, 0.9, 42, top_k=20, min_p=0.1)


def _scores(n: int = 3, top: int = 2) -> score_wire.Scores:
    positions = tuple(
        PositionScore(
            token=10 + i,
            logprob=-0.5 * i,
            rank=i,
            margin=0.25 * i,
            choice_margin=math.inf if i == 2 else 0.0,
            top=tuple((100 + j, -float(j)) for j in range(top)),
        )
        for i in range(n)
    )
    return score_wire.scores_message(7, ScoreResult(12, positions, 0.5))


@pytest.mark.parametrize(
    "msg",
    [
        wire.Score(3, REQUEST, (1, 2, 3), 5),
        wire.Score(3, REQUEST, (1, 2, 3), 0, (0, 2)),
        wire.Score(3, wire.Generate(0, "m", "", messages=(wire.ChatMessage("user", "hi"),)), (9,)),
        wire.Done(3, "stop", 4, 16, 0.03, 35.5, (7,), 0, b"\x01" * 100, wire.MAX_SEED),
        wire.Done(3, "stop", 4, 16, 0.03, 35.5, seed=None),
    ],
)
def test_round_trip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


def test_scores_round_trip_keep_every_position() -> None:
    msg = _scores()
    again = wire.decode(wire.encode(msg))
    assert again == msg
    assert isinstance(again, score_wire.Scores)
    positions = again.positions()
    assert [p.token for p in positions] == [10, 11, 12]
    assert positions[2].choice_margin == math.inf
    assert positions[1].top == ((100, 0.0), (101, -1.0))


def test_scores_of_a_sample_keep_their_indices() -> None:
    positions = tuple(
        PositionScore(token=t, logprob=-1.0, rank=0, margin=0.0, choice_margin=0.0, index=i)
        for t, i in ((7, 1), (9, 4))
    )
    msg = score_wire.scores_message(2, ScoreResult(5, positions, 0.1))
    again = wire.decode(wire.encode(msg))
    assert isinstance(again, score_wire.Scores) and again.indices == (1, 4)
    assert [p.index for p in again.positions()] == [1, 4]
    full = score_wire.scores_message(2, ScoreResult(5, positions[:1], 0.1))
    assert full.indices == (1,)


def test_nan_and_huge_values_from_a_worker_are_clamped_not_sent() -> None:
    bad = PositionScore(1, math.nan, 2**40, 1e30, math.nan, ((1, -1e30),))
    msg = score_wire.scores_message(1, ScoreResult(1, (bad,), math.nan))
    again = wire.decode(wire.encode(msg))
    assert isinstance(again, score_wire.Scores)
    assert again.ranks == (score_wire.MAX_RANK,)
    assert all(math.isfinite(v) for v in (*again.logprobs, *again.margins))
    assert math.isnan(again.choice_margins[0])  # "not replayable" is told as such


def _score_body(**changes: object) -> dict[str, object]:
    encoded = wire.encode(wire.Score(5, REQUEST, (1, 2), 1))
    body: dict[str, object] = msgpack.unpackb(encoded, raw=False)
    body.update(changes)
    return body


def _scores_body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = msgpack.unpackb(wire.encode(_scores()), raw=False)
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_score_body(request="p"), "request"),
        (_score_body(request={"model": "m", "prompt": 5}), "prompt"),
        (_score_body(request={"model": "m", "prompt": "p", "temperature": 99.0}), "temperature"),
        (_score_body(tokens=[]), "tokens"),
        (_score_body(tokens=[-1]), "tokens"),
        (_score_body(tokens=list(range(score_wire.MAX_SCORE_TOKENS + 1))), "tokens"),
        (_score_body(top=score_wire.MAX_TOP_LOGPROBS + 1), "top"),
        (_score_body(tokens=[1] * 4096, top=20), "top"),
        (_score_body(only=[1, 0]), "only"),
        (_score_body(only=[2]), "only"),
        (_score_body(only=[-1]), "only"),
        (_score_body(only=[True]), "only"),
        (_scores_body(indices=[0, 1]), "indices"),
        (_scores_body(indices=[0, 2, 1]), "indices"),
        (_scores_body(logprobs=[0.0]), "logprobs"),
        (_scores_body(logprobs=[1.0, 0.0, 0.0]), "logprobs"),
        (_scores_body(margins=[float("nan")] * 3), "margins"),
        (_scores_body(choice_margins=[-1.0, 0.0, 0.0]), "choice_margins"),
        (_scores_body(ranks=[0, 0]), "ranks"),
        (_scores_body(ranks=[True, 0, 0]), "ranks"),
        (_scores_body(top_ids=[[1], [1], [1]]), "top_ids"),
        (_scores_body(top_ids=[[1] * 30] * 3, top_logprobs=[[0.0] * 30] * 3), "top_ids"),
        (_scores_body(top_logprobs=[["x", 0.0]] * 3), "top_logprobs"),
        (_scores_body(seconds=-1), "seconds"),
        ({"v": 1, "t": "done", "id": 2, "finish_reason": "stop", "prompt_tokens": 1,
          "completion_tokens": 1, "ttft_s": 0, "decode_tok_s": 0, "receipt": "text"}, "receipt"),
        ({"v": 1, "t": "done", "id": 2, "finish_reason": "stop", "prompt_tokens": 1,
          "completion_tokens": 1, "ttft_s": 0, "decode_tok_s": 0,
          "receipt": b"x" * (wire.MAX_RECEIPT_BYTES + 1)}, "receipt"),
        ({"v": 1, "t": "done", "id": 2, "finish_reason": "stop", "prompt_tokens": 1,
          "completion_tokens": 1, "ttft_s": 0, "decode_tok_s": 0, "seed": -5}, "seed"),
    ],
)  # fmt: skip
def test_invalid_fields_are_malformed_for_that_request(body: dict[str, object], field: str) -> None:
    received = wire.decode_received(msgpack.packb(body, use_bin_type=True))
    assert isinstance(received, wire.Malformed)
    assert received.id == body["id"]
    assert received.field == field


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["request", "tokens", "top", "token_ids", "logprobs", "ranks", "margins",
             "choice_margins", "top_ids", "top_logprobs", "seconds", "prompt_tokens"]
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
            | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
            max_leaves=12,
        ),
    ),
    st.sampled_from(["score", "scores"]),
)  # fmt: skip
def test_hostile_bodies_never_crash_the_decoder(fields: dict[str, object], tag: str) -> None:
    body = {**fields, "v": 1, "t": tag, "id": 9}
    received = wire.decode_received(msgpack.packb(body, use_bin_type=True))
    assert isinstance(received, wire.Malformed | wire.Score | score_wire.Scores)
