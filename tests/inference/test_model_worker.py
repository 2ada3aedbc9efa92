from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from inference.generation import (
    GenerationDone,
    GenerationError,
    GenerationRequest,
    TokenChunk,
    WorkerBusy,
)
from inference.model_file import ModelFileError
from inference.streaming import split_at_stop
from inference.worker import ModelWorker


async def run(worker: ModelWorker, request: GenerationRequest) -> tuple[str, GenerationDone]:
    chunks: list[TokenChunk] = []
    done = None
    async with worker.generate(request) as stream:
        async for item in stream:
            if isinstance(item, TokenChunk):
                assert item.text and item.token_count >= 1
                chunks.append(item)
            else:
                done = item
    assert done is not None
    return "".join(c.text for c in chunks), done


@pytest.fixture
async def tiny_worker(gpu_layers: int, tiny_gguf: Path) -> AsyncIterator[ModelWorker]:
    started = time.perf_counter()
    async with ModelWorker(
        tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, n_threads=2, max_queue=1
    ) as worker:
        print(f"tiny model load: {time.perf_counter() - started:.3f}s")
        yield worker


async def test_generates_exactly_max_tokens(
    tiny_layers_offloaded: int, tiny_worker: ModelWorker
) -> None:
    text, done = await run(tiny_worker, GenerationRequest("hello world", max_tokens=24))
    assert text
    assert done.finish_reason == "length"
    assert done.completion_tokens == 24
    assert done.prompt_tokens >= 2
    assert done.time_to_first_token_s > 0 and done.decode_tokens_per_s > 0
    assert tiny_worker.n_gpu_layers == tiny_layers_offloaded


async def test_greedy_is_deterministic(tiny_worker: ModelWorker) -> None:
    request = GenerationRequest("the capital of france is", max_tokens=40)
    first, _ = await run(tiny_worker, request)
    await run(tiny_worker, GenerationRequest("something else entirely", max_tokens=10))
    second, _ = await run(tiny_worker, request)
    assert first == second


async def test_seeded_sampling_repeats(tiny_worker: ModelWorker) -> None:
    request = GenerationRequest("hello", max_tokens=30, temperature=1.5, top_p=0.95, seed=7)
    first, _ = await run(tiny_worker, request)
    second, _ = await run(tiny_worker, request)
    assert first == second


async def test_stop_string_ends_generation_before_it(tiny_worker: ModelWorker) -> None:
    full, _ = await run(tiny_worker, GenerationRequest("hello world", max_tokens=40))
    stop = full[10:13]
    text, done = await run(
        tiny_worker, GenerationRequest("hello world", max_tokens=40, stop=(stop, "\x00never"))
    )
    assert text == full[: full.index(stop)]
    assert done.finish_reason == "stop"
    assert done.completion_tokens < 40


async def test_queue_bound(tiny_worker: ModelWorker) -> None:
    long = GenerationRequest("hello", max_tokens=400)
    async with tiny_worker.generate(long) as running:
        await running.__anext__()  # the worker has taken it: nothing is waiting now
        async with tiny_worker.generate(long) as waiting:
            with pytest.raises(WorkerBusy):
                async with tiny_worker.generate(long):
                    pass
            async for _ in waiting:
                break


async def test_a_request_given_up_while_queued_frees_its_place_at_once(
    tiny_worker: ModelWorker,
) -> None:
    long = GenerationRequest("hello", max_tokens=400)
    async with tiny_worker.generate(long) as running:
        await running.__anext__()  # the worker is busy with it until it ends
        async with tiny_worker.generate(long):
            assert tiny_worker.load.queue_depth == 1
        assert tiny_worker.load.queue_depth == 0
        # and the place is really free: another request queues rather than being refused
        async with tiny_worker.generate(GenerationRequest("hello", max_tokens=2)):
            assert tiny_worker.load.queue_depth == 1
        assert tiny_worker.load.queue_depth == 0


async def test_cancel_mid_generation_then_next_request_works(tiny_worker: ModelWorker) -> None:
    request = GenerationRequest("the capital of france is", max_tokens=200)
    expected, _ = await run(tiny_worker, request)
    seen = 0
    async with tiny_worker.generate(request) as stream:
        async for item in stream:
            assert isinstance(item, TokenChunk)
            seen += 1
            if seen == 2:
                break
    with trio.fail_after(60):  # a hang, not a speed check: generous for a loaded machine
        text, done = await run(tiny_worker, request)
    assert (text, done.finish_reason) == (expected, "length")


async def test_cancelled_scope_around_a_stream(tiny_worker: ModelWorker) -> None:
    with trio.move_on_after(0.001):
        await run(tiny_worker, GenerationRequest("hello", max_tokens=400))
    text, done = await run(tiny_worker, GenerationRequest("hello", max_tokens=5))
    assert done.completion_tokens == 5 and text


async def test_prompt_too_long_is_a_clear_error(tiny_worker: ModelWorker) -> None:
    with pytest.raises(GenerationError, match="exceeds this model's context of 512 tokens"):
        await run(tiny_worker, GenerationRequest("hello " * 600, max_tokens=8))
    _, done = await run(tiny_worker, GenerationRequest("hello", max_tokens=3))
    assert done.completion_tokens == 3


async def test_closed_worker_refuses(gpu_layers: int, tiny_gguf: Path) -> None:
    worker = ModelWorker(tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers)
    with pytest.raises(GenerationError, match="not been started"):
        await run(worker, GenerationRequest("x"))
    await worker.start()
    await worker.aclose()
    with pytest.raises(GenerationError, match="closed"):
        await run(worker, GenerationRequest("x"))


async def test_start_on_a_non_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.gguf"
    path.write_text("hello")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        await ModelWorker(path).start()


def test_request_validation() -> None:
    with pytest.raises(ValueError):
        GenerationRequest("x", max_tokens=0)
    with pytest.raises(ValueError):
        GenerationRequest("x", top_p=0.0)
    with pytest.raises(ValueError):
        GenerationRequest("x", stop=("",))
    assert GenerationRequest("x", stop=["a"]).stop == ("a",)
    assert GenerationRequest("x", stop="ab").stop == ("ab",)


def test_split_at_stop() -> None:
    assert split_at_stop("hello wor", ("world",)) == ("hello ", "wor", False)
    assert split_at_stop("hello world!", ("world",)) == ("hello ", "", True)
    assert split_at_stop("ab", ("b", "ab")) == ("", "", True)
    assert split_at_stop("abc", ()) == ("abc", "", False)
    assert split_at_stop("xa", ("aa", "ab")) == ("x", "a", False)


@pytest.mark.slow
async def test_default_model_knows_paris(gpu_layers: int, default_model: Path) -> None:
    started = time.perf_counter()
    async with ModelWorker(
        default_model, n_ctx=2048, n_gpu_layers=gpu_layers, n_threads=2
    ) as worker:
        load_s = time.perf_counter() - started
        text, done = await run(worker, GenerationRequest("The capital of France is", max_tokens=16))
        _, long = await run(worker, GenerationRequest("Once upon a time", max_tokens=128))
    print(
        f"default model: load {load_s:.2f}s, TTFT {done.time_to_first_token_s * 1000:.0f} ms, "
        f"{long.decode_tokens_per_s:.1f} tok/s over {long.completion_tokens} tokens; {text!r}"
    )
    assert "France" in text or "Paris" in text
    assert done.completion_tokens == 16 and done.finish_reason == "length"


async def test_aclose_cancels_the_running_request_and_fails_waiting_ones(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    worker = ModelWorker(tiny_gguf, n_ctx=512, n_gpu_layers=gpu_layers, max_queue=2)
    await worker.start()
    long = GenerationRequest("hello", max_tokens=400)
    async with worker.generate(long) as running, worker.generate(long) as waiting:
        await running.__anext__()
        await worker.aclose()
        items = [item async for item in running]
        assert isinstance(items[-1], GenerationDone)
        assert items[-1].finish_reason == "cancelled"
        with pytest.raises(GenerationError, match="closed"):
            await waiting.__anext__()
