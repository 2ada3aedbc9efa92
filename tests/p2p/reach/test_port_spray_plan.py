"""The port spray's sans-IO parts: who sprays (`role_for`, `PunchTicket.spray_role`), the odds,
the plan's numbers and targets, its budget, and the relay protocol's spray preambles, observed
line and `Circuit.peer_port` (with the bytes older peers see)."""

from __future__ import annotations

import random

import msgpack
import pytest

from p2p.reach.hole_punch import PunchTicket
from p2p.reach.port_spray import (
    MIN_SOCKETS,
    PORT_LOW,
    PORT_RANGE,
    Role,
    SprayBudget,
    SprayPlan,
    hit_probability,
    role_for,
)
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
    split_spray,
    spray_preamble,
)

TOKEN = bytes(range(TOKEN_BYTES))


def test_only_a_port_keeping_side_facing_a_port_changing_one_sprays() -> None:
    # (local, observed) of this side, then of the peer
    assert role_for(40000, 40000, 5000, 61234) is Role.SPRAYER
    assert role_for(40000, 51234, 5000, 5000) is Role.OPENER
    assert role_for(40000, 40000, 5000, 5000) is None  # both keep: the ordinary punch
    assert role_for(40000, 51234, 5000, 6000) is None  # both symmetric: out of reach
    assert role_for(40000, 40000, 0, 61234) is None  # an older peer told no port: no spray
    assert role_for(0, 40000, 5000, 61234) is None


def test_a_ticket_sprays_only_with_a_spray_lines_fields() -> None:
    base = PunchTicket("10.1.0.2", 40000, "198.18.0.12:61234")
    assert base.spray_role() is None  # CONNECT_PUNCH's ticket: the ordinary punch
    sprayer = PunchTicket("10.1.0.2", 40000, "198.18.0.12:61234", "198.18.0.11:40000", 5000)
    assert sprayer.spray_role() is Role.SPRAYER
    opener = PunchTicket("10.1.0.2", 40000, "198.18.0.12:5000", "198.18.0.11:777", 5000)
    assert opener.spray_role() is Role.OPENER
    assert PunchTicket("10.1.0.2", 40000, "bad", "198.18.0.11:40000", 5000).spray_role() is None
    # no NAT on the keeping side (the relay saw its own address): the ordinary punch there
    unnated = PunchTicket("198.18.0.11", 40000, "198.18.0.12:61234", "198.18.0.11:40000", 5000)
    assert unnated.spray_role() is Role.SPRAYER and unnated.role_here() is None
    assert sprayer.role_here() is Role.SPRAYER and opener.role_here() is Role.OPENER


def test_the_odds_follow_the_birthday_bound() -> None:
    assert hit_probability(256, 1024) == pytest.approx(1 - (1 - 256 / PORT_RANGE) ** 1024)
    assert 0.98 < SprayPlan().odds() < 0.99  # the defaults: N = 256, M = 1024
    assert 0.62 < hit_probability(256, 256) < 0.64
    assert 1 - hit_probability(256, 4096) < 1e-6  # the netns test's numbers
    assert hit_probability(0, 1024) == 0.0 and hit_probability(PORT_RANGE, 1) == 1.0


def test_the_sprayers_ports_are_distinct_in_the_nats_range_and_cut_into_waves() -> None:
    plan = SprayPlan(sprayer_ports=1000, wave_sockets=300)
    ports = plan.ports(random.Random(1))
    assert len(set(ports)) == 1000 and all(PORT_LOW <= p < 65536 for p in ports)
    assert ports != plan.ports(random.Random(2))
    waves = plan.waves_of(ports, 300)
    assert [len(w) for w in waves] == [300, 300, 300, 100] and plan.waves == 4
    assert [p for wave in waves for p in wave] == ports
    assert plan.window_s == pytest.approx(plan.lead_s + 4 * plan.wave_s + plan.settle_s)


def test_every_target_is_the_peers_observed_host() -> None:
    targets = SprayPlan.targets("198.18.0.11", [1024, 65535, 80, 70000])
    assert targets == [("198.18.0.11", 1024), ("198.18.0.11", 65535)]  # never below 1024
    with pytest.raises(ValueError):
        SprayPlan.targets("", [2000])


def test_sockets_stay_within_half_the_free_descriptors() -> None:
    plan = SprayPlan()
    assert plan.sockets_for(Role.OPENER, 10_000) == 256
    assert plan.sockets_for(Role.SPRAYER, 300) == 150
    assert plan.sockets_for(Role.OPENER, 2 * MIN_SOCKETS - 2) == 0  # not worth the SYNs
    assert plan.sockets_for(Role.SPRAYER, -5) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"opener_sockets": 0},
        {"sprayer_ports": PORT_RANGE + 1},
        {"wave_sockets": 0},
        {"wave_s": 0.0},
        {"lead_s": -1.0},
    ],
)
def test_a_plan_out_of_bounds_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SprayPlan(**kwargs)  # type: ignore[arg-type]


def test_the_budget_one_at_a_time_one_per_host_and_a_cap_an_hour() -> None:
    budget = SprayBudget(per_host_s=300.0, per_hour=3, at_once=1)
    assert budget.begin("198.18.0.11", 0.0)
    assert not budget.begin("198.18.0.12", 1.0)  # one at a time
    budget.end()
    assert not budget.begin("198.18.0.11", 2.0)  # the same host within 300 s
    assert budget.begin("198.18.0.12", 3.0)
    budget.end()
    assert budget.begin("198.18.0.11", 301.0)
    budget.end()
    assert not budget.begin("198.18.0.13", 302.0)  # three this hour
    assert budget.refused == 3
    assert budget.begin("198.18.0.13", 3601.0)  # the first one left the hour


def test_spray_preambles_carry_the_senders_local_port() -> None:
    key = bytes(range(32))
    connect = spray_preamble(Kind.CONNECT_SPRAY, key, 40001)
    reader = PreambleReader()
    assert reader.feed(connect.encode() + b"\x00\x20") == connect
    assert reader.remaining == b"\x00\x20"
    assert split_spray(connect) == (key, 40001)
    accept = spray_preamble(Kind.ACCEPT_SPRAY, TOKEN, 65535)
    assert split_spray(PreambleReader().feed(accept.encode()) or accept) == (TOKEN, 65535)
    assert split_spray(Preamble(Kind.ACCEPT, TOKEN)) == (TOKEN, 0)
    with pytest.raises(RelayProtocolError):
        spray_preamble(Kind.CONNECT_SPRAY, key, 0)
    with pytest.raises(RelayProtocolError):
        spray_preamble(Kind.CONNECT_PUNCH, key, 1)
    with pytest.raises(RelayProtocolError):
        split_spray(Preamble(Kind.ACCEPT_SPRAY, TOKEN + b"\x00\x00"))


def test_the_observed_line_takes_the_peers_port_as_a_third_field() -> None:
    line = Observed("[::1]:65535", "127.0.0.2:1", 40001)
    data = line.encode()
    assert len(data) - 1 <= MAX_OBSERVED
    assert ObservedReader().feed(data) == line
    plain = Observed("127.0.0.11:40001", "127.0.0.12:8469")
    text = b"127.0.0.11:40001 127.0.0.12:8469"
    assert plain.encode() == bytes((len(text),)) + text  # CONNECT_PUNCH's bytes, as before
    for bad in (
        b"1.2.3.4:5 1.2.3.4:6 0",
        b"1.2.3.4:5 1.2.3.4:6 65536",
        b"1.2.3.4:5 1.2.3.4:6 x",
        b"1.2.3.4:5 1.2.3.4:6 7 8",
    ):
        with pytest.raises(RelayProtocolError):
            ObservedReader().feed(bytes((len(bad),)) + bad)


def test_circuit_peer_port_is_optional_and_checked() -> None:
    circuit = Circuit(TOKEN, "127.0.0.3:40001", 40001)
    assert decode_control(encode_control(circuit)) == circuit
    old = encode_control(Circuit(TOKEN, "127.0.0.3:40001"))
    assert "peer_port" not in msgpack.unpackb(old)  # what older volunteers always got
    for fields in (
        {"t": "circuit", "token": TOKEN, "peer": "127.0.0.3:1", "peer_port": 0},
        {"t": "circuit", "token": TOKEN, "peer": "127.0.0.3:1", "peer_port": "1"},
        {"t": "circuit", "token": TOKEN, "peer_port": 5},  # a port without an address
    ):
        with pytest.raises(RelayProtocolError):
            decode_control(msgpack.packb(fields, use_bin_type=True))


def test_the_budget_runs_two_at_once_by_default() -> None:
    budget = SprayBudget()
    assert budget.begin("198.18.0.11", 0.0) and budget.begin("198.18.0.12", 0.1)
    assert not budget.begin("198.18.0.13", 0.2)  # a third waits for one to end
    budget.end()
    assert budget.begin("198.18.0.13", 0.3)
    budget.end(), budget.end()
    assert not budget.active
