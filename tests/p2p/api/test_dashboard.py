"""The dashboard page in headless Chromium against a live network (two named nodes and the
gateway, and a third node that leaves): names shown as text, context and free slots from the
records, the charts' points after requests, and a stopped node shown offline.

Chromium is Debian's `chromium` package (CI installs it). Without it these tests fail, saying so:
a dashboard that was never rendered is not a tested dashboard.
"""

from __future__ import annotations

import html.parser
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from inference.model_file import inspect_gguf
from p2p.api.dashboard import render_page
from p2p.node.config import NodeConfig, NodeReady
from p2p.node.runtime import run_node
from tests.p2p.api.test_gateway import LiveNetwork

CHROMIUM_TIMEOUT_S = 90
PHONE = "390,844"  # CSS pixels of a common phone in portrait
# A stranger's name that would be an element if it were inserted as HTML.
HOSTILE_NAME = "rack <img src=x onerror=alert(1)> 7"
LEAVING_TTL_S = 6.0  # the leaving node's record lapses this soon after its last publish
STATE_TIMEOUT_S = 40.0


class NamedNetwork(LiveNetwork):
    """LiveNetwork's nodes, each with a name (--name)."""

    def node_configs(self) -> list[NodeConfig]:
        a, b = super().node_configs()
        return [attrs.evolve(a, name=HOSTILE_NAME), attrs.evolve(b, name="busy box")]


@pytest.fixture(scope="module")
def net(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_gguf: Path,
    make_tiny_gguf: Callable[..., Path],
) -> Iterator[LiveNetwork]:
    busy = make_tiny_gguf(tmp_path_factory.mktemp("busy") / "tiny-busy.gguf", seed=7)
    network = NamedNetwork(tmp_path_factory.mktemp("net"), tiny_gguf, busy, api_key=None)
    try:
        yield network
    finally:
        network.stop()


class LeavingNode:
    """One more node on its own thread and trio run, that the test stops like Ctrl-C does."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.ready: NodeReady | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._shutdown: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="leaving-node", daemon=True)
        self._thread.start()
        if not self._started.wait(60) or self.ready is None:
            raise AssertionError(f"the leaving node did not start: {self._error!r}")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            self.ready = await nursery.start(
                partial(run_node, self.config, shutdown=self._shutdown)
            )
            self._started.set()

    def stop(self) -> None:
        """Drain and stop, as on SIGTERM; returns once the node has returned."""
        if self._token is not None and self._shutdown is not None and self._thread.is_alive():
            self._token.run_sync_soon(self._shutdown.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the leaving node did not stop"
        if self._error is not None:
            raise self._error


def network_json(net: LiveNetwork) -> dict[str, Any]:
    response = httpx.get(net.url + "/api/network", timeout=10)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def wait_for_state(net: LiveNetwork, peer_id: str, state: str) -> dict[str, Any]:
    """The node's entry once /api/network shows it in *state* (polled: the state is the DHT's
    and the gateway's, observable only through the endpoint)."""
    deadline = time.monotonic() + STATE_TIMEOUT_S
    seen = None
    while time.monotonic() < deadline:
        entries = [n for n in network_json(net)["nodes"] if n["peer_id"] == peer_id]
        seen = entries[0]["state"] if entries else None
        if seen == state:
            entry: dict[str, Any] = entries[0]
            return entry
        time.sleep(0.25)
    raise AssertionError(f"{peer_id[:16]} did not become {state} (last: {seen})")


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "chromium is not installed: the dashboard test needs Debian's chromium package "
        "(apt-get install -y chromium)"
    )


def render(url: str, profile: Path, *extra: str) -> str:
    """The DOM after the page's script has fetched and drawn (virtual time lets it run)."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",
        *extra,
        url,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Cards(html.parser.HTMLParser):
    """data-peer / data-model attributes of the cards, and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []
        self.models: list[str] = []
        self.body: dict[str, str | None] = {}
        self.text: list[str] = []
        self.external: list[str] = []
        self.tags: list[str] = []
        self.states: dict[str, str] = {}  # data-peer: data-state
        self.stats: dict[str, str] = {}  # data-stat: its text
        self.chart_points: dict[str, int] = {}  # chart id: its data-point circles
        self._skip = 0  # inside <script> or <style>
        self._chart = ""
        self._stat = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("data-peer"):
            self.peers.append(str(a["data-peer"]))
            self.states[str(a["data-peer"])] = str(a.get("data-state"))
        if tag == "svg" and a.get("id"):
            self._chart = str(a["id"])
            self.chart_points.setdefault(self._chart, 0)
        if tag == "circle" and a.get("data-point") and self._chart:
            self.chart_points[self._chart] += 1
        if a.get("data-stat"):
            self._stat = str(a["data-stat"])
            self.stats[self._stat] = ""
        if a.get("data-model"):
            self.models.append(str(a["data-model"]))
        if tag == "body":
            self.body = a
        if tag in ("script", "style"):
            self._skip += 1
        for key in ("src", "href"):
            if (a.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(str(a[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1
        if tag == "svg":
            self._chart = ""
        if tag == "div":  # a stat is a div of a <b> value and a <span> label
            self._stat = ""

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)
        if self._stat:
            self.stats[self._stat] += data + "|"


def parse(dom: str) -> Cards:
    cards = Cards()
    cards.feed(dom)
    return cards


def online(page: Cards) -> list[str]:
    return sorted(p for p in page.peers if page.states[p] == "online")


def test_dashboard_shows_the_nodes_and_models(net: LiveNetwork, tmp_path: Path) -> None:
    page = parse(render(net.url + "/", tmp_path / "profile", "--dump-dom"))
    assert page.body.get("data-loaded") == "1", "the page's script did not load the network"
    assert online(page) == sorted(n.peer_id for n in net.nodes)
    assert sorted(page.models) == ["tiny-busy", "tiny-llama"]
    text = " ".join(page.text)
    for n in net.nodes:
        assert n.session_address in text  # the node's address
    assert "CPU" in text  # no GPU on the test machine: the CPU fallback is shown
    assert "llama-cpp-python" in text and "hardware class" in text
    assert "decode / prefill" in text
    assert "record age" in text and "s ago" in text
    assert "cannot reach" not in text


def test_names_context_and_free_slots_are_the_records(net: LiveNetwork, tmp_path: Path) -> None:
    page = parse(render(net.url + "/", tmp_path / "profile", "--dump-dom"))
    text = " ".join(page.text)
    # the stranger's name is shown as the text it is, and made no element
    assert HOSTILE_NAME in text and "busy box" in text
    assert "img" not in page.tags
    # what the nodes run (the tiny GGUF's 512, capped by --ctx-size's default 2048), not a
    # trained figure: the record's context, per node and per model
    assert text.count("512 tokens") >= 3  # two node cards' models and the tiny-llama card
    tiny_free = network_json(net)["models"]
    free = {m["id"]: m["free_slots"] for m in tiny_free}
    assert free["tiny-busy"] == 0  # max_requests=0: no slot is ever free there
    assert free["tiny-llama"] >= 1
    assert "0 active, 0 free slots, 0 queued" in text  # the busy node's load, as published
    assert page.stats["online"].startswith("2|")


def test_dashboard_renders_at_phone_width(net: LiveNetwork, tmp_path: Path) -> None:
    dom = render(net.url + "/", tmp_path / "profile", f"--window-size={PHONE}", "--dump-dom")
    page = parse(dom)
    assert page.body.get("data-loaded") == "1"
    assert len(online(page)) == 2
    shot = tmp_path / "phone.png"
    render(net.url + "/", tmp_path / "profile2", f"--window-size={PHONE}", f"--screenshot={shot}")
    assert shot.stat().st_size > 1000


def test_page_is_self_contained_and_made_for_phones() -> None:
    page = render_page()
    cards = parse(page)
    assert cards.external == []  # no CDN, no web fonts: works offline, leaks no visits
    assert "http://" not in page and "https://" not in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "innerHTML" not in page  # strangers write the records: text only


def test_network_json_is_what_the_page_draws(net: LiveNetwork) -> None:
    data = network_json(net)
    live = [n for n in data["nodes"] if n["state"] == "online"]
    assert sorted(n["peer_id"] for n in live) == sorted(n.peer_id for n in net.nodes)
    node = data["nodes"][0]
    for key in ("addresses", "gpus", "cpu", "models", "load", "age_s", "software_version"):
        assert key in node
    for key in ("name", "state", "last_seen_s", "tokens_served", "requests_served"):
        assert key in node
    assert "public_key" not in node
    assert {n["name"] for n in live} == {HOSTILE_NAME, "busy box"}
    models = {m["id"]: m for m in data["models"]}
    assert set(models) == {"tiny-llama", "tiny-busy"}
    assert models["tiny-llama"]["providers"] == 1
    assert models["tiny-llama"]["sha256"] == net.nodes[0].models[0].sha256
    assert set(data["history"]) == {"window_s", "requests", "last_minute"}


def test_charts_have_points_after_requests(net: LiveNetwork, tmp_path: Path) -> None:
    before = network_json(net)
    served_before = {n["peer_id"]: n["tokens_served"] for n in before["nodes"]}
    body = {"model": "tiny-llama", "prompt": "one two three", "max_tokens": 8, "temperature": 0}
    for _ in range(3):
        response = httpx.post(net.url + "/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
    failed = httpx.post(
        net.url + "/v1/completions", json={**body, "model": "tiny-busy"}, timeout=60
    )
    assert failed.status_code == 503  # every request to the busy node is refused
    data = network_json(net)
    ours = data["history"]["requests"][-4:]
    tiny = net.nodes[0].peer_id
    assert [r["outcome"] for r in ours] == ["ok", "ok", "ok", "busy"]
    for r in ours[:3]:
        assert r["provider"] == tiny and r["tokens"] == 8
        assert r["ttft_ms"] > 0 and r["tok_s"] > 0
    assert ours[3]["ttft_ms"] is None and ours[3]["tokens"] == 0
    entry = next(n for n in data["nodes"] if n["peer_id"] == tiny)
    assert entry["tokens_served"] == served_before.get(tiny, 0) + 24
    page = parse(render(net.url + "/", tmp_path / "profile", "--dump-dom"))
    assert page.chart_points["chart-tok"] >= 3
    assert page.chart_points["chart-ttft"] >= 3
    assert float(page.stats["tok_s"].split("|")[0]) > 0
    assert page.stats["ttft"].split("|")[0].endswith(" ms")
    assert "tokens in" in " ".join(page.text)


def test_a_stopped_node_shows_offline(net: LiveNetwork, tmp_path: Path, tiny_gguf: Path) -> None:
    """Last: the node it stops stays on the page as offline for OFFLINE_MEMORY_S."""
    host, _, port = net.nodes[0].dht_address.rpartition(":")
    config = NodeConfig(
        data_dir=tmp_path / "leaving",
        models=(inspect_gguf(tiny_gguf),),
        dht_port=0,
        port=0,
        n_threads=1,
        bootstrap=((host, int(port)),),
        ttl_s=LEAVING_TTL_S,
        benchmark=False,
        name="leaving soon",
    )
    node = LeavingNode(config)
    try:
        assert node.ready is not None
        peer = node.ready.peer_id
        assert wait_for_state(net, peer, "online")["name"] == "leaving soon"
        page = parse(render(net.url + "/", tmp_path / "profile", "--dump-dom"))
        assert page.states[peer] == "online"
        assert page.stats["online"].startswith("3|")
    finally:
        node.stop()
    gone = wait_for_state(net, peer, "offline")  # withdrawn, or lapsed within its TTL
    assert gone["name"] == "leaving soon" and gone["last_seen_s"] < 600
    models = {m["id"]: m for m in network_json(net)["models"]}
    assert models["tiny-llama"]["providers"] == 1  # the model table counts live nodes only
    page = parse(render(net.url + "/", tmp_path / "profile2", "--dump-dom"))
    assert page.states[peer] == "offline"
    assert online(page) == sorted(n.peer_id for n in net.nodes)
    assert page.stats["offline"].startswith("1|")
    text = " ".join(page.text)
    assert "leaving soon" in text and "last seen" in text
