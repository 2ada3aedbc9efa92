"""The dashboard page in headless Chromium against a live network (two nodes and the gateway).

Chromium is Debian's `chromium` package (CI installs it). Without it these tests fail, saying so:
a dashboard that was never rendered is not a tested dashboard.
"""

from __future__ import annotations

import html.parser
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from p2p.api.dashboard import render_page
from tests.p2p.api.test_gateway import LiveNetwork, live_network_fixture

CHROMIUM_TIMEOUT_S = 90
PHONE = "390,844"  # CSS pixels of a common phone in portrait


net = live_network_fixture(api_key=None)


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
        self._skip = 0  # inside <script> or <style>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-peer"):
            self.peers.append(str(a["data-peer"]))
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

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def parse(dom: str) -> Cards:
    cards = Cards()
    cards.feed(dom)
    return cards


def test_dashboard_shows_the_nodes_and_models(net: LiveNetwork, tmp_path: Path) -> None:
    page = parse(render(net.url + "/", tmp_path / "profile", "--dump-dom"))
    assert page.body.get("data-loaded") == "1", "the page's script did not load the network"
    assert sorted(page.peers) == sorted(n.peer_id for n in net.nodes)
    assert sorted(page.models) == ["tiny-busy", "tiny-llama"]
    text = " ".join(page.text)
    for n in net.nodes:
        assert n.session_address in text  # the node's address
    assert "CPU" in text  # no GPU on the test machine: the CPU fallback is shown
    assert "llama-cpp-python" in text and "hardware class" in text
    assert "decode / prefill" in text
    assert "last seen" in text and "s ago" in text
    assert "cannot reach" not in text


def test_dashboard_renders_at_phone_width(net: LiveNetwork, tmp_path: Path) -> None:
    dom = render(net.url + "/", tmp_path / "profile", f"--window-size={PHONE}", "--dump-dom")
    page = parse(dom)
    assert page.body.get("data-loaded") == "1"
    assert len(page.peers) == 2
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
    data = httpx.get(net.url + "/api/network", timeout=10).json()
    assert sorted(n["peer_id"] for n in data["nodes"]) == sorted(n.peer_id for n in net.nodes)
    node = data["nodes"][0]
    for key in ("addresses", "gpus", "cpu", "models", "load", "age_s", "software_version"):
        assert key in node
    assert "public_key" not in node
    models = {m["id"]: m for m in data["models"]}
    assert set(models) == {"tiny-llama", "tiny-busy"}
    assert models["tiny-llama"]["providers"] == 1
    assert models["tiny-llama"]["sha256"] == net.nodes[0].models[0].sha256
