"""The lab itself: each NAT kind maps and filters the way its name says (checked with UDP from
real sockets in the namespaces), and nothing of a lab outlives it, a failed one included."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import PYTHON, child_env, skip_without_lab
from tests.netns.lab import PREFIX, Lab, open_lab, remove_leftovers
from tests.netns.lab_process import LabProcess

HOST_PORT = 40000
PEER_PORT = 5000
OTHER_PORT = 5001
WAIT_S = 15.0

# nat -> (one mapping for two destinations, source port kept, a contacted address's other port
# gets in, a stranger gets in)
BEHAVIOUR = {
    "full-cone": (True, True, True, True),
    "address-restricted": (True, True, True, False),
    "port-restricted": (True, True, False, False),
    "symmetric": (False, None, False, False),  # --random-fully: any port, one per destination
}


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split(" ", 1)[0] for line in listed.stdout.splitlines()}


def udp_peer(lab: Lab, ns: str, name: str, *ports: int) -> LabProcess:
    proc = lab.start(
        ns, [PYTHON, "-m", "tests.netns.udp_peer", *map(str, ports)], name=name, env=child_env()
    )
    proc.wait_json(lambda e: e["event"] == "bound", WAIT_S)
    return proc


def send(proc: LabProcess, local: int, ip: str, port: int, text: str) -> None:
    proc.send_line(f"send {local} {ip} {port} {text}")
    proc.wait_json(lambda e: e["event"] == "sent" and e["data"] == text, WAIT_S)


def received(proc: LabProcess, text: str) -> dict[str, Any]:
    return proc.wait_json(lambda e: e["event"] == "recv" and e["data"] == text, WAIT_S)


@pytest.mark.parametrize("nat", sorted(BEHAVIOUR))
def test_nat_maps_and_filters_as_named(lab: Lab, nat: str) -> None:
    home = lab.add_home(nat)
    a, b, stranger = (lab.add_internet_host() for _ in range(3))
    host = udp_peer(lab, home.host_ns, "host", HOST_PORT)
    peer_a = udp_peer(lab, a.ns, "a", PEER_PORT, OTHER_PORT)
    peer_b = udp_peer(lab, b.ns, "b", PEER_PORT)
    peer_s = udp_peer(lab, stranger.ns, "stranger", PEER_PORT)
    send(host, HOST_PORT, a.ip, PEER_PORT, "to-a")
    send(host, HOST_PORT, b.ip, PEER_PORT, "to-b")
    seen_a, seen_b = received(peer_a, "to-a")["from"], received(peer_b, "to-b")["from"]
    assert seen_a[0] == seen_b[0] == home.wan_ip
    one_mapping, keeps_port, contacted_gets_in, stranger_gets_in = BEHAVIOUR[nat]
    assert (seen_a[1] == seen_b[1]) is one_mapping
    if keeps_port is not None:
        assert (seen_a[1] == HOST_PORT) is keeps_port
    # Unsolicited datagrams to the mapping the host used towards a; after each, a reply from
    # the endpoint the host sent to (always let in) arrives behind it, so "not let in" is
    # seen without waiting for a timeout.
    send(peer_a, OTHER_PORT, home.wan_ip, seen_a[1], "a-other-port")
    send(peer_s, PEER_PORT, home.wan_ip, seen_a[1], "stranger")
    send(peer_a, PEER_PORT, home.wan_ip, seen_a[1], "reply")
    received(host, "reply")
    got = {line for line in host.seen if '"recv"' in line}
    assert any('"a-other-port"' in line for line in got) is contacted_gets_in
    assert any('"stranger"' in line for line in got) is stranger_gets_in


def test_upnp_router_runs_its_igd_and_masquerades(lab: Lab) -> None:
    home = lab.add_home("upnp")
    a = lab.add_internet_host()
    assert lab.processes[0].proc.poll() is None  # miniupnpd, started and ready
    host = udp_peer(lab, home.host_ns, "host", HOST_PORT)
    peer_a = udp_peer(lab, a.ns, "a", PEER_PORT)
    send(host, HOST_PORT, a.ip, PEER_PORT, "to-a")
    assert received(peer_a, "to-a")["from"][0] == home.wan_ip


def test_nothing_outlives_a_lab_even_a_failed_one(tmp_path: Path) -> None:
    skip_without_lab()
    with (
        pytest.raises(RuntimeError, match="the test body failed"),
        open_lab(tmp_path, ["port-restricted", "upnp"]) as lab,
    ):
        made = set(lab.namespaces)
        assert len(made) == 5 and made <= namespaces()
        daemon = lab.processes[0].proc
        raise RuntimeError("the test body failed")
    assert not made & namespaces()
    assert daemon.poll() is not None  # miniupnpd was stopped too


def test_a_crashed_labs_leftovers_are_removed_a_running_labs_are_not(tmp_path: Path) -> None:
    skip_without_lab()
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)  # a pid whose process has ended: a crashed lab's owner
    leftover = f"{PREFIX}{gone.pid}xdead00-inet"
    subprocess.run(["ip", "netns", "add", leftover], check=True, timeout=10)
    with open_lab(tmp_path) as running:
        assert leftover not in namespaces()  # removed when the lab opened
        subprocess.run(["ip", "netns", "add", leftover], check=True, timeout=10)
        assert remove_leftovers() == [leftover]  # the running lab's namespace stays
        assert running.internet_ns in namespaces()
