"""The punch prediction (p2p/reach/punch_odds.py) over the lab's NAT kinds, as a client sees
them at the relay's "ok": its socket, its and the volunteer's connections as the relay saw
them, and the hosts the volunteer's record lists. The lab's outcomes (docs/benchmarks.md,
"Direct share"): every pair punches except where one side changes the port and the other
filters by port.
"""

from __future__ import annotations

import pytest

from p2p.reach.punch_odds import (
    LIKELY_WAIT_S,
    PunchHistory,
    PunchOdds,
    RelaySeen,
    listed_hosts,
    predict,
    wait_bound,
)
from p2p.reach.relay_client import relay_seen
from p2p.reach.relay_protocol import Observed

CLIENT_LAN = "10.0.1.2:40000"
CLIENT_WAN = "198.51.100.7"
VOLUNTEER_WAN = "198.51.100.9"


def _seen(*, client: str, volunteer: str) -> RelaySeen:
    """The addresses of one relayed dial for a client behind *client* (a NAT kind or
    "internet") to a volunteer behind *volunteer* ("relayed": port-restricted or symmetric,
    whose record lists only its LAN; "address-restricted": its record lists its WAN host)."""
    if client == "internet":
        local = you = f"{CLIENT_WAN}:40000"
    elif client == "symmetric":
        local, you = CLIENT_LAN, f"{CLIENT_WAN}:61234"  # a new port per destination
    else:  # full cone, address- and port-restricted: MASQUERADE keeps the port
        local, you = CLIENT_LAN, f"{CLIENT_WAN}:40000"
    listed = {"10.0.2.2:8469"}
    if volunteer == "address-restricted":
        listed.add(f"{VOLUNTEER_WAN}:8469")  # a weak `direct` verdict: the observed host
    return RelaySeen(local, you, f"{VOLUNTEER_WAN}:51000", listed_hosts(listed))


@pytest.mark.parametrize(
    ("client", "volunteer", "likely"),
    [
        ("internet", "relayed", True),
        ("full-cone", "relayed", True),
        ("port-restricted", "relayed", True),
        ("symmetric", "relayed", False),  # symmetric -> port-restricted (or symmetric)
        ("symmetric", "address-restricted", True),  # the volunteer's any-port listener
        ("port-restricted", "address-restricted", True),
    ],
)
def test_the_lab_pairs(client: str, volunteer: str, likely: bool) -> None:
    odds = predict(_seen(client=client, volunteer=volunteer))
    assert odds.likely is likely, odds.reason


def _told(seen: RelaySeen, keeps: bool) -> RelaySeen:
    """*seen* from a volunteer that told the relay its local port (a spray line)."""
    return RelaySeen(seen.local, seen.you, seen.peer, seen.listed_hosts, peer_keeps_port=keeps)


@pytest.mark.parametrize(
    ("client", "volunteer_keeps", "likely", "reason"),
    [
        # exactly one NAT keeps the port: a port spray
        ("symmetric", True, True, "a port spray: one NAT keeps the port, the other does not"),
        (
            "port-restricted",
            False,
            True,
            "a port spray: one NAT keeps the port, the other does not",
        ),
        ("internet", False, True, "a port spray: one NAT keeps the port, the other does not"),
        # both change it: nothing works; both keep it: the ordinary punch
        ("symmetric", False, False, "both NATs change the port"),
        ("port-restricted", True, True, "our NAT keeps the port"),
    ],
)
def test_a_volunteer_that_told_its_port(
    client: str, volunteer_keeps: bool, likely: bool, reason: str
) -> None:
    odds = predict(_told(_seen(client=client, volunteer="relayed"), volunteer_keeps))
    assert (odds.likely, odds.reason) == (likely, reason)


def test_an_earlier_outcome_decides() -> None:
    seen = _seen(client="port-restricted", volunteer="relayed")
    assert not predict(seen, earlier=False).likely
    assert predict(_seen(client="symmetric", volunteer="relayed"), earlier=True).likely


def test_unreadable_addresses_predict_no_punch() -> None:
    # what the relay reported could not be read: nothing says the NAT keeps the port
    assert not predict(RelaySeen("", "", "")).likely
    assert not predict(RelaySeen("not an address", "x:y", "198.51.100.9:1")).likely


def test_ipv4_mapped_hosts_compare_equal() -> None:
    seen = RelaySeen(
        "[::ffff:10.0.1.2]:40000",
        "[::ffff:198.51.100.7]:61234",
        "[::ffff:198.51.100.9]:51000",
        listed_hosts(["198.51.100.9:8469", "bad"]),
    )
    assert seen.own_nat and not seen.own_keeps_port and seen.peer_listed
    assert predict(seen).likely


def test_the_wait_bound() -> None:
    assert wait_bound(PunchOdds(True, ""), 0.25) == LIKELY_WAIT_S
    assert wait_bound(PunchOdds(False, ""), 0.1) == 0.1
    assert wait_bound(PunchOdds(False, ""), -1.0) == 0.0


def test_the_history_is_per_peer_and_client_address_and_expires() -> None:
    history = PunchHistory(ttl_s=10.0, capacity=2)
    seen = _seen(client="port-restricted", volunteer="relayed")
    assert history.earlier("v1", seen, 0.0) is None
    history.note("v1", seen, False, 0.0)
    assert history.earlier("v1", seen, 5.0) is False
    assert history.earlier("v2", seen, 5.0) is None
    moved = RelaySeen(seen.local, "203.0.113.5:40000", seen.peer)  # another network
    assert history.earlier("v1", moved, 5.0) is None
    assert history.earlier("v1", seen, 10.5) is None  # expired
    history.note("v1", seen, True, 11.0)
    assert history.earlier("v1", seen, 12.0) is True
    history.note("v2", seen, True, 12.0)
    history.note("v3", seen, True, 12.0)  # over capacity: the least recently used goes
    assert history.earlier("v1", seen, 12.0) is None


@pytest.mark.parametrize(
    ("client", "volunteer", "likely", "reason"),
    [
        # a symmetric volunteer facing a port-keeping client: the line's port shows the
        # volunteer's NAT changed it, and the spray makes the pair punchable
        ("port-restricted", "symmetric", True, "a port spray"),
        ("full-cone", "symmetric", True, "a port spray"),
        ("internet", "symmetric", True, "a port spray"),
        ("symmetric", "port-restricted", True, "a port spray"),
        ("symmetric", "symmetric", False, "both NATs change the port"),
        ("port-restricted", "port-restricted", True, "our NAT keeps the port"),
    ],
)
def test_the_spray_lines_third_field_decides(
    client: str, volunteer: str, likely: bool, reason: str
) -> None:
    # the observed line after ACCEPT_SPRAY: PEER (the volunteer as the relay saw it) YOU PORT
    # (the volunteer's socket's port: 51000 where its NAT kept it, another where it did not)
    base = _seen(client=client, volunteer="relayed")
    told = 40111 if volunteer == "symmetric" else 51000
    seen = relay_seen(base.local, Observed(base.peer, base.you, told))
    assert seen.peer_keeps_port is (volunteer != "symmetric")
    odds = predict(seen)
    assert odds.likely is likely and odds.reason.startswith(reason), odds.reason


def test_a_line_without_the_port_leaves_the_volunteers_mapping_unknown() -> None:
    base = _seen(client="port-restricted", volunteer="relayed")
    assert relay_seen(base.local, Observed(base.peer, base.you)).peer_keeps_port is None
