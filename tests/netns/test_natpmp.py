"""NAT-PMP and PCP against a real gateway: Debian's miniupnpd on a lab router with UPnP off (the
lab's `natpmp` kind), so NAT-PMP or PCP is the only way to map a port there.

The holder's mapping must appear in the router's iptables chain and miniupnpd's lease file,
carry a TCP connection from the internet, be renewed, and be gone once the holder stops (also
when interrupted). A `gpunet node` behind that router is `mapped` and serves a client on the
internet directly, and its mappings are gone after it stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.model_file import inspect_gguf
from tests.netns.lab import Home, Lab
from tests.netns.lab_gpunet import (
    SESSION_PORT,
    ask,
    path_of,
    settled_records,
    start_bootstrap,
    start_node,
    wait_ready,
)
from tests.netns.test_port_mapping import (
    LEASE_S,
    TCP_PORT,
    UDP_PORT,
    event,
    fetch_from,
    router_rules,
    start_probe,
)


def leases(lab: Lab, home: Home) -> str:
    path = lab.work_dir / f"miniupnpd-{home.index}.leases"
    return path.read_text() if path.exists() else ""


def test_natpmp_mapping_appears_carries_a_connection_is_renewed_and_removed(lab: Lab) -> None:
    home = lab.add_home("natpmp")
    outside = lab.add_internet_host()
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == ""
    probe = start_probe(lab, home, protocol="natpmp")
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
    for proto, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
        assert f"-d {home.host_ip}/32 -p {proto} -m {proto} --dport {port} -j ACCEPT" in rules
    held = leases(lab, home)
    assert f"TCP:{TCP_PORT}:{home.host_ip}:{TCP_PORT}" in held, held
    assert f"UDP:{UDP_PORT}:{home.host_ip}:{UDP_PORT}" in held, held
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == "probe"
    assert event(probe, "mapped") == mapped  # renewed at half the lease
    probe.close_stdin()
    event(probe, "stopped")
    assert "--dport" not in router_rules(lab, home)
    assert f":{TCP_PORT}:" not in leases(lab, home)
    assert probe.proc.wait(timeout=10) == 0
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == ""


def test_an_interrupted_holder_removes_its_natpmp_mappings(lab: Lab) -> None:
    home = lab.add_home("natpmp")
    probe = start_probe(lab, home, lease_s=3600, protocol="natpmp")
    assert event(probe, "mapped")["lease_s"] == 3600
    assert f"--dport {TCP_PORT}" in router_rules(lab, home)
    probe.stop()  # SIGINT: the shielded cleanup still deletes both mappings
    assert "--dport" not in router_rules(lab, home)


def test_pcp_maps_and_removes_its_mappings(lab: Lab) -> None:
    home = lab.add_home("natpmp")  # miniupnpd answers PCP on NAT-PMP's port
    outside = lab.add_internet_host()
    probe = start_probe(lab, home, lease_s=3600, protocol="pcp")
    mapped = event(probe, "mapped")
    assert (mapped["external_ip"], mapped["tcp"], mapped["lease_s"]) == (
        home.wan_ip,
        TCP_PORT,
        3600,
    )
    assert any("PCP at" in line for line in probe.seen)
    assert f"TCP:{TCP_PORT}:{home.host_ip}:{TCP_PORT}" in leases(lab, home)
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == "probe"
    probe.close_stdin()
    event(probe, "stopped")
    assert "--dport" not in router_rules(lab, home)
    assert f":{TCP_PORT}:" not in leases(lab, home)


def test_the_race_maps_by_one_protocol_when_the_router_has_no_upnp(lab: Lab) -> None:
    home = lab.add_home("natpmp")
    probe = start_probe(lab, home, lease_s=3600, protocol="both")
    assert event(probe, "first")["mapped"] is True
    maps = [line for line in probe.seen if " -> " in line]  # the grant, not "maps by X already"
    assert len(maps) == 1 and "NAT-PMP at" in maps[0], maps  # PCP only where NAT-PMP is not
    assert f"--dport {TCP_PORT}" in router_rules(lab, home)
    probe.close_stdin()
    event(probe, "stopped")
    assert "--dport" not in router_rules(lab, home)


@pytest.mark.slow
def test_a_volunteer_behind_a_natpmp_router_is_mapped_and_served_directly(
    lab: Lab, tmp_path: Path, make_tiny_gguf: Callable[..., Path]
) -> None:
    model = make_tiny_gguf(tmp_path / "tiny.gguf", seed=7)
    sha = inspect_gguf(model).sha256
    boot_model = make_tiny_gguf(tmp_path / "boot.gguf", seed=8)
    start_bootstrap(lab, boot_model, inspect_gguf(boot_model).sha256, tmp_path / "d-boot")
    home = lab.add_home("natpmp")
    client = lab.add_internet_host()
    started = time.monotonic()
    proc = start_node(lab, home.host_ns, "natpmp", model, sha, tmp_path / "d-vol", extra=("-v",))
    node = wait_ready(proc, home.host_ns, "natpmp", sha, started)
    records = settled_records(lab, client.ns, tmp_path / "d-peers", 20.0)
    record = records.get(node.peer_id)
    assert path_of(record) == "mapped", record
    assert record is not None and f"{home.wan_ip}:{SESSION_PORT}" in record["addresses"]
    answer = ask(lab, client.ns, sha, tmp_path / "d-ask")
    assert answer.ok, answer.error
    paths = (answer.result or {}).get("paths") or [{}]
    assert paths[-1].get("path") == "mapped", answer.result
    assert f"--dport {SESSION_PORT}" in router_rules(lab, home)
    proc.stop()
    assert "--dport" not in router_rules(lab, home)
