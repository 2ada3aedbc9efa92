"""OpenAI's `n` > 1: n generations for one request, their answers merged into one response.

Each choice is a request of its own through the network (no wire change: a node that knows
nothing of `n` serves it), with its own seed: a request with seed s gives choice i the seed
s + i, so a seeded n-request is reproducible and choice i equals the n = 1 request with seed
s + i; without a seed each choice gets the node's random one. The n requests carry one prompt,
and a node's batching worker prefills such same-prompt requests once when they arrive together
(inference/sibling_prefill.py): the cost of n = 4 is about one prefill and a 4-sequence decode.

Each choice is answered by a `GenerationResponse` of its own (p2p/api/generation_response.py)
writing into this response rather than to the client; this file re-indexes and merges what they
write. So each choice's answer has everything a single answer has (text, finish reason,
log-probabilities, tool calls, and the in-stream error after a failure), without a second copy
of that code here:

- whole: one body with the n choices (`index` 0..n-1) and usage with the prompt counted once
  and the completion tokens summed, as OpenAI counts it;
- streamed: every chunk as the choice's writer made it, with its `index` and the response's
  one id; the usage chunk (stream_options.include_usage) merged, once, at the end; one
  `data: [DONE]`.

The HTTP status is that of the first choice to answer: an error before anything was sent is
that choice's error response, the other choices cancelled; a choice that fails after the stream
has begun ends the stream with its error event. Each choice counts as a request in /metrics
(it is one, on the network). The n requests go out at once; with several providers of a model
each is ranked on its own, so they share a prefill only when they reach the same node.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import attrs
import trio
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from p2p.api.gateway_queue import GatewayQueue
from p2p.api.generation_response import GenerationResponse
from p2p.api.request_parsing import GenerationCall
from p2p.api.responses import ResponseShape, sse
from p2p.metrics import Metrics
from p2p.protocol import wire

# What a choice's writer sent: (choice index, ASGI message).
Sent = tuple[int, Message]


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice *index*'s seed: the request's plus the index (wrapping within the wire's range),
    or None (the node picks a random one) when the request has none."""
    return None if seed is None else (seed + index) % (wire.MAX_SEED + 1)


def choice_calls(call: GenerationCall) -> list[GenerationCall]:
    """The n single-choice calls of *call*, each with its seed."""
    return [
        attrs.evolve(
            call, n=1, request=attrs.evolve(call.request, seed=choice_seed(call.request.seed, i))
        )
        for i in range(call.n)
    ]


def merged_usage(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """One usage for the n choices: the prompt (and its cached part) once, as in choice 0's,
    the completion tokens of all."""
    merged = copy.deepcopy(usages[0])
    completion = sum(int(u.get("completion_tokens", 0)) for u in usages)
    merged["completion_tokens"] = completion
    merged["total_tokens"] = int(merged.get("prompt_tokens", 0)) + completion
    return merged


def merged_whole(bodies: list[dict[str, Any]], shape: ResponseShape) -> dict[str, Any]:
    """The whole answer of n choices from each choice's whole answer."""
    body = {**bodies[0], "id": shape.id, "created": shape.created}
    body["choices"] = [{**b["choices"][0], "index": i} for i, b in enumerate(bodies)]
    if all("usage" in b for b in bodies):
        body["usage"] = merged_usage([b["usage"] for b in bodies])
    return body


def sse_payloads(data: bytes) -> list[str]:
    """The `data:` payloads of the SSE events in *data* (a writer sends whole events)."""
    out = []
    for event in data.decode().split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data: "):
                out.append(line[len("data: ") :])
    return out


class ChoicesResponse(Response):
    """The response of a request with n > 1: n single-choice responses, merged."""

    def __init__(self, queue: GatewayQueue, metrics: Metrics, call: GenerationCall) -> None:
        self.call = call
        self.shape = ResponseShape.new(call.kind, call.model)
        self.background = None
        self.choices = [GenerationResponse(queue, metrics, c) for c in choice_calls(call)]
        self.complete = False  # set just before the last body message (see _Progress)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender, sent = trio.open_memory_channel[Sent](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            with sender:
                for i, choice in enumerate(self.choices):
                    nursery.start_soon(self._run_choice, i, choice, scope, sender.clone())
            if self.call.stream:
                await self._write_stream(sent, send)
            else:
                await self._write_whole(sent, send)
            self._cancel_choices(nursery.cancel_scope)

    async def _run_choice(
        self,
        index: int,
        choice: GenerationResponse,
        scope: Scope,
        sender: trio.MemorySendChannel[Sent],
    ) -> None:
        async def no_disconnect() -> Message:
            await trio.sleep_forever()  # the client's disconnect is watched here, for all
            raise AssertionError("unreachable")  # pragma: no cover

        async def into_merge(message: Message) -> None:
            sender.send_nowait((index, message))

        with sender:
            await choice(scope, no_disconnect, into_merge)

    def _cancel_choices(self, scope: trio.CancelScope) -> None:
        """Cancel the choices still running; they count as cancelled, not failed."""
        for choice in self.choices:
            choice.progress.disconnected = not choice.progress.complete
        scope.cancel()

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.complete:
                    self._cancel_choices(scope)
                return

    async def _write_whole(self, sent: trio.MemoryReceiveChannel[Sent], send: Send) -> None:
        starts: dict[int, Message] = {}
        bodies: dict[int, dict[str, Any]] = {}
        async for index, message in sent:
            if message["type"] == "http.response.start":
                starts[index] = message
                continue
            data = message.get("body", b"")
            if starts[index]["status"] != 200:  # the first failure is the answer
                await self._send(send, starts[index], data)
                return
            bodies[index] = json.loads(data)
            if len(bodies) == len(self.choices):
                break
        if len(bodies) < len(self.choices):  # pragma: no cover - every writer answers
            raise AssertionError("a choice ended without an answer")
        body = merged_whole([bodies[i] for i in range(len(self.choices))], self.shape)
        data = json.dumps(body, ensure_ascii=False).encode()
        await self._send(send, starts[0], data)

    async def _send(self, send: Send, start: Message, data: bytes) -> None:
        """A whole response: *start*'s status and headers, with *data*'s length."""
        headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
        headers.append((b"content-length", b"%d" % len(data)))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        self.complete = True
        await send({"type": "http.response.body", "body": data})

    async def _write_stream(self, sent: trio.MemoryReceiveChannel[Sent], send: Send) -> None:
        starts: dict[int, Message] = {}
        usages: dict[int, dict[str, Any]] = {}
        usage_chunk: dict[str, Any] | None = None
        started = False
        finished: set[int] = set()

        async def emit(obj: dict[str, Any]) -> None:
            data = sse(obj)
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async for index, message in sent:
            if message["type"] == "http.response.start":
                starts[index] = message
                if not started and message["status"] == 200:
                    started = True
                    await send(message)
                continue
            data = message.get("body", b"")
            if starts[index]["status"] != 200:  # this choice failed before its first text
                if not started:
                    await self._send(send, starts[index], data)
                    return
                await emit(json.loads(data))  # OpenAI's in-stream error event
                break
            failed = False
            for payload in sse_payloads(data):
                if payload == "[DONE]":
                    finished.add(index)
                    continue
                obj = json.loads(payload)
                if "error" in obj:  # the choice's writer ended its stream with an error
                    await emit(obj)
                    failed = True
                elif not obj.get("choices") and "usage" in obj:
                    usages[index], usage_chunk = obj["usage"], obj
                else:
                    await emit(self._reindexed(obj, index))
            if failed or len(finished) == len(self.choices):
                break
        if usage_chunk is not None and len(usages) == len(self.choices):
            merged = [usages[i] for i in range(len(self.choices))]
            await emit({**self._reindexed(usage_chunk, 0), "usage": merged_usage(merged)})
        self.complete = True
        await send({"type": "http.response.body", "body": sse("[DONE]"), "more_body": False})

    def _reindexed(self, chunk: dict[str, Any], index: int) -> dict[str, Any]:
        """A choice's chunk as this response's: its id and time, the choice's index."""
        choices = [{**c, "index": index} for c in chunk.get("choices", [])]
        return {**chunk, "id": self.shape.id, "created": self.shape.created, "choices": choices}


def generation_response(queue: GatewayQueue, metrics: Metrics, call: GenerationCall) -> Response:
    """The ASGI response of a parsed generation request: one choice or n."""
    if call.n > 1:
        return ChoicesResponse(queue, metrics, call)
    return GenerationResponse(queue, metrics, call)
