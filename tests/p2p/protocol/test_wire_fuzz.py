"""Hypothesis over what a session peer controls: the bytes of a frame, the fields of a message,
and the order of messages on a connection.

- Any bytes decode to a message, or raise `ProtocolError` (an `InvalidMessage` when the id was
  readable); `decode_received` gives a message or `Malformed`. Never another exception.
- Whatever the decoder accepts as a `Generate`, the worker's `GenerationRequest` accepts too: one
  definition of the bounds (inference/generation.py), so no valid message can make the node raise
  while it builds a request.
- `RequestServer` never raises on any sequence of received messages, whatever the caller does
  in between (within its own rules), and keeps its one-final-message promise.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.generation import GenerationRequest
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.protocol.request_events import RequestCancelled, RequestStarted
from p2p.protocol.requests_server import RequestServer

FIELDS = [
    "v",
    "t",
    "id",
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "messages",
    "replay_tokens",
    "reproducible",
    "text",
    "token_ids",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "ttft_s",
    "decode_tok_s",
    "cached_tokens",
    "code",
    "message",
]
TAGS = ["generate", "token", "done", "error", "cancel", "ping", "pong", "launch"]

# Values near every bound the decoder checks, and of every msgpack type.
edge_ints = st.sampled_from(
    [0, 1, -1, 7, 8, 127, 128, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1, 2**53, 2**53 + 1, 2**63 - 1]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    edge_ints,
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=10), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=24,
)


@st.composite
def message_maps(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=14))
    if draw(st.booleans()):  # usually a well-formed envelope, so the field checks are reached
        body.update(v=1, t=draw(st.sampled_from(TAGS)), id=draw(st.integers(0, 10)))
    if draw(st.booleans()):
        body["replay_tokens"] = draw(st.lists(st.integers(0, 600), max_size=40))
        body["max_tokens"] = draw(st.integers(-1, 45))
    if draw(st.booleans()):
        body["messages"] = draw(
            st.lists(
                st.lists(st.sampled_from(["user", "system", "assistant", "root", 1]), max_size=3),
                max_size=3,
            )
        )
    return body


# Per field of a Generate, values on both sides of its bounds (and of other types).
near_bounds: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": st.sampled_from([0, 1, 2, 8, 128, 32768, 32769]),
    "temperature": st.sampled_from([0, 0.0, 1.5, 10.0, 10.5, -0.1, float("nan"), "1"]),
    "top_p": st.sampled_from([0.0, 1e-7, 1e-6, 0.5, 1.0, 1.01, True]),
    "seed": st.sampled_from([None, 0, 1, 2**32 - 2, 2**32 - 1, 2**32, -1, 1.0]),
    "stop": st.lists(st.text(max_size=3) | st.just("s" * 257) | st.just(0), max_size=9),
    "replay_tokens": st.lists(st.integers(-1, 600), max_size=10),
    "messages": st.lists(
        st.tuples(st.sampled_from(["user", "root"]), st.text(max_size=3)).map(list), max_size=2
    ),
    "prompt": st.sampled_from(["", "p", "é" * 262_145]),
    "reproducible": st.sampled_from([False, True, 1]),
}


@st.composite
def generate_maps(draw: st.DrawFn) -> dict[str, Any]:
    """A Generate a well-behaved client might send, with a few fields pushed to their bounds."""
    body: dict[str, Any] = {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": "p"}
    for key in draw(st.sets(st.sampled_from(sorted(near_bounds)), max_size=4)):
        body[key] = draw(near_bounds[key])
    return body


def decodes_safely(data: bytes) -> wire.Received | None:
    """What `decode_received` gives; None for a `ProtocolError` (no readable id: the one case
    that may close the session). Any other exception fails the test."""
    try:
        got = wire.decode_received(data)
    except wire.ProtocolError:
        return None
    assert isinstance(got, wire.Message | wire.Malformed)
    return got


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_message_malformed_or_a_protocol_error(data: bytes) -> None:
    decodes_safely(data)


@settings(max_examples=300, deadline=None)
@given(message_maps())
def test_any_map_decodes_safely(body: dict[str, Any]) -> None:
    decodes_safely(msgpack.packb(body, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(generate_maps())
def test_a_generate_the_decoder_accepts_is_one_the_worker_takes(body: dict[str, Any]) -> None:
    got = decodes_safely(msgpack.packb(body, use_bin_type=True))
    if isinstance(got, wire.Generate):
        GenerationRequest(  # raises on any value the decoder should have refused
            prompt=got.prompt,
            max_tokens=got.max_tokens,
            temperature=got.temperature,
            top_p=got.top_p,
            seed=got.seed,
            stop=got.stop,  # type: ignore[arg-type]  # attrs converter confuses mypy
            replay_tokens=got.replay_tokens,
            reproducible=got.reproducible,
        )


received = st.one_of(
    st.builds(wire.Generate, st.integers(0, 5), st.just("m"), st.just("p")),
    st.builds(wire.Cancel, st.integers(0, 5)),
    st.builds(wire.Ping, st.integers(0, 5)),
    st.builds(wire.Pong, st.integers(0, 5)),
    st.builds(wire.Token, st.integers(0, 5), st.just("x")),
    st.builds(lambda i: wire.Done(i, "stop", 1, 1, 0.0, 1.0), st.integers(0, 5)),
    st.builds(wire.Error, st.integers(0, 5), st.sampled_from(ErrorCode), st.just("e")),
    st.builds(
        lambda i, tag: wire.Malformed(i, tag, "seed", "bad"),
        st.integers(0, 5),
        st.sampled_from([None, "generate"]),
    ),
)
# What the node's loop does between two received messages, to one of the requests it serves.
caller = st.tuples(st.sampled_from(["token", "done", "error", "end", "nothing"]), st.integers(0, 5))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(received, caller), max_size=40), st.integers(1, 4))
def test_the_server_machine_never_raises_on_what_a_client_sends(
    steps: list[tuple[wire.Received, tuple[str, int]]], cap: int
) -> None:
    server = RequestServer(max_requests=cap)
    serving: dict[int, bool] = {}  # our requests in flight -> their final was sent
    for msg, (action, rid) in steps:
        event = server.receive(msg)
        out = server.take_outgoing()
        if isinstance(event, RequestStarted):
            serving[event.request.id] = False
        elif isinstance(event, RequestCancelled):
            assert event.id in serving
        assert all(isinstance(o, wire.Error | wire.Pong) for o in out)
        assert server.live_requests <= cap
        if rid not in serving:
            continue
        if action == "token" and not serving[rid]:
            server.send(wire.Token(rid, "t"))
        elif action in ("done", "error") and not serving[rid]:
            final = wire.Done(rid, "stop", 1, 1, 0.0, 1.0)
            if action == "error":
                final = wire.Error(rid, ErrorCode.INTERNAL, "x")  # type: ignore[assignment]
            serving[rid] = True
            server.send(final)
        elif action == "end":
            del serving[rid]
            server.end(rid)
    for rid in list(serving):
        server.end(rid)
    assert server.live_requests == 0
