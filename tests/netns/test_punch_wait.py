"""A one-shot ask waits for its hole punch only where the punch can work (p2p/reach/
punch_odds.py, p2p/session/pool.py, punch_gate.py), through real NATs: a relay on the lab's
internet, a volunteer behind a port-restricted router (MASQUERADE: keeps the port, filters by
address and port) and one behind a symmetric router (MASQUERADE --random-fully: a new port per
destination), asked by fresh clients.

- The port-restricted volunteer from behind another port-restricted router (both NATs keep
  the port): the punch is predicted to work, the first request waits for it, and the FIRST
  request of a fresh `gpunet ask` goes hole-punched.
- The symmetric volunteer from behind another symmetric router: the relay sees other ports
  than both sockets have (the volunteer tells its own in its spray line), so nothing can
  punch: predicted not to work, the first request waits only the short bound, and the relay
  serves. (Symmetric <-> port-restricted is a port spray now: tests/netns/test_port_spray*.py.)

The wait is asserted as the pool reports it (its bound and what it waited), not on wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from inference.model_file import inspect_gguf
from p2p.session.pool import PUNCH_WAIT_LIKELY_S, PUNCH_WAIT_MAX_S
from tests.netns.lab import INTERNET_IP, Lab, open_lab, unavailable_reason
from tests.netns.lab_gpunet import BOOTSTRAP, LabNode, ask, start_node, wait_ready
from tests.netns.punch_wait_client import run_one_shot

pytestmark = pytest.mark.slow


@attrs.frozen
class Setup:
    lab: Lab
    volunteers: dict[str, LabNode]  # by the NAT kind of their home
    work: Path


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, make_tiny_gguf: Callable[..., Path]
) -> Iterator[Setup]:
    """One lab for both tests: the relay and the two volunteers start once."""
    reason = unavailable_reason(("port-restricted", "symmetric"))
    if reason is not None:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("punch-wait")
    relay_model = make_tiny_gguf(work / "tiny-relay.gguf", seed=311)
    relay_sha = inspect_gguf(relay_model).sha256
    with open_lab(work) as lab:
        started = time.monotonic()
        proc = start_node(
            lab, lab.internet_ns, "relay", relay_model, relay_sha, work / "d-relay",
            host=INTERNET_IP, bootstrap=None, extra=("-v",),
        )  # fmt: skip
        wait_ready(proc, lab.internet_ns, "relay", relay_sha, started)
        starting = []
        for seed, nat in ((312, "port-restricted"), (313, "symmetric")):
            model = make_tiny_gguf(work / f"tiny-{nat}.gguf", seed=seed)
            sha, ns = inspect_gguf(model).sha256, lab.add_home(nat).host_ns
            started = time.monotonic()
            proc = start_node(lab, ns, nat, model, sha, work / f"d-{nat}", extra=("-v",))
            starting.append((nat, proc, ns, sha, started))
        volunteers = {
            nat: wait_ready(proc, ns, nat, sha, at) for nat, proc, ns, sha, at in starting
        }
        yield Setup(lab, volunteers, work)


def test_a_punchable_pair_goes_hole_punched_on_the_first_request(setup: Setup) -> None:
    lab, volunteer = setup.lab, setup.volunteers["port-restricted"]
    client = lab.add_home("port-restricted").host_ns
    result = run_one_shot(lab, client, BOOTSTRAP, volunteer.model_sha256, peer_id=volunteer.peer_id)
    print(f"port-restricted <- port-restricted: {result}")  # with -s: the wait it took
    wait = result["wait"]
    assert wait is not None and wait["likely"], result
    assert wait["reason"] == "our NAT keeps the port"
    assert wait["bound_s"] == PUNCH_WAIT_LIKELY_S
    # the punch landed within the bound and ended the wait: the first request went direct
    assert wait["punched"] and wait["waited_s"] < wait["bound_s"], result
    assert result["path"] == "hole-punched" and result["tokens"] >= 1
    # the user's command, a fresh process from another home of the same kind: its only
    # request went on the punched session
    asked = ask(
        lab, lab.add_home("port-restricted").host_ns, volunteer.model_sha256, setup.work / "d-ask"
    )
    assert asked.ok and asked.result is not None, asked.error
    (segment,) = asked.result["paths"]
    assert segment == {"peer_id": volunteer.peer_id, "path": "hole-punched"}


def test_an_unpunchable_pair_goes_relayed_without_the_long_wait(setup: Setup) -> None:
    lab, volunteer = setup.lab, setup.volunteers["symmetric"]
    client = lab.add_home("symmetric").host_ns
    result = run_one_shot(lab, client, BOOTSTRAP, volunteer.model_sha256, peer_id=volunteer.peer_id)
    print(f"symmetric <- symmetric: {result}")
    wait = result["wait"]
    assert wait is not None and not wait["likely"], result
    assert wait["reason"] == "both NATs change the port"
    assert wait["bound_s"] <= PUNCH_WAIT_MAX_S < PUNCH_WAIT_LIKELY_S
    assert not wait["punched"] and result["path"] == "relayed" and result["tokens"] >= 1
