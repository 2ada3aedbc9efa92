"""The sans-IO parts of hole punching: the CONNECT_PUNCH preamble, the observed line and its
bounds, `Circuit.peer` (and the bytes older peers see), the punch plan, the volunteer's budget."""

from __future__ import annotations

import msgpack
import pytest

from p2p.reach import punch_rules
from p2p.reach.punch_rules import PunchBudget, PunchPlan, path_label, target_allowed
from p2p.reach.relay_protocol import (
    MAX_OBSERVED,
    TOKEN_BYTES,
    Circuit,
    Kind,
    Observed,
    ObservedReader,
    Preamble,
    PreambleReader,
    RelayProtocolError,
    decode_control,
    encode_control,
)

TOKEN = bytes(range(TOKEN_BYTES))


def test_connect_punch_is_a_connect_preamble_of_its_own_kind() -> None:
    key = bytes(32)
    reader = PreambleReader()
    assert reader.feed(Preamble(Kind.CONNECT_PUNCH, key).encode() + b"\x00\x20") == Preamble(
        Kind.CONNECT_PUNCH, key
    )
    assert reader.remaining == b"\x00\x20"
    with pytest.raises(RelayProtocolError):
        Preamble(Kind.CONNECT_PUNCH, key[:31])


@pytest.mark.parametrize(
    ("peer", "you"),
    [("127.0.0.11:40001", "127.0.0.12:8469"), ("[::1]:65535", "127.0.0.2:1")],
)
def test_observed_line_round_trips_byte_by_byte(peer: str, you: str) -> None:
    data = Observed(peer, you).encode() + b"rest"
    reader = ObservedReader()
    result = None
    for i in range(len(data) - 4):
        assert result is None
        assert 1 <= reader.needed <= len(data)
        result = reader.feed(data[i : i + 1])
    assert result == Observed(peer, you)
    assert reader.feed(b"rest") == result and reader.remaining == b"rest"
    assert reader.needed == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",  # length 0
        b"relay.example:1 127.0.0.1:2",  # a name: a relay reports what a socket saw, never names
        b"127.0.0.1:2",  # one address
        b"127.0.0.1:2 127.0.0.1:3 127.0.0.1:4",  # three
        b"127.0.0.1:0 127.0.0.1:3",  # port 0
        b"127.0.0.1:70000 127.0.0.1:3",
        "127.0.0.1:2 127.0.0.\u00e9:3".encode(),
    ],
)
def test_observed_line_refuses_what_a_relay_never_sends(body: bytes) -> None:
    with pytest.raises(RelayProtocolError):
        ObservedReader().feed(bytes((len(body),)) + body)


def test_observed_line_is_bounded_before_it_is_buffered() -> None:
    with pytest.raises(RelayProtocolError):
        ObservedReader().feed(bytes((MAX_OBSERVED + 1,)))
    with pytest.raises(RelayProtocolError):
        Observed("name:1", "127.0.0.1:2").encode()


def test_circuit_names_the_client_and_old_peers_see_their_bytes() -> None:
    with_peer = Circuit(TOKEN, "127.0.0.12:40000")
    assert decode_control(encode_control(with_peer)) == with_peer
    plain = encode_control(Circuit(TOKEN))
    assert msgpack.unpackb(plain) == {"token": TOKEN, "t": "circuit"}  # as before the field
    assert decode_control(plain) == Circuit(TOKEN, "")
    # an old volunteer reads only the token: the extra field is a map entry it never looks at
    assert msgpack.unpackb(encode_control(with_peer))["token"] == TOKEN


@pytest.mark.parametrize("peer", ["name.example:1", "127.0.0.1", 7, "1" * (MAX_OBSERVED + 1)])
def test_circuit_with_a_bad_peer_is_refused(peer: object) -> None:
    data = msgpack.packb({"t": "circuit", "token": TOKEN, "peer": peer})
    with pytest.raises(RelayProtocolError):
        decode_control(data)


def test_the_plan_tries_at_once_then_after_gaps_within_the_window() -> None:
    plan = PunchPlan(window_s=3.0, tries=4, gap_s=0.2)
    assert plan.next_try(0, 10.0, 10.0) == 10.0
    assert plan.next_try(1, 10.0, 10.05) == pytest.approx(10.25)
    assert plan.next_try(3, 10.0, 11.0) == pytest.approx(11.2)
    assert plan.next_try(4, 10.0, 10.1) is None  # tries spent
    assert plan.next_try(1, 10.0, 12.9) is None  # the gap would end past the window
    assert plan.deadline(10.0) == 13.0


def test_the_budget_bounds_punches_in_total_and_per_target() -> None:
    budget = PunchBudget(per_minute=4, per_target_per_minute=2)
    assert [budget.allow("127.0.0.12", 0.0) for _ in range(3)] == [True, True, False]
    assert budget.allow("127.0.0.13", 0.0) and budget.allow("127.0.0.14", 0.0)
    assert not budget.allow("127.0.0.15", 0.0)  # the total is spent
    assert budget.refused == 2
    assert budget.allow("127.0.0.15", 15.0)  # one a quarter minute comes back
    assert not budget.allow("127.0.0.12", 15.0)  # the refusal spent nothing, but no refill yet
    assert budget.allow("127.0.0.12", 60.0)


# Tests name loopback addresses only: the scopes of the internet and of a LAN are given to a few
# of them here (`scope_of`), the classification itself is the standard library's.
SCOPES = {"127.0.0.20": 2, "127.0.0.21": 2, "127.0.0.10": 1, "127.0.0.11": 1}


def scope_of(host: str) -> int | None:
    return SCOPES.get(host, punch_rules.address_scope(host))


@pytest.mark.parametrize(
    ("target", "relay", "allowed"),
    [
        ("127.0.0.20", "127.0.0.21", True),  # "the internet", seen from the internet
        ("127.0.0.10", "127.0.0.21", False),  # a relay on the internet naming a LAN address
        ("127.0.0.1", "127.0.0.21", False),  # ... or the volunteer's own loopback
        ("::ffff:127.0.0.1", "127.0.0.21", False),
        ("127.0.0.10", "127.0.0.11", True),  # a relay on the LAN may have seen LAN addresses
        ("127.0.7.3", "127.0.7.1", True),  # all on one host
        ("224.0.0.1", "127.0.0.1", False),  # never multicast, broadcast or unspecified
        ("255.255.255.255", "127.0.0.11", False),
        ("0.0.0.0", "127.0.0.1", False),
        ("::", "::1", False),
        ("host.example", "127.0.0.1", False),
    ],
)
def test_a_relay_can_name_only_addresses_as_public_as_itself(
    target: str, relay: str, allowed: bool
) -> None:
    assert target_allowed(target, relay, scope=scope_of) is allowed


def test_scopes_of_the_standard_library() -> None:
    assert punch_rules.address_scope("127.0.0.1") == 0
    assert punch_rules.address_scope("::ffff:127.0.0.1") == 0
    assert punch_rules.address_scope("::1") == 0
    assert punch_rules.address_scope("224.0.0.1") is None
    assert punch_rules.address_scope("name") is None


def test_the_benchmark_range_is_the_labs_internet() -> None:
    # a lab relay with a global address (an IGD's WAN) must punch between peers on 198.18/15
    assert punch_rules.address_scope("198.18.0.20") == 2
    assert punch_rules.target_allowed("198.18.0.20", "100.128.0.15")
    assert punch_rules.address_scope("192.168.1.20") == 1


def test_path_labels() -> None:
    assert path_label("direct", "mapped") == "mapped"
    assert path_label("direct", "direct") == "direct"
    assert path_label("relayed", "relayed") == "relayed"
    assert path_label("hole-punched", "relayed") == "hole-punched"
    assert path_label(None, None) == "unknown"
