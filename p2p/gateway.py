"""The OpenAI-compatible HTTP gateway into the network, the dashboard and `/metrics`.

Starlette under Hypercorn's trio worker, inside the caller's trio nursery: no second event loop,
no hand-written HTTP. Every generation request goes into the network through
`p2p.client.generate` (provider lookup, ranking, sessions, failover), each with a fresh request
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
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import math
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import click
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
from p2p import wire
from p2p.client import AskError, Client, Provider, generate, list_nodes, open_client
from p2p.dashboard import render_page
from p2p.metrics import NO_MODEL, Metrics
from p2p.records import CapabilityRecord, record_to_json
from p2p.version import SOFTWARE_VERSION

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8470  # beside the node's 8468 (DHT, UDP) and 8469 (sessions, TCP)
# The dashboard and /v1/models would otherwise run a DHT lookup per page view; records change
# every few minutes, so a short cache costs no freshness that matters.
NETWORK_CACHE_S = 2.0
# OpenAI's documented default for /v1/completions; chat has no documented number (it runs to the
# context's end), which on a volunteer's small context would fail more often than help.
DEFAULT_COMPLETION_MAX_TOKENS = 16
DEFAULT_CHAT_MAX_TOKENS = 256
# OpenAI's ranges for sampling parameters (the wire allows temperature up to 10).
MAX_TEMPERATURE = 2.0
# A request body is JSON text; the prompt limit of the wire (512 KiB) plus JSON overhead.
MAX_BODY_BYTES = 2 * 1024 * 1024
# How long a request waits at the gateway while every provider answers busy before it gets a
# 503. A minute covers a burst of a few dozen 128-token requests at CPU speed; OpenAI clients
# wait 10 minutes for an answer, so they do not give up first.
DEFAULT_QUEUE_TIMEOUT_S = 60.0
QUEUE_RETRY_MIN_S = 0.05
QUEUE_RETRY_MAX_S = 1.0
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies (nginx) must not buffer the stream
]


# --- errors ---------------------------------------------------------------------------------


@attrs.frozen
class ApiError(Exception):
    """An OpenAI-shaped error: HTTP status + `{"error": {message, type, param, code}}`."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    outcome: str = "bad_request"  # the metrics outcome it counts as

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"retry-after": "1"} if self.status == 503 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _from_code(code: str, message: str) -> ApiError:
    if code == wire.ErrorCode.UNKNOWN_MODEL:
        return ApiError(
            404, message, code="model_not_found", param="model", outcome="unknown_model"
        )
    if code == wire.ErrorCode.BAD_REQUEST:
        return ApiError(400, message)
    if code == wire.ErrorCode.TOO_LONG:
        return ApiError(400, message, code="context_length_exceeded", outcome="too_long")
    if code in (wire.ErrorCode.BUSY, "shutting_down"):
        return ApiError(503, message, "server_error", code="providers_busy", outcome="busy")
    if code == "rate_limited":
        return ApiError(429, message, "rate_limit_error", code="rate_limited", outcome="busy")
    return ApiError(502, message, "server_error", code="provider_error", outcome="error")


def error_from_ask(exc: AskError) -> ApiError:
    """Map the client's failure to an HTTP error.

    Uses `exc.code` (a `wire.ErrorCode`) when the client provides one; until then it reads the
    client's message shapes (see p2p/client.py): "no node serves model ...", "no provider could
    serve the request: ..." and "<code>: <node's message>".
    """
    message = str(exc)
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return _from_code(code, message)
    if message.startswith("no node serves model"):
        return _from_code(wire.ErrorCode.UNKNOWN_MODEL, message)
    if message.startswith("no provider could serve the request"):
        return _from_code(wire.ErrorCode.BUSY, message)
    prefix, sep, rest = message.partition(": ")
    known = (wire.ErrorCode.UNKNOWN_MODEL, wire.ErrorCode.BAD_REQUEST, wire.ErrorCode.TOO_LONG)
    if sep and prefix in known:
        return _from_code(prefix, rest)
    return _from_code(wire.ErrorCode.INTERNAL, message)


# --- request parsing (pure functions) -------------------------------------------------------


@attrs.frozen
class GenerationCall:
    """One parsed /v1 generation request. `request.id` is 0 until the gateway assigns one."""

    kind: str  # "completion" or "chat"
    model: str
    request: wire.Generate
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number", name)
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be between {lo:g} and {hi:g}, got {value}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer", name)
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}, got {value}", name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false", name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stops) > wire.MAX_STOP_STRINGS:
        raise bad_request(f"stop: at most {wire.MAX_STOP_STRINGS} strings", "stop")
    if any(len(s) > wire.MAX_STOP_CHARS for s in stops):
        raise bad_request(f"stop: each string at most {wire.MAX_STOP_CHARS} characters", "stop")
    return tuple(s for s in stops if s)


def _refuse_unsupported(body: dict[str, Any], kind: str) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("n: only one choice per request is supported", "n")
    if body.get("logprobs") not in (None, False, 0):
        raise bad_request("logprobs are not supported", "logprobs")
    if kind == "completion":
        if body.get("echo"):
            raise bad_request("echo is not supported", "echo")
        if body.get("suffix"):
            raise bad_request("suffix is not supported", "suffix")
        if body.get("best_of") not in (None, 1):
            raise bad_request("best_of is not supported", "best_of")
    else:
        if body.get("tools") or body.get("functions"):
            raise bad_request("tools and function calling are not supported", "tools")
        fmt = body.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            raise bad_request(
                "only response_format {'type': 'text'} is supported", "response_format"
            )


def _text_content(content: object, index: int) -> str:
    """A message's content: a string, or a list of text parts (OpenAI's content-part form)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise bad_request(
                    f"messages[{index}].content: only text parts are supported", "messages"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"messages[{index}].content: text must be a string", "messages")
            texts.append(text)
        return "".join(texts)
    raise bad_request(f"messages[{index}].content must be a string", "messages")


# OpenAI's newer "developer" role is the system role of older models.
_ROLE_ALIASES = {"developer": "system"}


def _messages(body: dict[str, Any]) -> tuple[wire.ChatMessage, ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    if len(raw) > wire.MAX_MESSAGES:
        raise bad_request(f"messages: at most {wire.MAX_MESSAGES}", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in wire.CHAT_ROLES:
            raise bad_request(
                f"messages[{i}].role must be one of {', '.join(wire.CHAT_ROLES)}", "messages"
            )
        out.append(wire.ChatMessage(role, _text_content(m.get("content"), i)))
    return tuple(out)


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request(
            "prompt must be a string (one prompt per request; no token ids)", "prompt"
        )
    return prompt


def parse_generation(body: object, kind: str) -> GenerationCall:
    """Validate an OpenAI request body; raises ApiError(400) with the offending parameter."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model must be a non-empty string", "model")
    _refuse_unsupported(body, kind)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    default_max = DEFAULT_CHAT_MAX_TOKENS if kind == "chat" else DEFAULT_COMPLETION_MAX_TOKENS
    max_tokens = _integer(body, "max_tokens", 1, wire.MAX_TOKENS_LIMIT)
    if kind == "chat" and max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1, wire.MAX_TOKENS_LIMIT)
    request = wire.Generate(
        id=0,
        model=model,
        prompt=_prompt(body) if kind == "completion" else "",
        max_tokens=default_max if max_tokens is None else max_tokens,
        # OpenAI's default temperature is 1 (sampling); send 0 for greedy, deterministic output.
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=_integer(body, "seed", 0, 2**32 - 2),
        stop=_stop(body),
        messages=_messages(body) if kind == "chat" else (),
        reproducible=_flag(body, "reproducible"),
    )
    if request.top_p <= 0:
        raise bad_request("top_p must be greater than 0", "top_p")
    try:  # the wire's own rules (lengths, ranges) are the last word: one place decides
        wire.decode(wire.encode(request))
    except wire.ProtocolError as exc:
        raise bad_request(str(exc)) from exc
    return GenerationCall(
        kind=kind,
        model=model,
        request=request,
        stream=stream,
        include_usage=bool(stream and options.get("include_usage")),
    )


# --- response bodies (pure functions) -------------------------------------------------------


def usage_json(done: wire.Done) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        # OpenAI's field for prompt tokens served from a cache (the node's prompt-prefix cache)
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def _finish(done: wire.Done) -> str:
    # "cancelled" only happens when we cancelled; OpenAI knows stop and length.
    return done.finish_reason if done.finish_reason in ("stop", "length") else "stop"


@attrs.frozen
class ResponseShape:
    """Builds the JSON objects of one response (completion or chat, whole or chunked)."""

    kind: str
    id: str
    model: str
    created: int

    @classmethod
    def new(cls, kind: str, model: str) -> ResponseShape:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return cls(kind, prefix + secrets.token_hex(12), model, int(time.time()))

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, done: wire.Done) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": _finish(done),
            }
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage_json(done)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": _finish(done)}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage_json(done)}

    def chunk(self, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
        """A stream chunk; for chat, text None is the opening chunk that carries the role."""
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if text is None:
                delta = {"role": "assistant", "content": ""}
            elif text:
                delta = {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, done: wire.Done) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage_json(done)}


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


# --- the network view (dashboard, /v1/models) -----------------------------------------------


class NetworkView:
    """The directory of signed node records, looked up at most every NETWORK_CACHE_S seconds."""

    def __init__(self, client: Client, ttl_s: float = NETWORK_CACHE_S) -> None:
        self._client = client
        self._ttl = ttl_s
        self._lock = trio.Lock()
        self._at = -math.inf
        self._nodes: list[CapabilityRecord] = []

    async def nodes(self) -> list[CapabilityRecord]:
        async with self._lock:  # concurrent viewers share one lookup
            if trio.current_time() - self._at >= self._ttl:
                self._nodes = await list_nodes(self._client)
                self._at = trio.current_time()
            return self._nodes


def model_table(nodes: list[CapabilityRecord]) -> list[dict[str, Any]]:
    """One entry per model build (sha256) on offer, most providers first.

    id is the model's name, which requests may use; when two different builds share a name the
    name would be ambiguous, so each of those is listed under its sha256 instead.
    """
    by_sha: dict[str, dict[str, Any]] = {}
    for r in nodes:
        for m in r.models:
            entry = by_sha.setdefault(
                m.sha256,
                {
                    "sha256": m.sha256,
                    "name": m.name,
                    "architecture": m.architecture,
                    "quantization": m.quantization,
                    "parameter_count": m.parameter_count,
                    "context_length": m.context_length,
                    "providers": 0,
                    "free_slots": 0,
                    "decode_tok_s_best": 0.0,
                    "oldest_issued_at": r.issued_at,
                },
            )
            entry["providers"] += 1
            entry["free_slots"] += r.load.free_slots
            entry["decode_tok_s_best"] = max(entry["decode_tok_s_best"], m.decode_tok_s)
            entry["oldest_issued_at"] = min(entry["oldest_issued_at"], r.issued_at)
    names: dict[str, int] = {}
    for e in by_sha.values():
        names[e["name"].lower()] = names.get(e["name"].lower(), 0) + 1
    for e in by_sha.values():
        e["id"] = e["name"] if names[e["name"].lower()] == 1 else e["sha256"]
    return sorted(by_sha.values(), key=lambda e: (-e["providers"], e["id"]))


def model_object(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entry["id"],
        "object": "model",
        "created": int(entry["oldest_issued_at"]),
        "owned_by": "gpunet",
        "name": entry["name"],
        "sha256": entry["sha256"],
        "providers": entry["providers"],
        "architecture": entry["architecture"],
        "quantization": entry["quantization"],
        "parameter_count": entry["parameter_count"],
        "context_length": entry["context_length"],
    }


def network_json(nodes: list[CapabilityRecord], now: float) -> dict[str, Any]:
    out_nodes = []
    for r in nodes:
        n = record_to_json(r)
        del n["public_key"]
        n["age_s"] = max(0.0, now - r.issued_at)
        out_nodes.append(n)
    return {"generated_at": now, "nodes": out_nodes, "models": model_table(nodes)}


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

        def on_text(text: str) -> None:
            nonlocal last
            now = trio.current_time()
            label = metrics.model_label(p.provider.model.name if p.provider else NO_MODEL)
            if p.chunks == 0:
                metrics.ttft.labels(label).observe(now - started)
            else:
                metrics.inter_token.labels(label).observe(now - last)
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
        requests (p2p/admission.py), so a burst through the gateway meets `busy` long before
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
                await emit(sse(self.shape.chunk(event)))
            elif isinstance(event, wire.Done):
                await emit(sse(self.shape.chunk("", _finish(event))))
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


# --- command line ---------------------------------------------------------------------------


def parse_api_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` (host 127.0.0.1)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = DEFAULT_API_HOST, text.strip()
    host = host.strip("[]") or DEFAULT_API_HOST
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT")
    return host, int(port)


def warn_if_exposed(host: str, api_key: str | None) -> None:
    """exo #1833: an inference API open to the network without a key is anyone's free GPU."""
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(
            f"gpunet: warning: the OpenAI API listens on {host} without --api-key; "
            "anyone who can reach it can spend the network's GPUs",
            err=True,
        )


def print_gateway_ready(url: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"event": "ready", "api": url + "/v1", "dashboard": url + "/"}))
        return
    click.echo(f"gpunet gateway: OpenAI API at {url}/v1")
    click.echo(f"dashboard {url}/   metrics {url}/metrics")
    click.echo("Press Ctrl-C to stop.")


@click.command("gateway")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Data dir whose running node to join by default (env GPUNET_DATA_DIR).",
)
@click.option(
    "--bootstrap",
    "bootstrap",
    multiple=True,
    metavar="HOST:PORT",
    help="DHT address of a node of the network (repeatable; env GPUNET_BOOTSTRAP). Default: "
    "the node started from the same data dir.",
)
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr.")
@click.option(
    "--api",
    "api",
    default=f"{DEFAULT_API_HOST}:{DEFAULT_API_PORT}",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to serve the OpenAI API, dashboard and metrics (port 0: any free port).",
)
@click.option(
    "--api-key",
    envvar="GPUNET_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on /v1 (env GPUNET_API_KEY).",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(0, 3600),
    default=DEFAULT_QUEUE_TIMEOUT_S,
    show_default=True,
    help="Seconds a request waits while every provider is busy before it gets a 503.",
)
@click.option(
    "--network-key",
    "network_key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="GPUNET_NETWORK_KEY",
    help="Key file of a private network (env GPUNET_NETWORK_KEY).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def gateway_command(
    data_dir: str | None,
    bootstrap: tuple[str, ...],
    verbose: int,
    network_key: Path | None,
    api: str,
    api_key: str | None,
    queue_timeout: float,
    as_json: bool,
) -> None:
    """Serve an OpenAI-compatible API into the network (a light client: no model here).

    Point any OpenAI client at http://HOST:PORT/v1. `GET /` shows the network, `/metrics` is
    for Prometheus.
    """
    from p2p import cli  # here, not at the top: cli imports this module to register the command

    cli.setup_logging(verbose)
    host, port = parse_api_address(api)
    warn_if_exposed(host, api_key)
    directory = Path(data_dir) if data_dir else cli.default_data_dir()

    async def amain() -> None:
        addrs = await cli.resolve_all(cli.bootstrap_list(bootstrap, directory, for_client=True))
        psk = cli.read_network_key(network_key)
        async with open_client(addrs, psk=psk) as client, trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
            serve = partial(
                serve_gateway, client, host, port, api_key=api_key, queue_timeout_s=queue_timeout
            )
            url = await nursery.start(serve)
            print_gateway_ready(url, as_json)
            sys.stdout.flush()

    try:
        trio.run(amain)
    except BaseException as exc:
        if cli.find_error(exc, (KeyboardInterrupt,)):
            click.echo("gpunet gateway stopped.", err=True)
            return
        err = cli.find_error(exc, (AskError, OSError))
        if err is None:
            raise
        hint = " (pass --api HOST:PORT; port 0 picks a free one)" if "in use" in str(err) else ""
        cli.fail(f"{err}{hint}")


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            click.echo("gpunet gateway stopped (SIGTERM).", err=True)
            scope.cancel()
            return
