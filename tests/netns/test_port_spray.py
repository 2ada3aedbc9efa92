"""The port spray through real NATs (issue #15): a symmetric home (MASQUERADE --random-fully)
and a port-restricted one (MASQUERADE), both routers dropping unsolicited SYNs, which the
ordinary hole punch cannot join (tests/netns/test_hole_punch.py: it stays relayed). Here the two
peers learn their addresses from a reflector on the lab's internet (tests/netns/spray_probe.py
plays the relay's part of the exchange) and spray in the roles `port_spray.role_for` gives them,
in both directions of the Noise handshake.

Not flaky by construction: N = 256 opener sockets and M = 4096 sprayed ports give
P(miss) = (1 - 256/64512)^4096 ~ 8.6e-8 per round (`hit_probability`), asserted below.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2p.reach.port_spray import hit_probability
from tests.netns.lab import INTERNET_IP, Lab, open_lab, unavailable_reason
from tests.netns.lab_gpunet import child_env
from tests.netns.lab_process import ROOT

pytestmark = pytest.mark.slow

OPENER, PORTS, WAVE = 256, 4096, 512
ROUNDS = 2
REFLECTOR = f"{INTERNET_IP}:7000"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = unavailable_reason(("port-restricted", "symmetric"))
    if reason is not None:
        pytest.skip(reason)
    with open_lab(tmp_path, ("symmetric", "port-restricted")) as built:
        yield built


def _peer(lab: Lab, ns: str, side: str) -> subprocess.Popen[str]:
    args = ["peer", "--reflector", REFLECTOR, "--rounds", str(ROUNDS), f"--{side}"]
    args += ["--opener", str(OPENER), "--ports", str(PORTS), "--wave", str(WAVE), "--seed", "15"]
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.netns.spray_probe", *args]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=(lab.work_dir / f"spray-{side}.log").open("w"),
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


def _results(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("initiator_nat", ["symmetric", "port-restricted"])
def test_a_symmetric_and_a_port_restricted_home_meet_by_spraying(
    lab: Lab, initiator_nat: str
) -> None:
    assert 1 - hit_probability(OPENER, PORTS) < 1e-6
    symmetric, restricted = lab.homes
    initiator, responder = (
        (symmetric, restricted) if initiator_nat == "symmetric" else (restricted, symmetric)
    )
    reflect = ["ip", "netns", "exec", lab.internet_ns, sys.executable, "-m"]
    reflect += ["tests.netns.spray_probe", "reflect", "--listen", REFLECTOR]
    reflector = subprocess.Popen(
        [*reflect, "--rounds", str(ROUNDS)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    try:
        assert reflector.stdout is not None and reflector.stdout.readline().strip() == "listening"
        procs = {
            "initiator": _peer(lab, initiator.host_ns, "initiator"),
            "responder": _peer(lab, responder.host_ns, "responder"),
        }
        got = {side: _results(proc) for side, proc in procs.items()}
    finally:
        reflector.kill()
        reflector.wait(timeout=10)
    print(got)  # with -s: each round's role and how long the spray took
    wan = {"initiator": responder.wan_ip, "responder": initiator.wan_ip}
    for side, rounds in got.items():
        assert len(rounds) == ROUNDS
        home = initiator if side == "initiator" else responder
        role = "opener" if home is symmetric else "sprayer"
        for result in rounds:
            assert result["role"] == role and result["ok"], result
            # a direct TCP connection to the other home's router, not to the reflector
            assert result["remote"][0] == wan[side] != INTERNET_IP
            assert result["seconds"] < 8.0
