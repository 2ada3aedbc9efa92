"""The port spray with real gpunet nodes (issue #15): a relay on the lab's internet, a volunteer
behind a symmetric NAT and a client behind a port-restricted one, and the reverse. The ordinary
punch cannot join these (tests/netns/test_hole_punch.py); with the relay's spray lines
(relay_protocol.py: CONNECT_SPRAY / ACCEPT_SPRAY) the two sides spray (p2p/reach/spray.py) and
the client's second request goes on a hole-punched session whose TCP peer is the volunteer's
router, not the relay.

The default plan (N = 256, M = 1024) misses 1.7 % of sprays; the client's second request is
retried on a fresh relayed dial once when the first spray missed (a fresh client process, so
its own spray budget is fresh; the volunteer's refuses a second spray to the same host within a
minute and punches the ordinary way, which cannot join these NATs: the retry helps only where
the first spray failed on the client's side).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inference.model_file import inspect_gguf
from tests.netns.lab import INTERNET_IP, Lab, open_lab, unavailable_reason
from tests.netns.lab_gpunet import BOOTSTRAP, start_node, wait_ready
from tests.netns.punch_helpers import run_client

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = unavailable_reason(("port-restricted", "symmetric"))
    if reason is not None:
        pytest.skip(reason)
    with open_lab(tmp_path) as built:
        yield built


@pytest.mark.parametrize(
    ("volunteer_nat", "client_nat"),
    [("symmetric", "port-restricted"), ("port-restricted", "symmetric")],
)
def test_a_symmetric_and_a_port_restricted_end_go_direct_by_spraying(
    lab: Lab,
    tmp_path: Path,
    make_tiny_gguf: Callable[..., Path],
    volunteer_nat: str,
    client_nat: str,
) -> None:
    relay_model = make_tiny_gguf(tmp_path / "tiny-relay.gguf", seed=311)
    model = make_tiny_gguf(tmp_path / "tiny-volunteer.gguf", seed=312)
    relay_sha, sha = inspect_gguf(relay_model).sha256, inspect_gguf(model).sha256
    volunteer_home, client_home = lab.add_home(volunteer_nat), lab.add_home(client_nat)
    started = time.monotonic()
    proc = start_node(
        lab,
        lab.internet_ns,
        "relay",
        relay_model,
        relay_sha,
        tmp_path / "d-relay",
        host=INTERNET_IP,
        bootstrap=None,
        extra=("-v",),
    )
    wait_ready(proc, lab.internet_ns, "relay", relay_sha, started)
    started = time.monotonic()
    proc = start_node(
        lab, volunteer_home.host_ns, "volunteer", model, sha, tmp_path / "d-v", extra=("-v",)
    )
    volunteer = wait_ready(proc, volunteer_home.host_ns, "volunteer", sha, started)
    for _attempt in range(2):  # a spray misses 1.7 % of the time at the default plan
        result = run_client(lab, client_home.host_ns, BOOTSTRAP, volunteer.peer_id, sha)
        print(f"{volunteer_nat} volunteer, {client_nat} client: {result}")
        if result["second"] == "hole-punched":
            break
    assert result["second"] == "hole-punched" and result["punched"] == 1, result
    host, _port = result["remote"]
    assert host == volunteer_home.wan_ip != INTERNET_IP  # the volunteer's router, not the relay
    assert all(n >= 1 for n in result["tokens"])
