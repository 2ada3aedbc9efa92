"""The `upnp` home's mapped port stays reachable while the lab grows (the other half of the upnp
home's flake, docs/reachability.md "Map before joining").

The lab's internet is a Linux bridge, which, unless given a MAC of its own, takes the lowest MAC
among its ports: a home added later with a lower one changed the gateway's MAC under every host
that had cached it, and the bridge drops frames to the old one (not its address any more) until
those hosts' neighbour entries expire. The `upnp` router reaches everything through that gateway
(its WAN is on the IGD subnet), so it lost all its traffic for seconds; `tests/netns/
test_pcp_repeat.py` saw it as a mapped port unreachable right after a grant. Here a home joins
with the lowest possible MAC while an internet host talks to the mapped port.
"""

from __future__ import annotations

from tests.netns.lab import BRIDGE_MAC, Lab
from tests.netns.test_port_mapping import TCP_PORT, event, fetch_from, start_probe

LOW_MAC, LOWEST_MAC = "00:00:00:00:00:02", "00:00:00:00:00:01"


def _bridge_mac(lab: Lab) -> str:
    out = lab.run(lab.internet_ns, "cat", "/sys/class/net/br0/address").stdout
    return out.strip()


def test_a_home_joining_with_a_lower_mac_leaves_the_gateway_and_the_mapping_alone(
    lab: Lab,
) -> None:
    home = lab.add_home("upnp")
    # Without a MAC of its own the bridge would take this one (its lowest port's); the
    # internet host's frames to it then arrive on another port (a frame to the receiving
    # port's own MAC would be taken whatever the bridge's MAC is).
    lab.run(lab.internet_ns, "ip", "link", "set", f"h{home.index}", "address", LOW_MAC)
    outside = lab.add_internet_host()
    probe = start_probe(lab, home, lease_s=3600, protocol="natpmp")
    assert event(probe, "mapped")["tcp"] == TCP_PORT
    # The internet host and the router now have the gateway's MAC in their neighbour tables.
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == "probe"
    late = lab.add_home("port-restricted")
    lab.run(lab.internet_ns, "ip", "link", "set", f"h{late.index}", "address", LOWEST_MAC)
    assert _bridge_mac(lab) == BRIDGE_MAC
    assert fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == "probe"
    probe.close_stdin()
    event(probe, "stopped")
