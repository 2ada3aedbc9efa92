"""The relay protocol's bytes and the relay's state machine, sans-IO: preambles (and what is not
one), status lines, control messages, bounds, unknown tokens, expired reservations."""

from __future__ import annotations

import itertools

import pytest

from crypto.identity import Identity
from crypto.secure_session import SecureHandshake, encode_handshake_message
from p2p.errors import ErrorCode
from p2p.reach.reachability import DialBackLimiter, DialBackOutcome, decide
from p2p.reach.relay_protocol import (
    MAX_PREAMBLE,
    Circuit,
    DialBack,
    DialBackResult,
    Kind,
    Preamble,
    PreambleReader,
    Refused,
    RelayProtocolError,
    Reserve,
    Reserved,
    StatusReader,
    decode_control,
    encode_control,
    encode_status,
    is_preamble_start,
)
from p2p.reach.relay_table import ByteBudget, RelayLimits, RelayRefused, RelayTable

V = Identity.generate().peer_id
W = Identity.generate().peer_id


def test_a_noise_handshake_is_never_taken_for_a_preamble() -> None:
    hs = SecureHandshake(Identity.generate(), initiator=True, expected_peer_id=V)
    first = encode_handshake_message(hs.start())
    assert not is_preamble_start(first)
    assert first[0] <= 0x04  # a 2-byte length of at most 1024
    assert is_preamble_start(Preamble(Kind.CONTROL).encode())


def test_preamble_arrives_in_pieces_and_keeps_what_follows() -> None:
    key = Identity.generate().public_key
    data = Preamble(Kind.CONNECT, key).encode() + b"next"
    reader = PreambleReader()
    for i in range(len(data) - 4):
        assert reader.feed(data[i : i + 1]) is None or i == len(data) - 5
    assert reader.result == Preamble(Kind.CONNECT, key)
    reader.feed(data[-4:])
    assert reader.remaining == b"next"
    assert MAX_PREAMBLE == 37  # CONNECT_SPRAY: the key and a 2-byte port


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x20",  # a handshake
        b"\xf7\x02\x01",  # another version
        b"\xf7\x01\x09",  # unknown kind
    ],
)
def test_malformed_preambles_are_refused(data: bytes) -> None:
    with pytest.raises(RelayProtocolError):
        PreambleReader().feed(data)


def test_preamble_payload_length_is_checked() -> None:
    with pytest.raises(RelayProtocolError):
        Preamble(Kind.ACCEPT, b"short")


def test_status_lines() -> None:
    reader = StatusReader()
    data = encode_status(ErrorCode.RELAY_FULL) + b"rest"
    assert not reader.feed(data[:3])
    assert reader.feed(data[3:])
    assert reader.code is ErrorCode.RELAY_FULL and reader.remaining == b"rest"
    ok = StatusReader()
    assert ok.feed(encode_status(None)) and ok.code is None
    with pytest.raises(RelayProtocolError):
        StatusReader().feed(b"\x00")
    newer = StatusReader()
    assert newer.feed(b"\x05newer") and newer.code is ErrorCode.INTERNAL


@pytest.mark.parametrize(
    "msg",
    [
        Reserve(),
        Reserved(120.0),
        Refused(ErrorCode.NO_RESERVATION, "no"),
        Circuit(b"t" * 16),
        DialBack(b"n" * 16, 8469, 8468),
        DialBackResult(b"n" * 16, "198.18.0.7", True, False),
    ],
)
def test_control_messages_round_trip(msg: object) -> None:
    assert decode_control(encode_control(msg)) == msg  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # not msgpack
        b"\x91\x01",  # a list
        b"\x81\xa1t\xa4nope",  # unknown type
        b"\x82\xa1t\xa7circuit\xa5token\xc4\x03abc",  # short token
        b"\x84\xa1t\xa9dial_back\xa5nonce\xc4\x10" + b"n" * 16 + b"\xa4port\x00\xa8dht_port\x01",
        b"x" * 600,
    ],
)
def test_malformed_control_messages_are_refused(data: bytes) -> None:
    with pytest.raises(RelayProtocolError):
        decode_control(data)


def _table(**limits: object) -> RelayTable:
    counter = itertools.count()
    return RelayTable(
        RelayLimits(**limits),  # type: ignore[arg-type]
        token_source=lambda n: next(counter).to_bytes(n, "big"),
    )


def test_circuit_needs_a_reservation_and_a_known_token() -> None:
    table = _table()
    with pytest.raises(RelayRefused) as refused:
        table.open_circuit(V, now=0.0)
    assert refused.value.code is ErrorCode.NO_RESERVATION
    table.reserve(V, now=0.0)
    token = table.open_circuit(V, now=1.0)
    with pytest.raises(RelayRefused) as unknown:
        table.accept(b"\x99" * 16, None, now=1.0)
    assert unknown.value.code is ErrorCode.NO_RESERVATION
    with pytest.raises(RelayRefused):
        table.accept(token, W, now=1.0)  # presented by another peer
    assert table.accept(token, V, now=1.0) == V
    with pytest.raises(RelayRefused):
        table.accept(token, V, now=1.0)  # a token works once
    table.close_circuit(token)
    assert table.circuits == 0


def test_reservations_expire_unless_renewed() -> None:
    table = _table(reservation_ttl_s=10.0)
    table.reserve(V, now=0.0)
    table.reserve(V, now=8.0)  # renewed
    assert table.reserved(V, now=17.0)
    assert not table.reserved(V, now=18.5)
    with pytest.raises(RelayRefused) as expired:
        table.open_circuit(V, now=18.5)
    assert expired.value.code is ErrorCode.NO_RESERVATION


def test_pending_circuits_expire_and_free_their_place() -> None:
    table = _table(pending_s=5.0, max_circuits=1)
    table.reserve(V, now=0.0)
    token = table.open_circuit(V, now=0.0)
    with pytest.raises(RelayRefused):
        table.open_circuit(V, now=1.0)
    table.expire(now=6.0)
    with pytest.raises(RelayRefused):
        table.accept(token, V, now=6.0)
    table.open_circuit(V, now=6.0)


def test_bounds_refuse_with_relay_full() -> None:
    table = _table(max_reservations=1, max_circuits=3, max_circuits_per_peer=2)
    table.reserve(V, now=0.0)
    table.reserve(V, now=1.0)  # a renewal is not a second reservation
    with pytest.raises(RelayRefused) as full:
        table.reserve(W, now=1.0)
    assert full.value.code is ErrorCode.RELAY_FULL
    table.open_circuit(V, now=1.0)
    table.open_circuit(V, now=1.0)
    with pytest.raises(RelayRefused) as per_peer:
        table.open_circuit(V, now=1.0)
    assert per_peer.value.code is ErrorCode.RELAY_FULL
    table.release(V)
    assert table.reservations == 0
    assert table.refused_full == 2


def test_a_node_that_does_not_relay_refuses_every_reservation() -> None:
    with pytest.raises(RelayRefused) as off:
        _table(enabled=False).reserve(V, now=0.0)
    assert off.value.code is ErrorCode.RELAY_FULL


def test_byte_budget_paces_to_its_rate() -> None:
    budget = ByteBudget(100_000.0)
    assert budget.spend(100_000, now=0.0) == 0.0  # the burst
    assert budget.spend(50_000, now=0.0) == pytest.approx(0.5)
    assert budget.spend(0, now=0.5) == 0.0


def test_dial_back_limits_per_peer_per_address_and_at_once() -> None:
    limiter = DialBackLimiter(interval_s=30.0)
    assert limiter.admit(V, "127.0.0.5", now=0.0)
    limiter.done()
    assert not limiter.admit(V, "127.0.0.6", now=1.0)  # same peer, soon
    assert not limiter.admit(W, "127.0.0.5", now=1.0)  # same address, soon
    assert limiter.admit(V, "127.0.0.5", now=31.0)
    for i in range(3):
        assert limiter.admit(f"p{i}", f"127.0.1.{i}", now=31.0)
    assert not limiter.admit("p9", "127.0.1.9", now=31.0)  # four at once already


def test_decide() -> None:
    assert decide([]).kind == "unknown"
    seen = [
        DialBackOutcome("a", "198.18.0.9", False, True),
        DialBackOutcome("b", "198.18.0.9", False, False),
    ]
    assert decide(seen).kind == "relayed" and decide(seen).observed_host == "198.18.0.9"
    assert decide([*seen, DialBackOutcome("c", "198.18.0.1", True, True)]).kind == "direct"
    assert decide([DialBackOutcome("c", "198.18.0.1", True, True, mapped=True)]).kind == "mapped"
    # one lying helper does not rename the node
    assert (
        decide([*seen, DialBackOutcome("c", "198.18.0.1", True, True)]).observed_host
        == "198.18.0.9"
    )


def test_a_node_that_is_relayed_itself_takes_no_reservations() -> None:
    table = _table()
    table.reserve(V, now=0.0)
    table.paused = True
    with pytest.raises(RelayRefused) as paused:
        table.reserve(V, now=1.0)  # the renewal is refused too: V moves to another relay
    assert paused.value.code is ErrorCode.RELAY_FULL and "not reachable" in str(paused.value)
