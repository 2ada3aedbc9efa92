"""The gateway's wait for a free provider, on trio's MockClock, with `generate` scripted.

Which failures wait is decided by their code alone; the wait ends with the queue's timeout, or
at once when another request of the gateway finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from p2p.api import gateway_queue
from p2p.api.gateway_queue import QUEUE_RETRY_MAX_S, WAITS_FOR_ROOM, GatewayQueue
from p2p.client.network import AskError
from p2p.errors import ErrorCode
from p2p.protocol import wire

REQUEST = wire.Generate(id=0, model="m", prompt="p", max_tokens=1)
DONE = wire.Done(0, "length", 1, 1, 0.1, 10.0)


def scripted(monkeypatch: pytest.MonkeyPatch, answers: list[ErrorCode | None]) -> list[int]:
    """`generate` fails with each code in turn (None: succeeds); returns the ids it was given."""
    ids: list[int] = []

    async def fake_generate(
        _client: object, _model: str, request: wire.Generate, *_: Any, **_kw: Any
    ) -> Any:
        ids.append(request.id)
        code = answers.pop(0) if answers else None
        if code is not None:
            raise AskError(f"refused: {code.value}", code)
        return DONE

    monkeypatch.setattr(gateway_queue, "generate", fake_generate)
    return ids


def queue_of(timeout_s: float) -> GatewayQueue:
    return GatewayQueue(client=None, timeout_s=timeout_s)  # type: ignore[arg-type]


async def run(queue: GatewayQueue, delivered: Callable[[], bool] = lambda: False) -> object:
    try:
        return await queue.generate("m", REQUEST, lambda _t: None, lambda _p: None, delivered)
    except AskError as exc:
        return exc


@pytest.mark.parametrize("code", sorted(WAITS_FOR_ROOM, key=lambda c: c.value))
async def test_no_room_waits_and_tries_again(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock, code: ErrorCode
) -> None:
    ids = scripted(monkeypatch, [code, code, None])
    assert await run(queue_of(60)) == DONE
    assert ids == [1, 2, 3]  # a fresh request id each try


@pytest.mark.parametrize("code", sorted(set(ErrorCode) - WAITS_FOR_ROOM, key=lambda c: c.value))
async def test_other_failures_do_not_wait(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock, code: ErrorCode
) -> None:
    ids = scripted(monkeypatch, [code, None])
    started = trio.current_time()
    result = await run(queue_of(60))
    assert isinstance(result, AskError) and result.code is code
    assert ids == [1] and trio.current_time() == started


async def test_a_started_stream_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    scripted(monkeypatch, [ErrorCode.BUSY, None])
    result = await run(queue_of(60), delivered=lambda: True)
    assert isinstance(result, AskError) and result.code is ErrorCode.BUSY


async def test_the_wait_ends_with_the_timeout(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    scripted(monkeypatch, [ErrorCode.BUSY] * 1000)
    started = trio.current_time()
    result = await run(queue_of(10))
    assert isinstance(result, AskError) and result.code is ErrorCode.BUSY
    assert 10 <= trio.current_time() - started < 10 + QUEUE_RETRY_MAX_S


async def test_a_finished_request_wakes_the_waiting_ones(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    ids = scripted(monkeypatch, [ErrorCode.BUSY] * 5 + [None])
    queue = queue_of(60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, queue)
        await trio.testing.wait_all_tasks_blocked()
        assert ids == [1]  # waiting out its backoff; the clock does not move in this test
        for tries in (2, 3):
            queue.note_finished()
            await trio.testing.wait_all_tasks_blocked()
            assert len(ids) == tries  # woken by the finished request, not by a timer
        nursery.cancel_scope.cancel()


async def test_a_request_that_never_ends_times_out_at_the_overall_deadline(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """A provider that holds the request (a tarpit, a stalled stream) cannot hold the gateway:
    the whole request ends with `timeout` (HTTP 504) at the queue's wait plus the generation
    deadline, whatever the failover below is doing."""

    async def stalled(*_: Any, **_kw: Any) -> Any:
        await trio.sleep_forever()

    monkeypatch.setattr(gateway_queue, "generate", stalled)
    queue = GatewayQueue(client=None, timeout_s=3, generation_deadline_s=7)  # type: ignore[arg-type]
    started = trio.current_time()
    result = await run(queue)
    assert isinstance(result, AskError) and result.code is ErrorCode.TIMEOUT
    assert trio.current_time() - started == pytest.approx(10)


async def test_the_overall_deadline_includes_the_wait_for_room(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    calls: list[float] = []

    async def busy_then_stalled(*_: Any, **_kw: Any) -> Any:
        calls.append(trio.current_time())
        if len(calls) < 3:
            raise AskError("refused: busy", ErrorCode.BUSY)
        await trio.sleep_forever()

    monkeypatch.setattr(gateway_queue, "generate", busy_then_stalled)
    queue = GatewayQueue(client=None, timeout_s=60, generation_deadline_s=5)  # type: ignore[arg-type]
    started = trio.current_time()
    result = await run(queue)
    assert isinstance(result, AskError) and result.code is ErrorCode.TIMEOUT
    assert trio.current_time() - started == pytest.approx(65)


async def test_each_try_gets_what_is_left_of_the_overall_deadline(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    given: list[float] = []

    async def busy_twice(*_: Any, deadline_s: float, **_kw: Any) -> Any:
        given.append(deadline_s)
        if len(given) < 3:
            raise AskError("refused: busy", ErrorCode.BUSY)
        return DONE

    monkeypatch.setattr(gateway_queue, "generate", busy_twice)
    queue = GatewayQueue(client=None, timeout_s=60, generation_deadline_s=540)  # type: ignore[arg-type]
    assert await run(queue) == DONE
    assert given[0] == pytest.approx(600) and given[0] > given[1] > given[2] > 599
