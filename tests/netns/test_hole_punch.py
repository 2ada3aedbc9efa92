"""Hole punching through real NATs (issue #15): a relay on the lab's internet, a volunteer and
a client each behind a home router that drops unsolicited SYNs, as most home routers do
(lab.py's `_forward_policy` says why). The client's first request goes through the relay,
which starts the punch; its second goes on whatever session its pool then holds for the
volunteer.

- Port-restricted NATs (MASQUERADE keeps the source port): the punch succeeds, and the second
  request's TCP peer is the volunteer's router (its WAN address), not the relay.
- Symmetric NATs (MASQUERADE --random-fully: a new port per destination): the addresses the
  relay observed are the wrong ports, the punch fails, and the request is served through the
  relay all the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.model_file import inspect_gguf
from tests.netns.lab import INTERNET_IP, Lab, open_lab, unavailable_reason
from tests.netns.lab_gpunet import BOOTSTRAP, SESSION_PORT, ask, start_node, wait_ready
from tests.netns.punch_helpers import run_client

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A lab for these NATs only (no nftables or miniupnpd needed), removed at the end."""
    reason = unavailable_reason(("port-restricted", "symmetric"))
    if reason is not None:
        pytest.skip(reason)
    with open_lab(tmp_path) as built:
        yield built


def _punch_between(
    lab: Lab,
    work: Path,
    make_tiny_gguf: Callable[..., Path],
    nat: str,
    volunteer_flags: tuple[str, ...] = (),
) -> tuple[dict[str, Any], str, str]:
    """Relay, volunteer (started with *volunteer_flags*) and client behind two *nat* homes; the
    client's result, the volunteer's router's WAN address, and the path `gpunet ask --json`
    from the client's home reports."""
    relay_model = make_tiny_gguf(work / "tiny-relay.gguf", seed=301)
    model = make_tiny_gguf(work / "tiny-volunteer.gguf", seed=302)
    relay_sha, sha = inspect_gguf(relay_model).sha256, inspect_gguf(model).sha256
    volunteer_home, client_home = lab.add_home(nat), lab.add_home(nat)
    started = time.monotonic()
    proc = start_node(
        lab,
        lab.internet_ns,
        "relay",
        relay_model,
        relay_sha,
        work / "d-relay",
        host=INTERNET_IP,
        bootstrap=None,
        extra=("-v",),
    )
    wait_ready(proc, lab.internet_ns, "relay", relay_sha, started)
    started = time.monotonic()
    proc = start_node(
        lab,
        volunteer_home.host_ns,
        "volunteer",
        model,
        sha,
        work / "d-v",
        extra=("-v", *volunteer_flags),
    )
    volunteer = wait_ready(proc, volunteer_home.host_ns, "volunteer", sha, started)
    result = run_client(lab, client_home.host_ns, BOOTSTRAP, volunteer.peer_id, sha)
    print(f"{nat}: {result}")  # with -s: the paths and how long the punch took
    asked = ask(lab, client_home.host_ns, sha, work / "d-ask")
    assert asked.ok and asked.result is not None, asked.error
    (segment,) = asked.result["paths"]
    assert segment["peer_id"] == volunteer.peer_id
    return result, volunteer_home.wan_ip, segment["path"]


def test_behind_port_restricted_nats_the_punch_goes_direct(
    lab: Lab, tmp_path: Path, make_tiny_gguf: Callable[..., Path]
) -> None:
    result, volunteer_wan, asked = _punch_between(lab, tmp_path, make_tiny_gguf, "port-restricted")
    # the first dial goes through the relay and waits a moment for its punch
    # (p2p/session/pool.py PUNCH_WAIT_DIALS), which usually lands within it
    assert result["first"] in ("relayed", "hole-punched")
    assert result["second"] == "hole-punched" and result["punched"] == 1, result
    host, port = result["remote"]
    assert host == volunteer_wan != INTERNET_IP  # the volunteer's router, not the relay
    assert port != SESSION_PORT  # the port of its relay connection, which the punch reused
    assert all(n >= 1 for n in result["tokens"]) and result["handshakes"] == 1
    # a one-shot ask: on the punched session when the punch landed within the short wait
    assert asked in ("relayed", "hole-punched")


def test_behind_symmetric_nats_the_punch_fails_and_the_relay_serves(
    lab: Lab, tmp_path: Path, make_tiny_gguf: Callable[..., Path]
) -> None:
    result, _, asked = _punch_between(lab, tmp_path, make_tiny_gguf, "symmetric")
    assert result["first"] == "relayed"
    assert result["second"] == "relayed" and result["punched"] == 0, result
    assert result["remote"] == [INTERNET_IP, SESSION_PORT]  # still the relay
    assert all(n >= 1 for n in result["tokens"])
    assert asked == "relayed"


def test_a_volunteer_with_no_hole_punch_stays_relayed_where_a_punch_would_work(
    lab: Lab, tmp_path: Path, make_tiny_gguf: Callable[..., Path]
) -> None:
    # the NATs of the first test, where the punch goes direct; `--no-hole-punch` on the
    # volunteer: it answers a plain ACCEPT, so the client starts no punch (and does not wait
    # for one), the volunteer never dials back, and every request is served through the relay
    result, _, asked = _punch_between(
        lab, tmp_path, make_tiny_gguf, "port-restricted", ("--no-hole-punch",)
    )
    assert result["second"] == "relayed" and result["punched"] == 0, result
    assert result["remote"] == [INTERNET_IP, SESSION_PORT]
    assert asked == "relayed"
