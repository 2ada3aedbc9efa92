"""Session message codec: round trips and hostile input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.errors import ErrorCode
from p2p.protocol import wire


@pytest.mark.parametrize(
    "msg",
    [
        wire.Generate(1, "tiny-llama", "hello", 16, 0.5, 0.9, 7, ("\n",)),
        wire.Generate(9, "m", "", messages=(wire.ChatMessage("user", "hi"),)),
        wire.Token(2, "wörld"),
        wire.Token(2, "x", (5, 6)),
        wire.Generate(3, "m", "p", 40, replay_tokens=(1, 2, 3)),
        wire.Done(3, "length", 4, 16, 0.03, 35.5),
        wire.Done(3, "stop", 4, 16, 0.03, 35.5, token_ids=(7, 8), cached_tokens=3),
        wire.Generate(3, "m", "p", reproducible=True),
        wire.Generate(
            3,
            "m",
            "p",
            top_k=1,
            min_p=0.2,
            typical_p=0.5,
            repeat_penalty=1.3,
            presence_penalty=-0.5,
            frequency_penalty=1.5,
            penalty_last_n=0,
            logit_bias=((5, -100.0), (7, 2.5)),
            ignore_eos=True,
        ),
        wire.Error(4, ErrorCode.BUSY, "busy"),
        wire.Cancel(5),
        wire.Ping(6),
        wire.Pong(6),
    ],
)
def test_round_trip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


@pytest.mark.parametrize(
    "body",
    [
        {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": 5},
        {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": "p", "max_tokens": 0},
        {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": "p", "stop": ["a"] * 50},
        {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": "p", "temperature": "hot"},
        {"v": 2, "t": "ping", "id": 1},
        {"v": 1, "t": "launch", "id": 1},
        {"v": 1, "t": "ping", "id": -1},
        {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": "", "messages": [["root", "x"]]},
        {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": "", "messages": [["user"]]},
        {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": "", "replay_tokens": [-1]},
        {"v": 1, "t": "token", "id": 1, "text": "", "token_ids": ["a"]},
        {"v": 1, "t": "generate", "id": 1, "model": "m", "prompt": "", "reproducible": 1},
        {
            "v": 1,
            "t": "done",
            "id": 1,
            "finish_reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "ttft_s": 0.1,
            "decode_tok_s": 1.0,
            "token_ids": [2**31],
        },
        [1, 2, 3],
    ],
)
def test_bad_messages_raise_protocol_error(body: object) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.decode(msgpack.packb(body))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(wire.ProtocolError):
        wire.decode(data)


GEN = {"v": 1, "t": "generate", "id": 3, "model": "m", "prompt": "p"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GEN, "prompt": 5}, "prompt"),
        ({**GEN, "max_tokens": 0}, "max_tokens"),
        ({**GEN, "top_p": 0}, "top_p"),
        ({**GEN, "messages": [["x"]]}, "messages"),
        ({**GEN, "model": None}, "model"),
        ({"v": 2, "t": "ping", "id": 3}, "v"),
        ({"v": 1, "t": "launch", "id": 3}, "t"),
        ({"v": 1, "t": "token", "id": 3, "text": 1}, "text"),
        ({"v": 1, "t": "error", "id": 3, "code": "busy"}, "message"),
    ],
)
def test_an_invalid_message_with_a_readable_id_names_the_request_and_the_field(
    body: dict[str, object], field: str
) -> None:
    data = msgpack.packb(body)
    with pytest.raises(wire.InvalidMessage) as info:
        wire.decode(data)
    assert info.value.request_id == 3 and info.value.field == field
    assert info.value.code is ErrorCode.BAD_REQUEST
    malformed = wire.decode_received(data)
    assert isinstance(malformed, wire.Malformed)
    assert malformed.id == 3 and malformed.field == field and malformed.tag == body["t"]


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        msgpack.packb([1]),
        msgpack.packb({"v": 1, "t": "ping"}),
        msgpack.packb({"v": 1, "t": "ping", "id": "7"}),
    ],
    ids=["not-msgpack", "not-a-map", "no-id", "id-not-an-integer"],
)
def test_a_message_without_a_readable_id_is_a_plain_protocol_error(data: bytes) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        wire.decode_received(data)
    assert not isinstance(info.value, wire.InvalidMessage)


def test_error_codes_travel_as_their_wire_strings_and_unknown_ones_read_as_internal() -> None:
    data = wire.encode(wire.Error(1, ErrorCode.TOO_LONG, "long"))
    assert msgpack.unpackb(data)["code"] == "too_long"
    newer = msgpack.packb({"v": 1, "t": "error", "id": 1, "code": "quota", "message": "m"})
    assert wire.decode(newer) == wire.Error(1, ErrorCode.INTERNAL, "m")
