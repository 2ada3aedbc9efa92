"""`GET /health` and `--cors ORIGIN` over real HTTP: 503 from a gateway that has joined nothing,
200 from a node's own API once its worker is loaded (with no key asked even where the API has
one); CORS off by default, and when on, preflights answered and the allow header given to the
configured origin only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from crypto.identity import Identity
from inference.model_file import inspect_gguf
from p2p.api.app import serve_gateway
from p2p.client.network import Client
from p2p.dht.node import open_dht
from p2p.node.runtime import NodeConfig, NodeReady, run_node
from p2p.session.pool import SessionPool
from p2p.setting_kinds import Origin

APP = "http://app.example"
OTHER = "http://evil.example"
PREFLIGHT = {
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type",
}


@asynccontextmanager
async def lone_gateway(**options: Any) -> AsyncIterator[str]:
    """A gateway whose client has no DHT contact at all (it joined nothing): its base URL."""
    identity = Identity.generate()
    async with (
        open_dht(identity, "127.0.0.1", 0, client_mode=True) as dht,
        trio.open_nursery() as nursery,
    ):
        client = Client(dht, identity, SessionPool(identity, nursery))
        yield await nursery.start(partial(serve_gateway, client, "127.0.0.1", 0, **options))
        nursery.cancel_scope.cancel()


async def test_a_gateway_that_joined_nothing_is_unhealthy() -> None:
    with trio.fail_after(30):
        async with lone_gateway() as url, httpx.AsyncClient(timeout=10) as http:
            r = await http.get(url + "/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and body["dht_peers"] == 0
    assert "not joined" in body["reason"]


async def test_a_node_api_is_healthy_once_it_serves_and_asks_no_key(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    def api(client: Client) -> Any:
        return partial(serve_gateway, client, "127.0.0.1", 0, api_key="secret")

    config = NodeConfig(
        data_dir=tmp_path, models=(inspect_gguf(tiny_gguf),), dht_port=0, port=0, n_threads=1,
        benchmark=False,
    )  # fmt: skip
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ready: NodeReady = await nursery.start(partial(run_node, config, api=api))
            assert ready.api_url is not None
            async with httpx.AsyncClient(timeout=10) as http:
                health = await http.get(ready.api_url + "/health")
                models = await http.get(ready.api_url + "/v1/models")
            nursery.cancel_scope.cancel()
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok" and health.json()["models"] == 1
    assert models.status_code == 401  # the /v1 routes still need the key


async def test_cors_is_off_by_default() -> None:
    with trio.fail_after(30):
        async with lone_gateway() as url, httpx.AsyncClient(timeout=10) as http:
            simple = await http.get(url + "/health", headers={"origin": APP})
            preflight = await http.options(
                url + "/v1/embeddings", headers={"origin": APP, **PREFLIGHT}
            )
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405


async def test_cors_allows_the_configured_origin_only() -> None:
    with trio.fail_after(30):
        async with (
            lone_gateway(cors_origins=(APP,)) as url,
            httpx.AsyncClient(timeout=10) as http,
        ):
            ok = await http.options(url + "/v1/embeddings", headers={"origin": APP, **PREFLIGHT})
            refused = await http.options(
                url + "/v1/chat/completions", headers={"origin": OTHER, **PREFLIGHT}
            )
            simple = await http.get(url + "/health", headers={"origin": APP})
            other = await http.get(url + "/health", headers={"origin": OTHER})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == APP
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == APP  # on a 503 too
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("text", ["https://app.example", "http://localhost:3000", "*"])
def test_origins_the_setting_takes(text: str) -> None:
    assert Origin("ORIGIN").from_text(text) == text


@pytest.mark.parametrize(
    "text", ["app.example", "ftp://app.example", "https://app.example/path", "https://", ""]
)
def test_origins_the_setting_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        Origin("ORIGIN").from_text(text)
