"""The ASGI response of one generation request: it runs the generation while writing it out.

Why a hand-made ASGI response rather than Starlette's `StreamingResponse`: the HTTP status must
wait for the network's first answer (an unknown model is a 404, all providers busy a 503, even
for `stream: true`), and a client that disconnects must cancel the generation — which here is a
cancel scope around both the generation and the writer, so the session to the node closes and
the node stops generating.

Two tasks meet through a channel of events (text, the final `wire.Done`, or an `ApiError`): the
producer runs the generation through the gateway's queue, the writer turns events into a whole
JSON body or SSE chunks. The bodies themselves are p2p/api/responses.py's.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from p2p.api.gateway_queue import GatewayQueue
from p2p.api.logprob_shape import LogprobShapes, prompt_only_done
from p2p.api.openai_errors import ApiError, error_from_ask, internal_error
from p2p.api.recent_history import request_sample
from p2p.api.request_parsing import GenerationCall
from p2p.api.responses import SSE_HEADERS, ResponseShape, openai_finish_reason, sse
from p2p.api.tool_params import ToolCallStream, calls_json, parsed_names
from p2p.client.network import AskError
from p2p.client.ranking import Provider
from p2p.metrics import NO_MODEL, Metrics, Outcome
from p2p.protocol import wire

log = logging.getLogger(__name__)


@attrs.define
class _Progress:
    provider: Provider | None = None
    chunks: int = 0
    first_at: float | None = None  # trio time of the first text (the dashboard's TTFT)
    done: wire.Done | None = None
    # Set just before the last body message: Hypercorn reports http.disconnect as soon as the
    # response is complete, which is no cancellation.
    complete: bool = False
    disconnected: bool = False


Event = str | wire.Done | ApiError


class GenerationResponse(Response):
    """Runs one generation while writing it to the HTTP client; a disconnect cancels both."""

    def __init__(self, queue: GatewayQueue, metrics: Metrics, call: GenerationCall) -> None:
        self.queue = queue
        self.metrics = metrics
        self.call = call
        self.shape = ResponseShape.new(call.kind, call.model, parsed_names(call.request))
        self.background = None
        self.progress = _Progress()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = trio.current_time()
        outcome = Outcome.ERROR
        self.metrics.active_sessions.inc()
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
            self.metrics.active_sessions.dec()
            self.queue.note_finished()
            self._count(outcome, started)

    def _count(self, outcome: Outcome, started: float) -> None:
        metrics, p = self.metrics, self.progress
        if p.disconnected:
            outcome = Outcome.CANCELLED
        label = p.provider.model.name if p.provider else NO_MODEL
        metrics.count_request(label, outcome)
        tokens = p.done.completion_tokens if p.done else p.chunks
        if tokens and p.provider:
            metrics.tokens.labels(metrics.model_label(label)).inc(tokens)
        peer = p.provider.record.peer_id if p.provider else ""
        ended = trio.current_time()
        self.queue.history.add(  # the dashboard's charts (p2p/api/recent_history.py)
            request_sample(peer, label, tokens, outcome.value, (started, p.first_at, ended))
        )
        log.info(
            "%s %s -> %s (%d chunks, %.3f s)",
            self.call.kind,
            self.call.model,
            outcome.value,
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
        p = self.progress

        def on_provider(provider: Provider) -> None:
            p.provider = provider

        on_text = self._text_sink(events, started)
        with events:
            try:
                p.done = await self.queue.generate(
                    self.call.model, self.call.request, on_text, on_provider, lambda: p.chunks > 0
                )
                events.send_nowait(p.done)
            except AskError as exc:
                events.send_nowait(error_from_ask(exc))
            except Exception as exc:  # a bug or a DHT failure: this request fails, not the server
                log.exception("generation through the network failed")
                events.send_nowait(internal_error(exc))

    def _text_sink(
        self, events: trio.MemorySendChannel[Event], started: float
    ) -> Callable[[str], None]:
        """What receives each piece of text: timed for the metrics, then sent to the writer."""
        metrics, p = self.metrics, self.progress
        last = started
        inter_token = None  # the histogram of this request's model, looked up once

        def on_text(text: str) -> None:
            nonlocal last, inter_token
            now = trio.current_time()
            if inter_token is None:
                label = metrics.model_label(p.provider.model.name if p.provider else NO_MODEL)
                inter_token = metrics.inter_token.labels(label)
                metrics.ttft.labels(label).observe(now - started)
                p.first_at = now
            else:
                inter_token.observe(now - last)
            last = now
            p.chunks += 1
            events.send_nowait(text)

        return on_text

    async def _write_whole(self, events: trio.MemoryReceiveChannel[Event], send: Send) -> Outcome:
        echo, shapes = self._logprob_shapes()
        pieces: list[str] = [echo]
        prompt_only = self.call.logprobs.prompt_only  # echo, max_tokens 0: the prompt alone
        async for event in events:
            if isinstance(event, ApiError):
                await self._send_error(send, event)
                return event.outcome
            if isinstance(event, wire.Done):
                if shapes is not None and (gap := shapes.gap()) is not None:
                    await self._send_error(send, gap)  # asked for, not sent: never a silent gap
                    return gap.outcome
                done = event if not prompt_only else prompt_only_done(event)
                body = self.shape.whole("".join(pieces[:1] if prompt_only else pieces), done)
                if shapes is not None:  # the whole answer's log-probabilities
                    body["choices"][0]["logprobs"] = shapes.whole(event, generated=not prompt_only)
                await self._send_json(send, 200, body)
                return Outcome.OK
            pieces.append(event)
            if shapes is not None:
                shapes.add(event)
        raise AssertionError("the producer ended without a result")  # pragma: no cover

    async def _write_stream(self, events: trio.MemoryReceiveChannel[Event], send: Send) -> Outcome:
        first = await events.receive()
        if isinstance(first, ApiError):  # nothing sent yet: a proper HTTP status
            await self._send_error(send, first)
            return first.outcome
        headers = self._with_provider(list(SSE_HEADERS))
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if self.call.kind == "chat":
            await emit(sse(self.shape.chunk(None)))
        echo, shapes = self._logprob_shapes()
        if echo:
            await emit(self.shape.text_event(echo))
        event: Event = first
        tools = ToolCallStream(self.shape.tool_names) if self.shape.tool_names else None
        while isinstance(event, str):
            if tools is not None:  # text that may open a tool call is held back
                if released := tools.feed(event):
                    await emit(self.shape.text_event(released))
            elif shapes is None:
                await emit(self.shape.text_event(event))
            else:  # this chunk's tokens' log-probabilities
                chunk = self.shape.chunk(event)
                chunk["choices"][0]["logprobs"] = shapes.add(event)
                await emit(sse(chunk))
            event = await events.receive()
        if isinstance(event, wire.Done):
            finish = openai_finish_reason(event)
            if tools is not None:  # the held text, or the calls it made (p2p/api/tool_params.py)
                rest, calls = tools.finish()
                if rest:
                    await emit(self.shape.text_event(rest))
                if calls:
                    await emit(sse(self.shape.tool_calls_chunk(calls_json(calls, streamed=True))))
                    finish = "tool_calls"
            await emit(sse(self.shape.chunk("", finish)))
            if self.call.include_usage:
                await emit(sse(self.shape.usage_chunk(event)))
            outcome = Outcome.OK
        else:  # failed after text went out: OpenAI's in-stream error event
            await emit(sse(event.body()))
            outcome = event.outcome
        self.progress.complete = True
        await send({"type": "http.response.body", "body": sse("[DONE]"), "more_body": False})
        return outcome

    def _logprob_shapes(self) -> tuple[str, LogprobShapes | None]:
        """The echoed prompt ("" without echo) and, when asked, the log-probabilities' shapes."""
        params = self.call.logprobs
        echo = self.call.request.prompt if params.echo else ""
        return echo, LogprobShapes(self.call.kind, len(echo)) if params.wanted else None

    def _with_provider(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """*headers* and, once a provider was chosen, which one (for debugging a network)."""
        if self.progress.provider is not None:
            headers.append((b"x-gpunet-provider", self.progress.provider.record.peer_id.encode()))
        return headers

    async def _send_json(self, send: Send, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        headers = self._with_provider(
            [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        )
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self.progress.complete = True
        await send({"type": "http.response.body", "body": data})

    async def _send_error(self, send: Send, error: ApiError) -> None:
        await self._send_json(send, error.status, error.body())
