"""Port mapping against a real UPnP-IGD: Debian's miniupnpd on a lab router namespace.

The mapping must appear in the router's own iptables chain, carry a TCP connection from the
internet to the host behind the NAT, be renewed before its lease ends, and be gone after the
holder stops. Without a router that answers, the holder says so in one line and keeps running.
"""

from __future__ import annotations

from typing import Any

from tests.netns.conftest import PYTHON, child_env
from tests.netns.lab import Home, Lab
from tests.netns.lab_process import LabProcess

UDP_PORT = 41000
TCP_PORT = 41001
LEASE_S = 3  # short, so that a renewal comes within the test (renewed at half the lease)
EVENT_TIMEOUT_S = 30.0


def start_probe(lab: Lab, home: Home, lease_s: int = LEASE_S, protocol: str = "upnp") -> LabProcess:
    args = [*map(str, (UDP_PORT, TCP_PORT, lease_s)), protocol]
    return lab.start(
        home.host_ns,
        [PYTHON, "-m", "tests.netns.port_mapping_probe", *args],
        name=f"probe-{home.index}",
        env=child_env(),
        merge_stderr=True,
    )


def event(proc: LabProcess, name: str) -> dict[str, Any]:
    return proc.wait_json(lambda e: e.get("event") == name, EVENT_TIMEOUT_S)


def router_rules(lab: Lab, home: Home) -> str:
    nat = lab.run(home.router_ns, "iptables-legacy", "-t", "nat", "-S", "MINIUPNPD").stdout
    flt = lab.run(home.router_ns, "iptables-legacy", "-t", "filter", "-S", "MINIUPNPD").stdout
    return nat + flt


def fetch_from(lab: Lab, ns: str, host: str, port: int) -> str:
    """What a TCP connection from namespace *ns* to host:port reads first."""
    code = (
        "import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5);"
        "print(s.recv(64).decode().strip())"
    )
    return lab.run(ns, PYTHON, "-c", code, host, str(port), check=False).stdout.strip()


def test_mapping_appears_carries_a_connection_is_renewed_and_removed(lab: Lab) -> None:
    home = lab.add_home("upnp")
    outside = lab.add_internet_host()
    # Before any mapping the router lets nothing in.
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == ""
    probe = start_probe(lab, home)
    mapped = event(probe, "mapped")
    assert mapped == {
        "event": "mapped",
        "external_ip": home.wan_ip,
        "udp": UDP_PORT,
        "tcp": TCP_PORT,
        "lease_s": LEASE_S,
    }
    assert event(probe, "first")["mapped"] is True
    rules = router_rules(lab, home)
    # (iptables >= 1.8.8 prints miniupnpd's DNAT target as "[unsupported revision]", so the
    # destination shows in the filter chain's rule)
    for proto, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
        assert f"-p {proto} -m {proto} --dport {port} -j DNAT" in rules
        assert f"-d {home.host_ip}/32 -p {proto} -m {proto} --dport {port} -j ACCEPT" in rules
    # From the internet, the router's external address and port lead to the host.
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == "probe"
    # Renewed before the lease ends: the same mapping again, still in the router's chain.
    assert event(probe, "mapped") == mapped
    assert f"-d {home.host_ip}/32 -p tcp -m tcp --dport {TCP_PORT}" in router_rules(lab, home)
    probe.close_stdin()
    event(probe, "stopped")
    rules = router_rules(lab, home)
    assert "--dport" not in rules, rules
    assert probe.proc.wait(timeout=10) == 0
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == ""


def test_cancelled_holder_removes_its_mappings(lab: Lab) -> None:
    home = lab.add_home("upnp")
    probe = start_probe(lab, home, lease_s=3600)
    assert event(probe, "mapped")["lease_s"] == 3600
    assert f"--dport {TCP_PORT}" in router_rules(lab, home)
    probe.stop()  # SIGINT: trio cancels everything, the shielded cleanup still runs
    assert "--dport" not in router_rules(lab, home)


def test_no_router_answering_is_one_clear_line_and_the_holder_keeps_running(lab: Lab) -> None:
    home = lab.add_home("port-restricted")  # a router without UPnP
    probe = start_probe(lab, home)
    line = probe.wait_line(lambda text: "port mapping" in text, EVENT_TIMEOUT_S)
    assert "no UPnP-IGD router answered" in line
    assert event(probe, "first")["mapped"] is False
    assert probe.proc.poll() is None
    # Still serving: a host on its own LAN reaches it.
    assert fetch_from(lab, home.router_ns, home.host_ip, TCP_PORT) == "probe"
    probe.close_stdin()
    event(probe, "stopped")
    assert not any('"event": "mapped"' in seen for seen in probe.seen)
