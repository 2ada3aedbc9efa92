"""What a dial-back proves, sans-IO: the hosts a node sent to (bounded, never forgetting into false
proof), which inbound connections count as a stranger's, when a node holds relays (weak proof,
a LAN address before the first verdict), which address it publishes, how helpers are ranked,
and the helper's limit letting a re-check on a newly mapped port through."""

from __future__ import annotations

import attrs

from crypto.identity import Identity
from p2p.dht.records import CapabilityRecord, RelayHint
from p2p.reach.node_tasks import candidates, usable_host
from p2p.reach.reachability import PORTS_PER_ADDRESS, DialBackLimiter, ReachResult
from p2p.reach.state import ReachState
from p2p.reach.strangers import ContactedHosts, canonical_host, proves_strangers_reach
from tests.p2p.dht.test_records import make_record

NOW = 1_000_000.0
RELAY = RelayHint(Identity.generate().peer_id, "127.0.1.1:8469")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_host_sent_to_is_no_stranger_until_its_memory_ends() -> None:
    clock = Clock()
    hosts = ContactedHosts(memory_s=60.0, clock=clock)
    assert hosts.is_stranger("198.18.0.7")
    hosts.sent("198.18.0.7")
    assert not hosts.is_stranger("198.18.0.7")
    assert not hosts.is_stranger("::ffff:198.18.0.7")  # one spelling per address
    assert hosts.is_stranger("198.18.0.8")
    clock.now += 61.0
    assert hosts.is_stranger("198.18.0.7")
    assert canonical_host("[FE80::1%eth0]") == "fe80::1"


def test_an_overflow_never_turns_into_false_proof() -> None:
    clock = Clock()
    hosts = ContactedHosts(max_hosts=4, memory_s=60.0, clock=clock)
    for i in range(5):  # the fifth pushes out a host the router may still remember
        hosts.sent(f"198.18.1.{i}")
    assert len(hosts) == 4 and hosts.overflows == 1
    assert not hosts.is_stranger("198.18.1.0")  # forgotten, yet not called a stranger
    assert not hosts.is_stranger("198.18.9.9")  # nor is anyone, while the router may remember
    clock.now += 61.0
    assert hosts.is_stranger("198.18.9.9")


def test_only_a_strangers_connection_from_outside_the_network_is_proof() -> None:
    hosts = ContactedHosts()
    hosts.sent("198.18.0.1")  # a helper this node asked
    assert proves_strangers_reach("198.18.0.2", "10.1.0.2", hosts)
    assert not proves_strangers_reach("198.18.0.1", "10.1.0.2", hosts)  # the helper it asked
    assert not proves_strangers_reach("10.1.0.3", "10.1.0.2", hosts)  # a LAN neighbour
    assert not proves_strangers_reach("10.7.3.3", "10.1.0.2", hosts)  # the site's next subnet
    assert not proves_strangers_reach("100.64.9.9", "10.1.0.2", hosts)  # behind the same CGNAT
    assert not proves_strangers_reach("127.0.0.1", "10.1.0.2", hosts)  # a local process
    assert not proves_strangers_reach("198.18.0.12", "10.1.0.2", hosts, "198.18.0.12")  # hairpin
    assert not proves_strangers_reach("?", "10.1.0.2", hosts)
    assert proves_strangers_reach("127.0.8.1", "127.0.7.1", hosts)  # loopback tests: other /24


def test_weak_proof_holds_relays_and_a_stranger_lets_them_go() -> None:
    state = ReachState()
    bind = "198.18.0.12:8469"
    state.set_result(ReachResult("direct", "198.18.0.12", 2, weak=True))
    state.set_relays([RELAY])
    assert state.wants_relays
    assert state.published_addresses(bind) == (bind,)
    assert state.published_relays() == (RELAY,)  # direct address first, relays as fallback
    version = state.version
    state.note_stranger()
    assert state.version > version and not state.wants_relays
    assert state.published_relays() == ()
    # a verdict on another network: what strangers did there says nothing here
    state.set_result(ReachResult("direct", "203.0.113.9", 1, weak=True))
    assert state.wants_relays
    # "relayed" wins over any stranger: the helpers could not get through
    state.note_stranger()
    state.set_result(ReachResult("relayed", "203.0.113.9", 3))
    assert state.wants_relays


def test_before_its_first_verdict_a_node_on_a_lan_address_holds_relays() -> None:
    lan, public, lonely = ReachState(), ReachState(), ReachState()
    lan.learn_local_host("10.3.0.2")
    public.learn_local_host("198.18.0.1")
    lonely.learn_local_host("127.0.0.1")  # not learnt: loopback says nothing
    assert lan.wants_relays and not public.wants_relays and not lonely.wants_relays
    assert lonely.local_host is None
    lan.set_result(ReachResult("direct", "198.18.0.11", 1, weak=True))
    assert lan.wants_relays and not lan.client_only  # weak proof: strangers may be filtered
    lan.note_stranger()
    assert not lan.wants_relays
    lan.set_result(ReachResult("relayed", "198.18.0.11", 1))
    assert lan.client_only


def test_a_wildcard_bound_node_publishes_its_lan_address_not_loopback() -> None:
    state = ReachState()
    state.set_result(ReachResult("relayed", "198.18.0.14", 3, local_host="10.4.0.2"))
    assert state.published_addresses("127.0.0.1:8469") == ("10.4.0.2:8469",)
    state.set_mapped("100.128.0.15", 8469)
    state.set_result(ReachResult("mapped", "100.128.0.15", 3, weak=True, local_host="10.4.0.2"))
    assert state.published_addresses("127.0.0.1:8469") == ("100.128.0.15:8469", "10.4.0.2:8469")
    # a node bound to loopback on purpose keeps it (tests, a node for this machine only)
    bound = ReachState()
    bound.set_result(ReachResult("relayed", "127.0.0.9", 1, local_host="127.0.0.9"))
    assert bound.published_addresses("127.0.0.9:8469") == ("127.0.0.9:8469",)


def test_a_wildcard_bind_takes_the_address_its_route_to_the_bootstrap_leaves_from() -> None:
    assert usable_host("127.0.3.1", "127.0.3.1", [("127.0.9.9", 1)]) == "127.0.3.1"
    picked = usable_host("0.0.0.0", "203.0.113.1", [("boot.example", 1), ("127.0.9.9", 1)])
    assert picked.startswith("127.")  # the route's source, not the hostname's address
    assert usable_host("0.0.0.0", "203.0.113.1", []) == "203.0.113.1"


def test_helpers_with_strong_proof_come_before_weak_ones_and_relayed_never() -> None:
    def record(reach: str, relays: tuple[RelayHint, ...] = ()) -> CapabilityRecord:
        return attrs.evolve(make_record(Identity.generate(), now=NOW), reach=reach, relays=relays)

    weak = record("direct", (RELAY,))
    fresh_behind_nat = record("unknown", (RELAY,))
    unknown = record("unknown")
    mapped = record("mapped")
    strong = record("direct")
    relayed = record("relayed", (RELAY,))
    on_a_lan = attrs.evolve(record("direct"), addresses=("10.9.0.2:8469",))  # another home's
    pool = [fresh_behind_nat, relayed, on_a_lan, weak, unknown, mapped, strong]
    ranked = candidates(pool, "me")
    expected = [strong, mapped, weak, unknown, fresh_behind_nat, on_a_lan]
    assert [h.peer_id for h in ranked] == [r.peer_id for r in expected]


def test_a_recheck_on_a_newly_mapped_port_goes_through_and_a_scan_does_not() -> None:
    limiter = DialBackLimiter()
    address = "198.18.0.20"

    def ask(peer: str, port: int, now: float = NOW) -> bool:
        admitted = limiter.admit(peer, address, now, port=port)
        if admitted:
            limiter.done()
        return admitted

    assert ask("peer", 8469)  # the check at start, on the node's own port
    assert not ask("peer", 8469) and not ask("another id", 8469)  # the same port again: no
    assert ask("peer", 40001)  # the re-check on the port the router just mapped
    # a scan of the address's ports, under any number of peer ids: a few, then one per 30 s
    scanned = sum(ask(f"id{port}", port) for port in range(20000, 20100))
    assert scanned == int(PORTS_PER_ADDRESS) - 2
    assert ask("peer", 8469, NOW + 30.0)
