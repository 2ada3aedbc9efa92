"""PCP mappings on a UPnP-and-PCP router, repeated (a NAT matrix run once saw the `upnp` home
lose all connectivity about 2 s after PCP mapped it; the node now maps by NAT-PMP there).

Each round builds a fresh `upnp` home (miniupnpd with UPnP, NAT-PMP and PCP), maps by PCP alone
(tests/netns/port_mapping_probe.py `pcp`), and checks for a few seconds after the grant that
the host still reaches the internet and the internet still reaches the mapped port. A round
that loses either fails with miniupnpd's log and the router's rules.

Both causes of the upnp home's flake are found (docs/reachability.md, "Map before joining"):
the lab's internet bridge changed its MAC when a home with a lower one joined (this probe adds
a home per round; caught it in 2 of 5 runs on 2026-12-01, `tests/netns/lab.py` `BRIDGE_MAC`
fixed it), and datagrams that reach the DHT port before its mapping (the node maps first now).
Their cheap, deterministic tests are tests/netns/test_port_mapping_gateway.py and
test_port_mapping_first.py; this minute-long probe runs only when asked (`GPUNET_FLAKE_HUNT=1`).
"""

from __future__ import annotations

import os
import time

import pytest

from tests.netns.conftest import PYTHON
from tests.netns.lab import Home, Lab
from tests.netns.lab_process import LabProcess
from tests.netns.test_port_mapping import TCP_PORT, event, fetch_from, router_rules, start_probe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("GPUNET_FLAKE_HUNT") != "1",
        reason="a minute-long repeat of the upnp-home checks; set GPUNET_FLAKE_HUNT=1 to run it",
    ),
]

ROUNDS = 10
WATCH_S = 4.0  # the flake came about 2 s after the grant


def _miniupnpd(lab: Lab, home: Home) -> LabProcess:
    name = f"miniupnpd-{home.index}.log"
    return next(p for p in lab.processes if p.log_path.name == name)


def _reaches_out(lab: Lab, home: Home, ip: str) -> bool:
    """Whether a TCP connect from the host to *ip* gets any answer (a refusal is one: nobody
    listens there; a timeout is none)."""
    code = (
        "import socket,sys\n"
        "try:\n socket.create_connection((sys.argv[1], 9), timeout=1)\n"
        "except ConnectionRefusedError:\n pass\n"
        "except OSError:\n sys.exit(1)\n"
    )
    return lab.run(home.host_ns, PYTHON, "-c", code, ip, check=False).returncode == 0


def test_pcp_mappings_keep_the_home_connected(lab: Lab) -> None:
    outside = lab.add_internet_host()
    for n in range(ROUNDS):
        home = lab.add_home("upnp")
        probe = start_probe(lab, home, lease_s=3600, protocol="pcp")
        assert event(probe, "mapped")["tcp"] == TCP_PORT
        granted = time.monotonic()
        checks = 0
        while time.monotonic() - granted < WATCH_S and checks < 20:
            checks += 1
            inbound = fetch_from(lab, outside.ns, home.wan_ip, TCP_PORT) == "probe"
            outbound = _reaches_out(lab, home, outside.ip)
            if not (inbound and outbound):
                log = _miniupnpd(lab, home).log_tail(20_000)
                pytest.fail(
                    f"round {n + 1}: {time.monotonic() - granted:.1f} s after the PCP grant "
                    f"inbound={inbound} outbound={outbound}\nrules:\n{router_rules(lab, home)}\n"
                    f"miniupnpd:\n{log}"
                )
        probe.close_stdin()
        event(probe, "stopped")
        assert "--dport" not in router_rules(lab, home)
