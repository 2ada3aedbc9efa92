"""The server request machine, with plain calls: every rule of one connection's requests."""

from __future__ import annotations

import pytest

from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.protocol.request_events import LocalProtocolError, RequestCancelled, RequestStarted
from p2p.protocol.requests_server import RequestServer
from tests.p2p.protocol.pair import Pair, done


def test_a_request_streams_tokens_then_one_final_message() -> None:
    pair = Pair()
    rid = pair.start()
    [started] = pair.server_receives()
    assert isinstance(started, RequestStarted) and started.request.id == rid
    assert pair.server_sends(wire.Token(rid, "a", (1,)))
    assert pair.server_sends(done(rid))
    assert pair.client_receives() == [wire.Token(rid, "a", (1,)), done(rid)]
    assert pair.server.end(rid) is None
    assert pair.server.live_requests == 0


def test_a_second_final_or_a_token_after_it_is_our_bug() -> None:
    pair = Pair()
    rid = pair.start()
    pair.server_receives()
    pair.server_sends(wire.Error(rid, ErrorCode.BUSY, "busy"))
    with pytest.raises(LocalProtocolError):
        pair.server_sends(done(rid))
    with pytest.raises(LocalProtocolError):
        pair.server_sends(wire.Token(rid, "late"))


def test_answering_an_id_never_opened_is_our_bug() -> None:
    server = RequestServer()
    with pytest.raises(LocalProtocolError):
        server.send(wire.Token(5, "x"))
    with pytest.raises(LocalProtocolError):
        server.end(5)
    with pytest.raises(LocalProtocolError):
        server.send(wire.Pong(5))  # type: ignore[arg-type]


def test_a_request_ended_without_a_final_message_gets_an_internal_error() -> None:
    server = RequestServer()
    server.receive(wire.Generate(1, "m", "p"))
    missing = server.end(1)
    assert missing is not None and missing.code is ErrorCode.INTERNAL and missing.id == 1


def test_a_duplicate_id_is_a_bad_request_for_that_id_and_stops_the_live_one() -> None:
    server = RequestServer()
    assert isinstance(server.receive(wire.Generate(1, "m", "p")), RequestStarted)
    assert server.receive(wire.Generate(1, "m", "again")) == RequestCancelled(1)
    [error] = server.take_outgoing()
    assert isinstance(error, wire.Error) and error.id == 1 and error.code is ErrorCode.BAD_REQUEST
    assert server.send(wire.Token(1, "x")) is None  # the stopped request's tokens are dropped
    assert server.send(done(1)) is None  # so is its final: the refusal was the one
    assert server.end(1) is None
    # once ended, the id may start a request again
    assert isinstance(server.receive(wire.Generate(1, "m", "p")), RequestStarted)


def test_the_per_connection_cap_answers_busy_at_once() -> None:
    server = RequestServer(max_requests=2)
    for rid in (1, 2):
        assert isinstance(server.receive(wire.Generate(rid, "m", "p")), RequestStarted)
    assert server.receive(wire.Generate(3, "m", "p")) is None
    assert server.take_outgoing() == [
        wire.Error(3, ErrorCode.BUSY, "too many requests on this connection")
    ]
    server.send(done(1))
    assert server.receive(wire.Generate(4, "m", "p")) is None  # 1 holds its place until end()
    server.take_outgoing()
    server.end(1)
    assert isinstance(server.receive(wire.Generate(4, "m", "p")), RequestStarted)


def test_cancel_of_a_live_request_is_an_event_and_of_anything_else_ignored() -> None:
    pair = Pair()
    rid = pair.start()
    pair.server_receives()
    pair.close(rid)  # the client leaves early: a Cancel goes out
    assert pair.server_receives() == [RequestCancelled(rid)]
    assert not pair.server_sends(wire.Token(rid, "late"))  # dropped, not an error
    assert pair.server.end(rid) is None  # cancelled: no final owed
    assert pair.server.receive(wire.Cancel(rid)) is None
    assert pair.server.receive(wire.Cancel(999)) is None
    assert pair.server.take_outgoing() == []
    assert pair.server.ignored == 2


def test_ping_is_answered_with_its_id() -> None:
    pair = Pair()
    ping = pair.client.ping()
    pair.to_server.append(ping)
    assert pair.server_receives() == []
    assert pair.client_receives() == [wire.Pong(ping.id)]


@pytest.mark.parametrize(
    "msg",
    [
        wire.Token(7, "x"),
        wire.Done(7, "stop", 1, 1, 0.0, 0.0),
        wire.Error(7, ErrorCode.BUSY, "b"),
        wire.Pong(7),
    ],
    ids=["token", "done", "error", "pong"],
)
def test_what_a_client_does_not_send_is_a_bad_request_for_its_id(msg: wire.Message) -> None:
    server = RequestServer()
    assert server.receive(msg) is None
    [error] = server.take_outgoing()
    assert isinstance(error, wire.Error) and error.id == 7 and error.code is ErrorCode.BAD_REQUEST
    assert server.refused == 1


def test_an_unexpected_message_for_a_live_id_stops_that_request_only() -> None:
    server = RequestServer()
    server.receive(wire.Generate(1, "m", "p"))
    server.receive(wire.Generate(2, "m", "p"))
    assert server.receive(wire.Token(1, "x")) == RequestCancelled(1)
    [error] = server.take_outgoing()
    assert error.id == 1
    assert server.send(wire.Token(2, "fine")) == wire.Token(2, "fine")


def test_after_an_invalid_generate_the_other_requests_go_on() -> None:
    pair = Pair()
    first = pair.start()
    pair.server_receives()
    # what SecureConnection.receive hands over for a Generate whose max_tokens is invalid
    pair.to_server.append(wire.Malformed(100, "generate", "max_tokens", "max_tokens: too big"))
    second = pair.start()
    events = pair.server_receives()
    assert events == [RequestStarted(wire.Generate(second, "m", "p"))]
    [refusal] = pair.to_client
    assert isinstance(refusal, wire.Error)
    assert refusal.id == 100 and refusal.code is ErrorCode.BAD_REQUEST
    assert "max_tokens" in refusal.message
    for rid in (first, second):
        assert pair.server_sends(done(rid))
    assert [e.id for e in pair.client_receives()] == [first, second]  # the refusal: ignored
    assert pair.client.ignored == 1


def test_an_invalid_message_for_a_live_id_stops_that_request() -> None:
    server = RequestServer()
    server.receive(wire.Generate(1, "m", "p"))
    assert server.receive(wire.Malformed(1, "cancel", "v", "bad version")) == RequestCancelled(1)
    assert [e.code for e in server.take_outgoing() if isinstance(e, wire.Error)] == [
        ErrorCode.BAD_REQUEST
    ]


def test_after_the_peer_closed_nothing_is_sent() -> None:
    server = RequestServer()
    server.receive(wire.Generate(1, "m", "p"))
    server.receive(wire.Ping(2))
    server.peer_closed()
    assert server.take_outgoing() == []
    assert server.send(wire.Token(1, "x")) is None
    assert server.end(1) is None  # no final owed to a peer that is gone
    with pytest.raises(LocalProtocolError):
        server.receive(wire.Ping(3))
