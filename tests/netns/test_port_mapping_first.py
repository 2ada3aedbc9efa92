"""Why a node maps its ports before its DHT sends anything, and that it does (the `upnp` home's
flake, docs/reachability.md "Map before joining").

On a Linux router (miniupnpd's home, the lab's `upnp` router) a datagram that reaches the
external port before the mapping exists creates a conntrack entry to the router itself. The
mapping's DNAT rule never applies to it: while that peer keeps sending, its datagrams never
reach the host, and the host's own datagrams to that peer are dropped once miniupnpd's
`MASQUERADE --to-ports` pins their source port (the reply tuple is taken). The first test shows
the router doing it (and a peer that first sends after the mapping getting through, the
control); the second that a `gpunet node` has its DHT port mapped while it is still joining.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import PYTHON, child_env
from tests.netns.lab import Lab, LabError
from tests.netns.lab_gpunet import DHT_PORT, start_bootstrap, start_node, wait_ready
from tests.netns.lab_process import LabProcess
from tests.netns.test_port_mapping import UDP_PORT, event, router_rules, start_probe

pytestmark = pytest.mark.slow

PEER_PORT = 42000
QUIET_S = 2.0  # how long "nothing arrives" is watched (the lab delivers in milliseconds)
MAPPED_WHILE_JOINING_S = 20.0  # the node's start (a tiny model) and its mapping, loaded machine


def _udp_peer(lab: Lab, ns: str, name: str) -> LabProcess:
    proc = lab.start(
        ns, [PYTHON, "-m", "tests.netns.udp_peer", str(PEER_PORT)], name=name, env=child_env()
    )
    proc.wait_json(lambda e: e.get("event") == "bound", 20)
    return proc


def _got(proc: LabProcess, data: str, timeout: float = QUIET_S) -> dict[str, Any] | None:
    """The datagram *data* as *proc* received it, or None when it did not come in *timeout*."""
    try:
        return proc.wait_json(lambda e: e.get("event") == "recv" and e["data"] == data, timeout)
    except RuntimeError:
        return None


def test_a_datagram_before_the_mapping_shadows_it_on_the_router(lab: Lab) -> None:
    home = lab.add_home("upnp")
    early, late = lab.add_internet_host(), lab.add_internet_host()
    early_peer, late_peer = _udp_peer(lab, early.ns, "early"), _udp_peer(lab, late.ns, "late")
    # A peer that learned the external port (from the bootstrap, say) sends before the mapping.
    early_peer.send_line(f"send {PEER_PORT} {home.wan_ip} {UDP_PORT} before")
    early_peer.wait_json(lambda e: e.get("event") == "sent", 10)
    probe = start_probe(lab, home, lease_s=3600, protocol="natpmp")
    assert event(probe, "mapped")["udp"] == UDP_PORT
    # The control: a peer that first sends after the mapping reaches the host, and back.
    late_peer.send_line(f"send {PEER_PORT} {home.wan_ip} {UDP_PORT} late-in")
    assert _got(probe, "late-in", 10) is not None
    probe.send_line(f"send {late.ip} {PEER_PORT} late-out")
    assert (_got(late_peer, "late-out", 10) or {}).get("from") == [home.wan_ip, UDP_PORT]
    # The early peer: neither way, although the mapping's rules are in place.
    early_peer.send_line(f"send {PEER_PORT} {home.wan_ip} {UDP_PORT} early-in")
    probe.send_line(f"send {early.ip} {PEER_PORT} early-out")
    assert f"--dport {UDP_PORT} -j ACCEPT" in router_rules(lab, home)
    assert _got(probe, "early-in") is None
    assert _got(early_peer, "early-out") is None
    probe.close_stdin()
    event(probe, "stopped")


def _dht_port_mapped(lab: Lab, router_ns: str) -> bool:
    try:
        rules = lab.run(router_ns, "iptables-legacy", "-t", "nat", "-S", "MINIUPNPD").stdout
    except LabError:
        return False
    return f"-p udp -m udp --dport {DHT_PORT} -j DNAT" in rules


def test_a_node_maps_its_dht_port_before_it_joins(
    lab: Lab, tmp_path: Path, make_tiny_gguf: Any
) -> None:
    from inference.model_file import inspect_gguf

    home = lab.add_home("upnp")
    model = make_tiny_gguf(tmp_path / "tiny.gguf", seed=7)
    sha = inspect_gguf(model).sha256
    started = time.monotonic()
    # No bootstrap is up yet: the node keeps retrying its join, and has sent nobody its
    # DHT port, while the router must already map it.
    volunteer = start_node(lab, home.host_ns, "upnp", model, sha, tmp_path / "d-upnp")
    deadline = started + MAPPED_WHILE_JOINING_S
    mapped = False
    while not mapped and time.monotonic() < deadline:  # a router's table: polled, bounded
        mapped = _dht_port_mapped(lab, home.router_ns)
        if not mapped:
            time.sleep(0.2)
    assert mapped, f"the router maps no UDP {DHT_PORT} while the node joins:\n" + (
        router_rules(lab, home)
    )
    assert volunteer.proc.poll() is None
    start_bootstrap(lab, model, sha, tmp_path / "d-boot")
    wait_ready(volunteer, home.host_ns, "upnp", sha, started)  # it joins once one answers
    assert _dht_port_mapped(lab, home.router_ns)
