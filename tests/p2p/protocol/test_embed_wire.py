"""The Embed request and its Embeddings answer on the wire and through both request state
machines: round trips, bounds, hostile values answered as `Malformed` for that request (a vector
of the wrong size, a NaN, too many inputs), never a crash."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.embedding import MAX_ANSWER_FLOATS, MAX_EMBED_BYTES, MAX_EMBED_INPUTS
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.protocol.request_events import RequestStarted
from p2p.protocol.requests_client import RequestClient
from p2p.protocol.requests_server import RequestServer


def floats(*values: float, n: int = 4) -> bytes:
    return np.array(values or [0.5] * n, dtype="<f4").tobytes()


ANSWER = wire.Embeddings(3, 4, (floats(1, 0, 0, 0), floats(0, 0.5, 0.5, 0.7)), 9, 0.01)


@pytest.mark.parametrize(
    "msg",
    [
        wire.Embed(3, "tiny-embed", ("hello", "world"), 0),
        wire.Embed(3, "a" * 64, ("é" * 100,), 256),
        ANSWER,
    ],
)
def test_round_trip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


def test_vectors_travel_as_float32_bytes() -> None:
    again = wire.decode(wire.encode(ANSWER))
    assert isinstance(again, wire.Embeddings)
    assert again.floats(1) == pytest.approx([0, 0.5, 0.5, 0.7], abs=1e-7)
    body = msgpack.unpackb(wire.encode(ANSWER), raw=False)
    assert all(isinstance(v, bytes) and len(v) == 16 for v in body["vectors"])


def _body(msg: wire.Message, **changes: Any) -> bytes:
    body = msgpack.unpackb(wire.encode(msg), raw=False)
    body.update(changes)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


EMBED = wire.Embed(5, "m", ("x",))


@pytest.mark.parametrize(
    ("msg", "changes", "field"),
    [
        (EMBED, {"inputs": []}, "inputs"),
        (EMBED, {"inputs": ["x"] * (MAX_EMBED_INPUTS + 1)}, "inputs"),
        (EMBED, {"inputs": [1, 2, 3]}, "inputs"),
        (EMBED, {"inputs": ["é" * (MAX_EMBED_BYTES // 2 + 1)]}, "inputs"),
        (EMBED, {"inputs": "x"}, "inputs"),
        (EMBED, {"model": 5}, "model"),
        (EMBED, {"dimensions": -1}, "dimensions"),
        (EMBED, {"dimensions": 10**9}, "dimensions"),
        (ANSWER, {"dimensions": 0}, "dimensions"),
        (ANSWER, {"vectors": []}, "vectors"),
        (ANSWER, {"vectors": [floats(1, 2, 3)]}, "vectors"),  # 3 floats, 4 dimensions
        (ANSWER, {"vectors": [[1.0, 2.0, 3.0, 4.0]]}, "vectors"),  # numbers, not bytes
        (ANSWER, {"vectors": [floats(1, float("nan"), 0, 0)]}, "vectors"),
        (ANSWER, {"vectors": [floats(1, float("inf"), 0, 0)]}, "vectors"),
        (ANSWER, {"dimensions": 8192, "vectors": [b"\0" * 4 * 8192] * 25}, "vectors"),
        (ANSWER, {"prompt_tokens": -1}, "prompt_tokens"),
    ],
)
def test_invalid_fields_are_malformed_for_that_request(
    msg: wire.Message, changes: dict[str, Any], field: str
) -> None:
    received = wire.decode_received(_body(msg, **changes))
    assert isinstance(received, wire.Malformed)
    assert received.id == msg.id and received.field == field


def test_the_answer_bound_fits_a_frame() -> None:
    assert MAX_ANSWER_FLOATS * 4 + MAX_EMBED_INPUTS * 16 < 1 << 20


def test_an_embed_is_served_and_answered_once() -> None:
    server, client = RequestServer(), RequestClient()
    sent = client.start(wire.Embed(0, "m", ("a", "b")))
    event = server.receive(wire.decode(wire.encode(sent)))
    assert isinstance(event, RequestStarted) and isinstance(event.request, wire.Embed)
    answer = wire.Embeddings(sent.id, 4, (floats(), floats()), 3)
    out = server.send(answer)
    assert out == answer
    assert client.receive(wire.decode(wire.encode(answer))) == answer
    assert client.close(sent.id) is None  # answered: nothing to cancel
    assert server.end(sent.id) is None
    # a second answer for the same id is ignored by the client
    assert client.receive(answer) is None and client.ignored == 1


def test_a_client_does_not_send_embeddings() -> None:
    server = RequestServer()
    server.receive(ANSWER)
    [refusal] = server.take_outgoing()
    assert isinstance(refusal, wire.Error) and refusal.code is ErrorCode.BAD_REQUEST


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["inputs", "model", "dimensions", "vectors", "prompt_tokens", "seconds"]),
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**64 - 1),  # what msgpack can carry
            st.floats(),
            st.text(max_size=5),
            st.binary(max_size=40),
            st.lists(st.one_of(st.text(max_size=3), st.binary(max_size=20)), max_size=4),
        ),
    ),
    st.sampled_from(["embed", "embeddings"]),
)
def test_any_fields_decode_safely(fields: dict[str, Any], tag: str) -> None:
    body = {"v": wire.PROTOCOL_VERSION, "t": tag, "id": 1, **fields}
    received = wire.decode_received(msgpack.packb(body, use_bin_type=True))
    assert isinstance(received, wire.Embed | wire.Embeddings | wire.Malformed)
