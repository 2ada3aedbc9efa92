"""`GET /health` and `--cors ORIGIN`: what load balancers and browser pages need of the gateway.

`/health` answers 200 `{"status": "ok", ...}` when the gateway can serve: the network's
directory (the signed records in the DHT, as /v1/models reads them) lists at least one node
offering a model. Otherwise 503 `{"status": "unavailable", "reason": ...}`: no DHT contact yet,
or nodes but no model on offer. A node's own API (`gpunet node --api`) starts only once its
workers are loaded and its record is published, so there the same rule reads "worker loaded".
It needs no API key, like the dashboard: it tells only what the DHT already publishes.

CORS is off unless origins are given (`--cors https://app.example`, repeatable or a comma
list): Starlette's CORSMiddleware then answers preflight `OPTIONS` requests and adds
`Access-Control-Allow-Origin` for exactly those origins, never `*` unless asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from p2p.api.network_view import NetworkView
from p2p.client.network import Client
from p2p.version import SOFTWARE_VERSION

# What a browser page may send: the OpenAI client's headers (the key, JSON, its own x-stainless
# headers are not needed by the gateway and a page built on fetch() sends none of them).
CORS_METHODS = ("GET", "POST", "OPTIONS")
CORS_HEADERS = ("authorization", "content-type")


async def health_response(client: Client, network: NetworkView) -> Response:
    """200 when at least one node offers a model, else 503; the body says which and why."""
    peers = client.dht.routing_table_size()
    body: dict[str, Any] = {"software_version": SOFTWARE_VERSION, "dht_peers": peers}
    try:
        nodes = await network.nodes()
    except Exception as exc:  # a DHT failure: unhealthy, not a 500
        body |= {"status": "unavailable", "reason": f"DHT lookup failed: {type(exc).__name__}"}
        return JSONResponse(body, status_code=503, headers={"cache-control": "no-store"})
    models = {m.sha256 for r in nodes for m in r.models}
    body |= {"nodes": len(nodes), "models": len(models)}
    if models:
        body["status"] = "ok"
        return JSONResponse(body, headers={"cache-control": "no-store"})
    reason = "no node offers a model yet" if nodes or peers else "not joined to the DHT yet"
    body |= {"status": "unavailable", "reason": reason}
    return JSONResponse(body, status_code=503, headers={"cache-control": "no-store"})


def cors_middleware(origins: Sequence[str]) -> list[Middleware]:
    """The middleware for *origins* (none: CORS stays off, browsers get no CORS header)."""
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_HEADERS),
            max_age=600,
        )
    ]
