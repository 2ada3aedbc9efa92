"""The NAT matrix (issue #15): a volunteer behind each NAT behaviour of the lab serves `gpunet
ask` from a client on the internet and from a client behind another home NAT.

One lab for the module: the bootstrap node (which also serves, as the control pair) in the
internet namespace, one volunteer per NAT kind, each serving its own tiny GGUF (its sha256 picks
the volunteer), a client on the internet (198.18.0.2, an address the volunteers never talked
to) and a client behind a port-restricted NAT. All asks run at once; each pair is one test, and
the table printed in the terminal summary says for each pair whether it was served, the path
it went (`went`: what the client's `ask --json` reports: direct, mapped, hole-punched or
relayed) and what the
volunteer's record says (`says`: its `reach`, and the relays it names; a node whose only proof
is weak names relays as well).

`WAITING_FOR` names the volunteers whose pairs need parts of #15 not in yet: they are xfail
(not strict), so the matrix stays green and shows the state; remove an entry once its part
lands, and those pairs must be served from then on. It is empty: every pair must be served.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest

from crypto.identity import dht_node_id, public_key_from_peer_id
from inference.model_file import inspect_gguf
from tests.netns.conftest import MATRIX_TABLE, skip_without_lab
from tests.netns.lab import INTERNET_IP, Lab, open_lab
from tests.netns.lab_gpunet import (
    DHT_PORT,
    SESSION_PORT,
    Answer,
    LabNode,
    ask,
    listed_ids,
    path_of,
    settled_records,
    start_bootstrap,
    start_node,
    wait_ready,
)

pytestmark = pytest.mark.slow

VOLUNTEER_NATS = ("full-cone", "address-restricted", "port-restricted", "symmetric", "upnp")
VOLUNTEERS = ("internet", *VOLUNTEER_NATS)
CLIENTS = ("internet", "port-restricted")
TABLES_WAIT_S = 30.0  # how long nodes may still list a relayed volunteer after the asks
REACH_WAIT_S = 15.0  # how long records may say "unknown" before the asks go anyway
ASK_TIMEOUT_S = 20.0

# volunteer NAT -> why its pairs cannot be served yet (all clients alike). Every kind is served
# since #15: the address-restricted home since a dial-back from a contacted helper counts as weak
# proof, and a node with weak proof holds relays too (docs/reachability.md).
WAITING_FOR: dict[str, str] = {}


@attrs.frozen
class Matrix:
    lab: Lab
    volunteers: dict[str, LabNode]
    answers: dict[tuple[str, str], Answer]
    records: dict[str, dict[str, Any]]
    went: dict[tuple[str, str], str]


def _tiny_models(folder: Path, make: Callable[..., Path]) -> dict[str, tuple[Path, str]]:
    """One tiny GGUF per volunteer (different seeds: different sha256s)."""
    out = {}
    for seed, label in enumerate(VOLUNTEERS):
        path = make(folder / f"tiny-{label}.gguf", seed=100 + seed)
        out[label] = (path, inspect_gguf(path).sha256)
    return out


def _start_network(lab: Lab, work: Path, models: dict[str, tuple[Path, str]]) -> dict[str, LabNode]:
    homes = {nat: lab.add_home(nat) for nat in VOLUNTEER_NATS}
    path, sha = models["internet"]
    nodes = {"internet": start_bootstrap(lab, path, sha, work / "d-internet", ("-v",))}
    waiting = []
    for nat, home in homes.items():
        path, sha = models[nat]
        proc = start_node(lab, home.host_ns, nat, path, sha, work / f"d-{nat}", extra=("-v",))
        waiting.append((proc, home.host_ns, nat, sha, time.monotonic()))
    for proc, ns, nat, sha, at in waiting:
        nodes[nat] = wait_ready(proc, ns, nat, sha, at)
    return nodes


@pytest.fixture(scope="module")
def matrix(
    tmp_path_factory: pytest.TempPathFactory, make_tiny_gguf: Callable[..., Path]
) -> Iterator[Matrix]:
    skip_without_lab()
    work = tmp_path_factory.mktemp("nat-matrix")
    models = _tiny_models(work, make_tiny_gguf)
    with open_lab(work) as lab:
        volunteers = _start_network(lab, work, models)
        internet_client = lab.add_internet_host()
        client_home = lab.add_home("port-restricted")
        client_ns = {"internet": internet_client.ns, "port-restricted": client_home.host_ns}
        records = settled_records(lab, internet_client.ns, work / "d-peers", REACH_WAIT_S)
        pairs = [(v, c) for v in VOLUNTEERS for c in CLIENTS]
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {
                (v, c): pool.submit(
                    ask,
                    lab,
                    client_ns[c],
                    volunteers[v].model_sha256,
                    work / f"d-ask-{v}-{c}",
                    timeout_s=ASK_TIMEOUT_S,
                )
                for v, c in pairs
            }
            answers = {pair: f.result() for pair, f in futures.items()}
        by_label = {label: records.get(node.peer_id, {}) for label, node in volunteers.items()}
        client_ip = {"internet": internet_client.ip, "port-restricted": client_home.wan_ip}
        went = {
            (v, c): _went(volunteers[v], client_ip[c], by_label[v], answers[(v, c)])
            for v, c in pairs
        }
        MATRIX_TABLE[:] = _table(answers, by_label, went)
        yield Matrix(lab, volunteers, answers, by_label, went)


def _went(node: LabNode, client_ip: str, record: dict[str, Any], answer: Answer) -> str:
    """The path a pair's request took: what `gpunet ask --json` says its last segment went
    (direct / mapped / hole-punched / relayed), checked against the volunteer's log (`-v`:
    each inbound TCP connection is logged with its source, p2p/reach/node_tasks.py
    PATHS_LOGGER): a connection from the client's address is a direct, mapped or punched path;
    none, and served, is a relay."""
    if not answer.ok:
        return "-"
    paths = (answer.result or {}).get("paths") or ()
    if paths:
        return str(paths[-1]["path"])
    log = node.process.log_tail(2_000_000)
    if re.search(rf"inbound tcp from {re.escape(client_ip)}\b", log):
        return "mapped" if path_of(record) == "mapped" else "direct"
    return "relayed"


def _says(record: dict[str, Any] | None) -> str:
    relays = len((record or {}).get("relays") or ())
    return path_of(record) + (f"+{relays}r" if relays else "")


def _table(
    answers: dict[tuple[str, str], Answer],
    records: dict[str, dict[str, Any]],
    went: dict[tuple[str, str], str],
) -> list[str]:
    """One line per pair: served, the path it went, what the volunteer's record says."""
    head = (
        f"{'volunteer behind':<20} {'client from':<17} {'served':<7} {'went':<12} {'says':<11} "
        f"{'s':>5}  why"
    )
    lines = [head]
    for (v, c), a in answers.items():
        served = "yes" if a.ok else "NO"
        lines.append(
            f"{v:<20} {c:<17} {served:<7} {went[(v, c)]:<12} {_says(records.get(v)):<11} "
            f"{a.took_s:5.1f}  {a.error[:160]}"
        )
    kinds = ("direct", "mapped", "hole-punched", "relayed")
    counts = {w: sum(1 for x in went.values() if x == w) for w in kinds}
    lines.append(", ".join(f"{n} {w}" for w, n in counts.items()) + f" of {len(went)} pairs")
    return lines


def _pair_params() -> list[Any]:
    params = []
    for v in VOLUNTEERS:
        for c in CLIENTS:
            marks = []
            if v in WAITING_FOR:
                marks.append(pytest.mark.xfail(strict=False, reason=WAITING_FOR[v]))
            params.append(pytest.param(v, c, id=f"{v}<-{c}", marks=marks))
    return params


@pytest.mark.parametrize(("volunteer", "client"), _pair_params())
def test_every_pair_is_served(matrix: Matrix, volunteer: str, client: str) -> None:
    answer = matrix.answers[(volunteer, client)]
    if not answer.ok:  # the volunteer's own account of it, for whoever reads a failed run
        tail = matrix.volunteers[volunteer].process.log_tail(6_000)
        pytest.fail(f"{volunteer} <- {client}: {answer.error}\nvolunteer's log:\n{tail}")
    assert answer.result is not None and answer.result["completion_tokens"] >= 1


def test_the_upnp_volunteer_maps_its_ports_on_the_router(matrix: Matrix) -> None:
    home = next(h for h in matrix.lab.homes if h.nat == "upnp")
    node = matrix.volunteers["upnp"]
    rules = matrix.lab.run(home.router_ns, "iptables-legacy", "-S", "MINIUPNPD").stdout
    assert f"-d {home.host_ip}/32 -p tcp -m tcp --dport {SESSION_PORT} -j ACCEPT" in rules
    assert f"maps {home.wan_ip} UDP" in node.process.log_tail(100_000)


def test_a_volunteer_without_upnp_says_so_once_and_keeps_serving(matrix: Matrix) -> None:
    node = matrix.volunteers["internet"]  # a plain host: no router that speaks UPnP
    log = node.process.log_tail(100_000)
    assert log.count("no UPnP-IGD router answered") == 1
    assert node.process.proc.poll() is None
    assert matrix.answers[("internet", "internet")].ok


def test_the_table_says_which_path_each_pair_went(matrix: Matrix) -> None:
    assert all(w in ("direct", "mapped", "hole-punched", "relayed") for w in matrix.went.values())
    for client in CLIENTS:
        assert matrix.went[("full-cone", client)] == "direct"
        assert matrix.went[("internet", client)] == "direct"
        # strangers are filtered by address: served through the relays a weak proof keeps, or
        # directly once a hole punch through them opened the router (p2p/reach/hole_punch.py)
        log = matrix.volunteers["address-restricted"].process.log_tail(2_000_000)
        went = matrix.went[("address-restricted", client)]
        assert went in ("relayed", "hole-punched") or (went == "direct" and "hole-punched" in log)
    assert any(line.startswith("address-restricted") for line in MATRIX_TABLE)


def _dht_id(node: LabNode) -> bytes:
    return dht_node_id(public_key_from_peer_id(node.peer_id))


def test_a_relayed_volunteer_is_in_no_routing_table_and_a_direct_one_is(matrix: Matrix) -> None:
    """Client-only membership (docs/reachability.md): every node is asked, from its own
    namespace, whether its routing table lists the volunteers. A relayed one (served above
    all the same) must be in none and answer as a client-only member; the full-cone one
    (direct) must be in the bootstrap's."""
    relayed = [v for v, r in matrix.records.items() if path_of(r) == "relayed"]
    assert relayed, f"no volunteer says relayed: {matrix.records}"
    ids = {v: _dht_id(matrix.volunteers[v]) for v in (*relayed, "full-cone")}
    hexes = {i.hex(): v for v, i in ids.items()}
    listing: dict[str, list[str]] = {}
    client_only: dict[str, bool] = {}
    deadline = time.monotonic() + TABLES_WAIT_S
    for _ in range(30):  # each round is one probe process per node: seconds
        listing = {}
        for label, node in matrix.volunteers.items():
            host = INTERNET_IP if label == "internet" else "127.0.0.1"
            seen = listed_ids(matrix.lab, node.ns, f"{host}:{DHT_PORT}", list(ids.values()))
            assert seen["answered"], f"{label}'s DHT did not answer the probe"
            client_only[label] = seen["client_only"]
            listing[label] = [hexes[h] for h in seen["listed"]]
        stale = {label: [v for v in got if v in relayed] for label, got in listing.items()}
        if not any(stale.values()) or time.monotonic() > deadline:
            break
    print(f"routing tables listing {sorted(ids)}: {listing}; client-only: {client_only}")
    for label, got in listing.items():
        assert not [v for v in got if v in relayed], f"{label} still lists relayed {got}"
    assert "full-cone" in listing["internet"]
    assert {v for v, on in client_only.items() if on} == set(relayed)
