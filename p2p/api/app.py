"""The OpenAI-compatible HTTP gateway into the network, the dashboard and `/metrics`.

Starlette under Hypercorn's trio worker, inside the caller's trio nursery: no second event loop,
no hand-written HTTP. Every generation request goes into the network through
`p2p.client.failover.generate` (provider lookup, ranking, sessions, failover), each with a fresh
request id. One `Client` serves every request at once: its DHT facade forwards lookups to kademlia's
asyncio loop, which runs any number of them concurrently, and `generate` keeps no per-call state
in it beyond its session pool, which multiplexes concurrent requests by request id (checked by
`test_concurrent_requests_share_one_client`).

Routes:

- `GET /v1/models`, `GET /v1/models/{id}` — what the network offers now (from the signed records
  in the DHT): id = model name (its sha256 when two builds share a name), with sha256 and
  provider count.
- `POST /v1/completions`, `POST /v1/chat/completions` — streaming (SSE, ending `data: [DONE]`)
  or not. Chat messages travel as `wire.Generate.messages`; the serving node renders them with
  the model's chat template.
- `POST /v1/embeddings` — vectors from the network's embedding models (embeddings_route.py).
- `GET /` (dashboard), `GET /api/network` (its JSON), `GET /metrics` (Prometheus text),
  `GET /health` (200 when a model is on offer, else 503; health_cors.py, which also holds the
  `--cors` middleware, off by default).

With an API key, the `/v1` routes need `Authorization: Bearer KEY`; the dashboard, its JSON,
`/health` and `/metrics` stay open: they show only what the DHT already publishes and this
gateway's counters.

This file holds the routes, the Starlette application and `serve_gateway`. Beside it: the
generation response (run while written, cancelled on disconnect) in generation_response.py (and
`n` > 1 choices, each such a response, merged in choices.py), the
wait for a free provider in gateway_queue.py, request validation in request_parsing.py, response
bodies in responses.py, errors and their table by `ErrorCode` in openai_errors.py, the model
table in network_view.py; the `gpunet gateway` command is p2p/cli/gateway.py.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from inference.prompt_probes import DEFAULT_PROBES
from p2p import metrics as metrics_mod
from p2p.api.choices import generation_response
from p2p.api.dashboard import render_page
from p2p.api.embeddings_route import embeddings_response
from p2p.api.gateway_queue import (
    DEFAULT_QUEUE_TIMEOUT_S,
    GENERATION_DEADLINE_S,
    GatewayQueue,
)
from p2p.api.health_cors import cors_middleware, health_response
from p2p.api.json_body import MAX_BODY_BYTES, body_too_large, parse_json_body
from p2p.api.network_view import NetworkView, model_object, model_table, network_json
from p2p.api.openai_errors import ApiError, internal_error
from p2p.api.request_parsing import parse_generation
from p2p.api.tool_params import refuse_without_tools
from p2p.client.background_checks import BackgroundChecks
from p2p.client.failover import check_probe_count
from p2p.client.network import Client
from p2p.errors import ErrorCode
from p2p.host_port import format_host_port
from p2p.metrics import NO_MODEL, Metrics, Outcome
from p2p.model_match import model_matches
from p2p.version import SOFTWARE_VERSION

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8470  # beside the node's 8468 (DHT, UDP) and 8469 (sessions, TCP)

__all__ = [
    "DEFAULT_API_HOST",
    "DEFAULT_API_PORT",
    "DEFAULT_QUEUE_TIMEOUT_S",  # the queue's (gateway_queue.py); `gpunet gateway` shows it
    "MAX_BODY_BYTES",  # json_body.py's; the bound of one request body
    "Gateway",
    "build_app",
    "hypercorn_config",
    "serve_gateway",
]


# --- the application ------------------------------------------------------------------------


class Gateway:
    """State shared by all requests: the network client and its queue, the key, metrics, the
    network view."""

    def __init__(
        self,
        client: Client,
        *,
        api_key: str | None = None,
        metrics: Metrics | None = None,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        generation_deadline_s: float = GENERATION_DEADLINE_S,
        checks: BackgroundChecks | None = None,
        probes: int = DEFAULT_PROBES,
    ) -> None:
        self.client = client
        self.api_key = api_key or None
        self.metrics = metrics or metrics_mod.DEFAULT
        self.network = NetworkView(client)
        # A request's overall deadline: the queue's wait plus the generation's (gateway_queue.py)
        self.queue = GatewayQueue(
            client, queue_timeout_s, generation_deadline_s, checks, probes=check_probe_count(probes)
        )
        self.metrics.routing_table_size.set_function(lambda: float(client.dht.routing_table_size()))

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise ApiError(
                401,
                "invalid API key: send 'Authorization: Bearer KEY' with the gateway's --api-key",
                "authentication_error",
                code="invalid_api_key",
                outcome=Outcome.UNAUTHORIZED,
            )

    async def generation(self, request: Request, kind: str) -> Response:
        try:
            self.authorize(request)
            call = parse_generation(await _read_json(request), kind)
            if call.request.tools:  # the records say whether the model's nodes render tools
                refuse_without_tools(call.request, model_table(await self.network.nodes()))
        except ApiError as exc:
            self.metrics.count_request(NO_MODEL, exc.outcome)
            raise
        return generation_response(self.queue, self.metrics, call)  # one choice or n

    async def completions(self, request: Request) -> Response:
        return await self.generation(request, "completion")

    async def chat_completions(self, request: Request) -> Response:
        return await self.generation(request, "chat")

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings (p2p/api/embeddings_route.py)."""
        try:
            self.authorize(request)
            body = await _read_json(request)
        except ApiError as exc:
            self.metrics.count_request(NO_MODEL, exc.outcome)
            raise
        return await embeddings_response(self.client, self.metrics, body)

    async def health(self, _request: Request) -> Response:
        """GET /health, open like the dashboard (p2p/api/health_cors.py)."""
        return await health_response(self.client, self.network)

    async def list_models(self, request: Request) -> Response:
        self.authorize(request)
        table = model_table(await self.network.nodes())
        return JSONResponse({"object": "list", "data": [model_object(e) for e in table]})

    async def get_model(self, request: Request) -> Response:
        self.authorize(request)
        wanted = request.path_params["model"]
        for e in model_table(await self.network.nodes()):
            if wanted == e["id"] or model_matches(wanted, e["sha256"], e["name"]):
                return JSONResponse(model_object(e))
        raise ApiError.from_code(ErrorCode.UNKNOWN_MODEL, f"the network offers no model {wanted!r}")

    async def dashboard(self, _request: Request) -> Response:
        return HTMLResponse(render_page(), headers={"cache-control": "no-cache"})

    async def network_state(self, _request: Request) -> Response:
        nodes, gone = await self.network.nodes(), await self.network.offline()
        body = network_json(nodes, time.time(), gone, self.queue.history)
        body["gateway"] = {"software_version": SOFTWARE_VERSION}
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def metrics_page(self, _request: Request) -> Response:
        return Response(self.metrics.render(), media_type=metrics_mod.CONTENT_TYPE_LATEST)


async def _read_json(request: Request) -> object:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise body_too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise body_too_large()
    return parse_json_body(b"".join(chunks))


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else None
    return ApiError(exc.status_code, str(exc.detail), code=kind).response()


async def _internal_error(_request: Request, exc: Exception) -> Response:
    log.error("gateway request failed", exc_info=exc)
    return internal_error(exc).response()


def build_app(gateway: Gateway, cors_origins: Sequence[str] = ()) -> Starlette:
    """The application; *cors_origins*: the browser origins CORS allows (none: CORS off)."""
    g = gateway
    routes = [
        Route("/", g.dashboard, methods=["GET"]),
        Route("/api/network", g.network_state, methods=["GET"]),
        Route("/metrics", g.metrics_page, methods=["GET"]),
        Route("/health", g.health, methods=["GET"]),
        Route("/v1/models", g.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", g.get_model, methods=["GET"]),
        Route("/v1/completions", g.completions, methods=["POST"]),
        Route("/v1/chat/completions", g.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", g.embeddings, methods=["POST"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: _api_error,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    return Starlette(
        routes=routes, exception_handlers=handlers, middleware=cors_middleware(cors_origins)
    )


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [format_host_port(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    return config


async def serve_gateway(
    client: Client,
    host: str = DEFAULT_API_HOST,
    port: int = DEFAULT_API_PORT,
    *,
    api_key: str | None = None,
    metrics: Metrics | None = None,
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
    generation_deadline_s: float = GENERATION_DEADLINE_S,
    checks: BackgroundChecks | None = None,
    cors_origins: Sequence[str] = (),
    probes: int = DEFAULT_PROBES,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the gateway on host:port until cancelled; `nursery.start` returns its base URL
    ("http://127.0.0.1:8470"; port 0 picks a free port). A request ends with `timeout` (504)
    after *queue_timeout_s* + *generation_deadline_s*.
    *checks*, when given, spot-checks a fraction of the finished requests in the background
    (p2p/client/background_checks.py); its reputation then ranks the providers.
    *cors_origins* turns CORS on for those origins (p2p/api/health_cors.py).
    *probes*: prompt probes per request (p2p/client/failover.py; 0: none)."""
    if checks is not None:
        client.ranker.standing = checks.reputation.standing
    gateway = Gateway(
        client,
        api_key=api_key,
        metrics=metrics,
        queue_timeout_s=queue_timeout_s,
        generation_deadline_s=generation_deadline_s,
        checks=checks,
        probes=probes,
    )
    app = build_app(gateway, cors_origins)

    async def started(
        *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # No shutdown trigger of Hypercorn's own (it would install signal handlers): the
        # caller's cancel scope ends the server.
        await hypercorn_serve(
            app,  # type: ignore[arg-type]
            hypercorn_config(host, port),
            shutdown_trigger=trio.sleep_forever,
            task_status=task_status,
        )

    async with trio.open_nursery() as nursery:
        if checks is not None:
            await nursery.start(checks.run)
        binds: list[str] = await nursery.start(started)
        task_status.started(binds[0])
