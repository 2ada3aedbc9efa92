"""Log-probabilities on the wire (p2p/protocol/logprob_wire.py): a Token's entries and a Done's
prompt entries round-trip, a message without them encodes as before, and every hostile shape is
an `InvalidMessage` naming the field (the session goes on), never an exception of another kind;
the client hands them on with the text (p2p/client/token_stream.py `LoggedText`)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio

from inference.token_logprobs import MAX_TOP_LOGPROBS, Alternative, TokenLogprob
from p2p.client.token_stream import LoggedText, Progress, receive_answer
from p2p.protocol import wire
from p2p.session.local import LocalConnection, local_pair
from p2p.session.pool import MultiplexedSession

ENTRY = TokenLogprob(
    7, b" Paris", -0.25, (Alternative(7, b" Paris", -0.25), Alternative(9, b"\xe2", -3.0))
)


def test_token_entries_round_trip() -> None:
    token = wire.Token(3, " Paris", (7,), (ENTRY,))
    assert wire.decode(wire.encode(token)) == token


def test_a_token_without_entries_is_encoded_as_before() -> None:
    body = msgpack.unpackb(wire.encode(wire.Token(3, "x", (7,))), raw=False)
    assert "logprobs" not in body
    done = msgpack.unpackb(wire.encode(wire.Done(3, "stop", 1, 1, 0.1, 1.0)), raw=False)
    assert "prompt_logprobs" not in done and "prompt_first" not in done


def test_done_prompt_entries_round_trip() -> None:
    done = wire.Done(3, "stop", 4, 1, 0.1, 1.0, prompt_logprobs=(ENTRY,), prompt_first=b"<s>")
    assert wire.decode(wire.encode(done)) == done


def test_generate_prompt_logprobs_needs_logprobs() -> None:
    ok = wire.Generate(1, "m", "p", logprobs=2, prompt_logprobs=True)
    assert wire.decode(wire.encode(ok)) == ok
    with pytest.raises(wire.InvalidMessage) as caught:
        wire.decode(wire.encode(wire.Generate(1, "m", "p", prompt_logprobs=True)))
    assert caught.value.field == "prompt_logprobs"
    with pytest.raises(wire.InvalidMessage) as caught:
        wire.decode(wire.encode(wire.Generate(1, "m", "p", logprobs=MAX_TOP_LOGPROBS + 1)))
    assert caught.value.field == "logprobs"


def _token_body(logprobs: Any, ids: list[int] | None = None) -> bytes:
    body = {"v": wire.PROTOCOL_VERSION, "t": "token", "id": 5, "text": "x"}
    body.update(token_ids=[7] if ids is None else ids, logprobs=logprobs)
    return msgpack.packb(body, use_bin_type=True)


ALT = [9, b"a", -1.0]


@pytest.mark.parametrize(
    "logprobs",
    [
        "no",
        [],  # one entry per token id
        [[-0.5, b"x", []], [-0.5, b"x", []]],
        [[0.5, b"x", []]],  # a probability over 1
        [[float("nan"), b"x", []]],
        [[float("-inf"), b"x", []]],
        [[-2e6, b"x", []]],
        [[True, b"x", []]],
        [[-0.5, "x", []]],  # a piece is bytes
        [[-0.5, b"x" * 257, []]],
        [[-0.5, b"x", [ALT] * (MAX_TOP_LOGPROBS + 1)]],
        [[-0.5, b"x", [[-1, b"a", -1.0]]]],
        [[-0.5, b"x", [[9, b"a", 1.0]]]],
        [[-0.5, b"x", [[9, b"a"]]]],
        [[-0.5, b"x", "alts"]],
        [[-0.5, b"x"]],
    ],
)
def test_hostile_token_entries_are_refused_by_field(logprobs: Any) -> None:
    with pytest.raises(wire.InvalidMessage) as caught:
        wire.decode(_token_body(logprobs))
    assert caught.value.field == "logprobs" and caught.value.request_id == 5


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt_logprobs": [[-0.5, b"x", []]]}, "prompt_logprobs"),  # no token id
        ({"prompt_logprobs": [["7", -0.5, b"x", []]]}, "prompt_logprobs"),
        ({"prompt_logprobs": [[7, 0.5, b"x", []]]}, "prompt_logprobs"),
        ({"prompt_logprobs": [[7, -0.5, b"x", []]] * 4097}, "prompt_logprobs"),
        ({"prompt_logprobs": "x"}, "prompt_logprobs"),
        ({"prompt_first": "text"}, "prompt_first"),
        ({"prompt_first": b"x" * 300}, "prompt_first"),
    ],
)
def test_hostile_prompt_entries_are_refused_by_field(fields: dict[str, Any], field: str) -> None:
    body = msgpack.unpackb(wire.encode(wire.Done(5, "stop", 1, 1, 0.1, 1.0)), raw=False)
    body.update(fields)
    with pytest.raises(wire.InvalidMessage) as caught:
        wire.decode(msgpack.packb(body, use_bin_type=True))
    assert caught.value.field == field


async def _node(conn: LocalConnection) -> None:
    msg = await conn.receive()
    assert isinstance(msg, wire.Generate)
    await conn.send(wire.Token(msg.id, " Paris", (7,), (ENTRY,)))
    await conn.send(wire.Token(msg.id, "!", (8,)))
    await conn.send(wire.Done(msg.id, "length", 1, 2, 0.1, 10.0))


async def test_the_client_hands_entries_on_with_the_text() -> None:
    client_side, node_side = local_pair("peer")
    session = MultiplexedSession(client_side)
    texts: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            nursery.start_soon(_node, node_side)
            request = wire.Generate(id=0, model="m", prompt="p", max_tokens=4, logprobs=1)
            outcome = await receive_answer(session, request, Progress(), texts.append)
            nursery.cancel_scope.cancel()
    assert isinstance(outcome, wire.Done)
    assert texts == [" Paris", "!"]
    assert isinstance(texts[0], LoggedText) and texts[0].logprobs == (ENTRY,)
    assert not isinstance(texts[1], LoggedText)
