"""The OpenAI-compatible HTTP gateway into the network, the dashboard and `/metrics`.

Starlette under Hypercorn's trio worker, inside the caller's trio nursery: no second event loop,
no hand-written HTTP. Every generation request goes into the network through
`p2p.client.network_client.generate` (provider lookup, ranking, sessions, failover), each with a fresh request
id. One `Client` serves every request at once: its DHT facade forwards lookups to kademlia's
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
- `GET /` (dashboard), `GET /api/network` (its JSON), `GET /metrics` (Prometheus text).

With an API key, the `/v1` routes need `Authorization: Bearer KEY`; the dashboard, its JSON and
`/metrics` stay open: they show only what the DHT already publishes and this gateway's counters.

Why the generation responses are hand-made ASGI responses rather than Starlette's
`StreamingResponse`: the HTTP status must wait for the network's first answer (an unknown model
is a 404, all providers busy a 503, even for `stream: true`), and a client that disconnects must
cancel the generation — which here is a cancel scope around both the generation and the writer,
so the session to the node closes and the node stops generating.

This file holds that handler, the Starlette application and `serve_gateway`. What does not touch
HTTP lives beside it: request validation in p2p/api/request_parsing.py, response bodies and error
mapping in p2p/api/responses.py, the model table in p2p/api/network_view.py, and the
`gpunet gateway` command in p2p/cli/gateway.py.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from p2p import metrics as metrics_mod
from p2p.protocol import wire
from p2p.client.network_client import AskError, Client, Provider, generate
from p2p.api.dashboard import render_page
from p2p.metrics import NO_MODEL, Metrics
from p2p.api.network_view import NetworkView, model_object, model_table, network_json
from p2p.api.request_parsing import ApiError, GenerationCall, bad_request, parse_generation
from p2p.api.responses import (
    SSE_HEADERS,
    ResponseShape,
    error_from_ask,
    openai_finish_reason,
    sse,
)
from p2p.version import SOFTWARE_VERSION

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8470  # beside the node's 8468 (DHT, UDP) and 8469 (sessions, TCP)
# A request body is JSON text; the prompt limit of the wire (512 KiB) plus JSON overhead.
MAX_BODY_BYTES = 2 * 1024 * 1024
# How long a request waits at the gateway while every provider answers busy before it gets a
# 503. A minute covers a burst of a few dozen 128-token requests at CPU speed; OpenAI clients
# wait 10 minutes for an answer, so they do not give up first.
DEFAULT_QUEUE_TIMEOUT_S = 60.0
QUEUE_RETRY_MIN_S = 0.05
QUEUE_RETRY_MAX_S = 1.0


# --- the generation response ----------------------------------------------------------------


@attrs.define
class _Progress:
    provider: Provider | None = None
    chunks: int = 0
    done: wire.Done | None = None
    # Set just before the last body message: Hypercorn reports http.disconnect as soon as the
    # response is complete, which is no cancellation.
    complete: bool = False
    disconnected: bool = False


Event = str | wire.Done | ApiError


class GenerationResponse(Response):
    """Runs one generation while writing it to the HTTP client; a disconnect cancels both."""

    def __init__(self, gateway: Gateway, call: GenerationCall) -> None:
        self.gateway = gateway
        self.call = call
        self.shape = ResponseShape.new(call.kind, call.model)
        self.background = None
        self.progress = _Progress()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.gateway.metrics
        started = trio.current_time()
        outcome = "error"
        metrics.active_sessions.inc()
        try:
            send_events, events = trio.open_memory_channel[Event](math.inf)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                nursery.start_soon(self._produce, send_events, started)
                if self.call.stream:
                    outcome = await self._write_stream(events, send)
                else:
                    outcome = await self._write_whole(events, send)
                nursery.cancel_scope.cancel()
        finally:
            metrics.active_sessions.dec()
            self.gateway.note_finished()
            p = self.progress
            if p.disconnected:
                outcome = "cancelled"
            label = p.provider.model.name if p.provider else NO_MODEL
            metrics.count_request(label, outcome)
            tokens = p.done.completion_tokens if p.done else p.chunks
            if tokens and p.provider:
                metrics.tokens.labels(metrics.model_label(label)).inc(tokens)
            log.info(
                "%s %s -> %s (%d chunks, %.3f s)",
                self.call.kind,
                self.call.model,
                outcome,
                p.chunks,
                trio.current_time() - started,
            )

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.progress.complete:
                    self.progress.disconnected = True
                    scope.cancel()
                return

    async def _produce(self, events: trio.MemorySendChannel[Event], started: float) -> None:
        metrics, p = self.gateway.metrics, self.progress
        last = started

        def on_provider(provider: Provider) -> None:
            p.provider = provider

        inter_token = None  # the histogram of this request's model, looked up once

        def on_text(text: str) -> None:
            nonlocal last, inter_token
            now = trio.current_time()
            if inter_token is None:
                label = metrics.model_label(p.provider.model.name if p.provider else NO_MODEL)
                inter_token = metrics.inter_token.labels(label)
                metrics.ttft.labels(label).observe(now - started)
            else:
                inter_token.observe(now - last)
            last = now
            p.chunks += 1
            events.send_nowait(text)

        with events:
            try:
                p.done = await self._generate_when_free(on_text, on_provider)
                events.send_nowait(p.done)
            except ApiError as exc:
                events.send_nowait(exc)
            except Exception as exc:  # a bug or a DHT failure: this request fails, not the server
                log.exception("generation through the network failed")
                events.send_nowait(
                    ApiError(500, f"internal error: {type(exc).__name__}", "server_error")
                )

    async def _generate_when_free(
        self, on_text: Callable[[str], None], on_provider: Callable[[Provider], None]
    ) -> wire.Done:
        """`generate`, tried again while every provider is busy, for up to queue_timeout_s.

        A gateway is many users behind one identity, and nodes cap each peer's concurrent
        requests (p2p/protocol/admission.py), so a burst through the gateway meets `busy` long before
        the network is out of capacity. Failing those requests at once would make a gateway worse
        than a single llama-server, which queues; so the request waits here, woken when another
        request of this gateway ends (a slot may have freed) or after a backoff, whichever comes
        first. Nothing has been sent to the HTTP client while it waits, so an exhausted wait is
        still a clean 503.
        """
        gw = self.gateway
        deadline = trio.current_time() + gw.queue_timeout_s
        backoff = QUEUE_RETRY_MIN_S
        while True:
            finished = gw.request_finished
            request = attrs.evolve(self.call.request, id=gw.next_request_id())
            try:
                return await generate(gw.client, self.call.model, request, on_text, on_provider)
            except AskError as exc:
                error = error_from_ask(exc)
                wait = min(backoff, deadline - trio.current_time())
                if error.outcome != "busy" or self.progress.chunks or wait <= 0:
                    raise error from exc
            with trio.move_on_after(wait):
                await finished.wait()
            backoff = min(backoff * 2, QUEUE_RETRY_MAX_S)

    async def _write_whole(self, events: trio.MemoryReceiveChannel[Event], send: Send) -> str:
        pieces: list[str] = []
        async for event in events:
            if isinstance(event, ApiError):
                await self._send_error(send, event)
                return event.outcome
            if isinstance(event, wire.Done):
                body = self.shape.whole("".join(pieces), event)
                await self._send_json(send, 200, body)
                return "ok"
            pieces.append(event)
        raise AssertionError("the producer ended without a result")  # pragma: no cover

    async def _write_stream(self, events: trio.MemoryReceiveChannel[Event], send: Send) -> str:
        first = await events.receive()
        if isinstance(first, ApiError):  # nothing sent yet: a proper HTTP status
            await self._send_error(send, first)
            return first.outcome
        headers = list(SSE_HEADERS)
        if self.progress.provider is not None:
            headers.append((b"x-gpunet-provider", self.progress.provider.record.peer_id.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if self.call.kind == "chat":
            await emit(sse(self.shape.chunk(None)))
        outcome = "error"
        event: Event = first
        while True:
            if isinstance(event, str):
                await emit(self.shape.text_event(event))
            elif isinstance(event, wire.Done):
                await emit(sse(self.shape.chunk("", openai_finish_reason(event))))
                if self.call.include_usage:
                    await emit(sse(self.shape.usage_chunk(event)))
                outcome = "ok"
                break
            else:  # failed after text went out: OpenAI's in-stream error event
                await emit(sse(event.body()))
                outcome = event.outcome
                break
            event = await events.receive()
        self.progress.complete = True
        await send({"type": "http.response.body", "body": sse("[DONE]"), "more_body": False})
        return outcome

    async def _send_json(self, send: Send, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        if self.progress.provider is not None:
            headers.append((b"x-gpunet-provider", self.progress.provider.record.peer_id.encode()))
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self.progress.complete = True
        await send({"type": "http.response.body", "body": data})

    async def _send_error(self, send: Send, error: ApiError) -> None:
        await self._send_json(send, error.status, error.body())


# --- the application ------------------------------------------------------------------------


class Gateway:
    """State shared by all requests: the network client, the key, metrics, the network view."""

    def __init__(
        self,
        client: Client,
        *,
        api_key: str | None = None,
        metrics: Metrics | None = None,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
    ) -> None:
        self.client = client
        self.api_key = api_key or None
        self.metrics = metrics or metrics_mod.DEFAULT
        self.network = NetworkView(client)
        self.queue_timeout_s = queue_timeout_s
        self.request_finished = trio.Event()
        self._ids = itertools.count(1)
        self.metrics.routing_table_size.set_function(lambda: float(client.dht.routing_table_size()))

    def note_finished(self) -> None:
        """Wake the requests waiting for a busy network: a slot may have freed."""
        self.request_finished.set()
        self.request_finished = trio.Event()

    def next_request_id(self) -> int:
        # Each generate() opens its own session, so ids need only be unique per gateway.
        return next(self._ids)

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
                outcome="unauthorized",
            )

    async def generation(self, request: Request, kind: str) -> Response:
        try:
            self.authorize(request)
            call = parse_generation(await _read_json(request), kind)
        except ApiError as exc:
            self.metrics.count_request(NO_MODEL, exc.outcome)
            raise
        return GenerationResponse(self, call)

    async def completions(self, request: Request) -> Response:
        return await self.generation(request, "completion")

    async def chat_completions(self, request: Request) -> Response:
        return await self.generation(request, "chat")

    async def list_models(self, request: Request) -> Response:
        self.authorize(request)
        table = model_table(await self.network.nodes())
        return JSONResponse({"object": "list", "data": [model_object(e) for e in table]})

    async def get_model(self, request: Request) -> Response:
        self.authorize(request)
        wanted = request.path_params["model"]
        for e in model_table(await self.network.nodes()):
            if wanted in (e["id"], e["sha256"]) or wanted.lower() == e["name"].lower():
                return JSONResponse(model_object(e))
        raise ApiError(
            404,
            f"the network offers no model {wanted!r}",
            code="model_not_found",
            param="model",
            outcome="unknown_model",
        )

    async def dashboard(self, _request: Request) -> Response:
        return HTMLResponse(render_page(), headers={"cache-control": "no-cache"})

    async def network_state(self, _request: Request) -> Response:
        body = network_json(await self.network.nodes(), time.time())
        body["gateway"] = {"software_version": SOFTWARE_VERSION}
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def metrics_page(self, _request: Request) -> Response:
        return Response(self.metrics.render(), media_type=metrics_mod.CONTENT_TYPE_LATEST)


async def _read_json(request: Request) -> object:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})") from exc


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else None
    return ApiError(exc.status_code, str(exc.detail), code=kind).response()


async def _internal_error(_request: Request, exc: Exception) -> Response:
    log.error("gateway request failed", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}", "server_error").response()


def build_app(gateway: Gateway) -> Starlette:
    g = gateway
    routes = [
        Route("/", g.dashboard, methods=["GET"]),
        Route("/api/network", g.network_state, methods=["GET"]),
        Route("/metrics", g.metrics_page, methods=["GET"]),
        Route("/v1/models", g.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", g.get_model, methods=["GET"]),
        Route("/v1/completions", g.completions, methods=["POST"]),
        Route("/v1/chat/completions", g.chat_completions, methods=["POST"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: _api_error,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
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
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the gateway on host:port until cancelled; `nursery.start` returns its base URL
    ("http://127.0.0.1:8470"; port 0 picks a free port)."""
    gateway = Gateway(client, api_key=api_key, metrics=metrics, queue_timeout_s=queue_timeout_s)
    app = build_app(gateway)

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
        binds: list[str] = await nursery.start(started)
        task_status.started(binds[0])
