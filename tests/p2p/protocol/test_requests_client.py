"""The client request machine, with plain calls: ids, finals, cancels, what it ignores."""

from __future__ import annotations

import pytest

from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.protocol.request_events import LocalProtocolError, RequestCancelled
from p2p.protocol.requests_client import RequestClient
from tests.p2p.protocol.pair import Pair, done


def test_ids_are_fresh_and_never_reused() -> None:
    client = RequestClient()
    ids = [client.start(wire.Generate(0, "m", "p")).id for _ in range(3)]
    assert ids == [1, 2, 3]
    client.close(2)
    assert client.start(wire.Generate(0, "m", "p")).id == 4


def test_a_final_message_ends_the_request_and_later_answers_are_ignored() -> None:
    pair = Pair()
    rid = pair.start()
    pair.server_receives()
    pair.to_client += [wire.Token(rid, "a"), done(rid), wire.Token(rid, "late"), done(rid)]
    assert pair.client_receives() == [wire.Token(rid, "a"), done(rid)]
    assert pair.client.ignored == 2
    assert pair.client.is_answered(rid)
    assert pair.client.close(rid) is None  # answered: no cancel needed
    assert pair.client.open_requests == 0


def test_leaving_an_open_request_sends_cancel_once() -> None:
    client = RequestClient()
    rid = client.start(wire.Generate(0, "m", "p")).id
    assert client.close(rid) == wire.Cancel(rid)
    with pytest.raises(LocalProtocolError):
        client.close(rid)
    assert client.receive(wire.Token(rid, "late")) is None  # closed: ignored


def test_answers_for_ids_never_opened_are_ignored_and_counted() -> None:
    client = RequestClient()
    assert client.receive(wire.Token(42, "x")) is None
    assert client.receive(wire.Error(42, ErrorCode.BUSY, "b")) is None
    assert client.receive(wire.Pong(42)) is None
    assert client.ignored == 3


@pytest.mark.parametrize(
    "msg", [wire.Generate(1, "m", "p"), wire.Cancel(1), wire.Ping(1)], ids=["gen", "cancel", "ping"]
)
def test_what_a_server_does_not_send_is_ignored_and_counted(msg: wire.Message) -> None:
    client = RequestClient()
    client.start(wire.Generate(0, "m", "p"))
    assert client.receive(msg) is None
    assert client.unexpected == 1
    assert client.take_outgoing() == []


def test_an_invalid_answer_fails_that_request_and_cancels_it_on_the_server() -> None:
    pair = Pair()
    broken, fine = pair.start(), pair.start()
    pair.server_receives()
    pair.to_client.append(wire.Malformed(broken, "token", "text", "text must be a string"))
    [failure] = pair.client_receives()
    assert isinstance(failure, wire.Error) and failure.id == broken
    assert failure.code is ErrorCode.INTERNAL  # the node misbehaved: another may not
    assert pair.server_receives() == [RequestCancelled(broken)]
    assert pair.client.close(broken) is None  # its cancel already went out
    assert pair.server_sends(done(fine))
    assert pair.client_receives() == [done(fine)]


def test_an_invalid_message_for_no_open_request_is_ignored() -> None:
    client = RequestClient()
    assert client.receive(wire.Malformed(9, "done", "ttft_s", "bad")) is None
    assert client.ignored == 1 and client.take_outgoing() == []
