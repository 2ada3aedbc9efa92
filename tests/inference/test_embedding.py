"""The embedding worker (inference/embedding_worker.py) on a tiny embedding GGUF made at test time:
its vectors are llama.cpp's own pooled embeddings (normalised), bit-identical for the same
request, the same up to float noise however the inputs are packed into batches; its bounds
(inputs, bytes, tokens per input, requests in the worker) hold; it refuses generation and models
without pooling."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from inference.embedding import (
    MAX_EMBED_BYTES,
    MAX_EMBED_INPUTS,
    EmbeddingRequest,
    EmbeddingResult,
    max_inputs,
)
from inference.embedding_worker import EmbeddingWorker
from inference.generation import GenerationError, GenerationRequest, PromptTooLong, WorkerBusy
from inference.model_file import ModelFileError, inspect_gguf
from inference.scoring import ScoreRequest

TEXTS = ("hello world", "the capital of france is paris", "one", "the city of the model")
N_CTX = 512


@pytest.fixture(scope="module")
def embedding_gguf(
    tmp_path_factory: pytest.TempPathFactory, make_tiny_gguf: Callable[..., Path]
) -> Path:
    """The tiny Llama marked as an embedding model with mean pooling (256 dimensions)."""
    return make_tiny_gguf(tmp_path_factory.mktemp("emb") / "tiny-embed.gguf", pooling_type=1)


@pytest.fixture
async def worker(embedding_gguf: Path, gpu_layers: int) -> AsyncIterator[EmbeddingWorker]:
    async with EmbeddingWorker(
        embedding_gguf, n_ctx=N_CTX, n_threads=2, n_gpu_layers=gpu_layers, slots=1, max_queue=1
    ) as w:
        yield w


def vector(result: EmbeddingResult, i: int) -> np.ndarray[Any, Any]:
    return np.frombuffer(result.vectors[i], dtype="<f4").astype(np.float64)


def same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """The same vector up to the float noise of another batch composition (llama.cpp's matrix
    kernels sum in another order for another number of rows: ~1e-5 apart on the CPU)."""
    return float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b)) > 0.99999


def direct_embedding(path: Path, text: str) -> np.ndarray[Any, Any]:
    """llama.cpp's own pooled embedding of *text*, through llama-cpp-python's high-level API."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), embedding=True, n_ctx=N_CTX, verbose=False)
    try:
        return np.array(llm.embed(text), dtype=np.float64)
    finally:
        llm.close()


def test_model_file_names_the_pooling(embedding_gguf: Path, tiny_gguf: Path) -> None:
    assert inspect_gguf(embedding_gguf).pooling_type == 1
    assert inspect_gguf(tiny_gguf).pooling_type is None


async def test_vectors_are_llama_cpp_pooled_embeddings(
    worker: EmbeddingWorker, embedding_gguf: Path
) -> None:
    with trio.fail_after(60):
        result = await worker.embed(EmbeddingRequest(TEXTS))
    assert worker.dimensions == 256 and worker.pooling == "mean"
    assert result.dimensions == 256 and len(result.vectors) == len(TEXTS)
    assert all(len(v) == 4 * 256 for v in result.vectors)
    assert result.prompt_tokens > len(TEXTS)  # every text is several tokens, BOS included
    for i, text in enumerate(TEXTS):
        ours, theirs = vector(result, i), direct_embedding(embedding_gguf, text)
        assert abs(np.linalg.norm(ours) - 1) < 1e-5  # normalised, as OpenAI's are
        cosine = float(ours @ theirs) / float(np.linalg.norm(theirs))
        assert cosine > 0.9999, (text, cosine)
    # different texts, different vectors
    assert float(vector(result, 0) @ vector(result, 1)) < 0.999


async def test_deterministic_however_batched(worker: EmbeddingWorker) -> None:
    with trio.fail_after(60):
        together = await worker.embed(EmbeddingRequest(TEXTS))
        again = await worker.embed(EmbeddingRequest(TEXTS))
        alone = [await worker.embed(EmbeddingRequest((t,))) for t in TEXTS]
    assert together.vectors == again.vectors
    for i in range(len(TEXTS)):
        assert same(vector(together, i), vector(alone[i], 0))
    assert together.prompt_tokens == sum(a.prompt_tokens for a in alone)


async def test_concurrent_requests_share_batches(embedding_gguf: Path) -> None:
    """Requests waiting together are packed into the same decodes; each gets its own vectors."""
    results: dict[int, EmbeddingResult] = {}
    async with EmbeddingWorker(embedding_gguf, n_ctx=N_CTX, n_threads=2, slots=4) as w:

        async def one(i: int) -> None:
            results[i] = await w.embed(EmbeddingRequest((TEXTS[i], TEXTS[0])))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(len(TEXTS)):
                    nursery.start_soon(one, i)
            alone = await w.embed(EmbeddingRequest(TEXTS))
    for i in range(len(TEXTS)):
        assert same(vector(results[i], 0), vector(alone, i))
        assert same(vector(results[i], 1), vector(alone, 0))


async def test_an_input_longer_than_the_context_is_too_long(worker: EmbeddingWorker) -> None:
    with trio.fail_after(60), pytest.raises(PromptTooLong, match="at most 512 tokens"):
        await worker.embed(EmbeddingRequest(("ok", "word " * 600)))
    with trio.fail_after(60):  # the worker goes on
        assert len((await worker.embed(EmbeddingRequest(("ok",)))).vectors) == 1


async def test_requests_over_the_bound_are_busy_at_once(worker: EmbeddingWorker) -> None:
    """slots 1 + max_queue 1: a third request while two are in the worker is refused at once."""
    # Long enough (milliseconds of decode) to still be in the worker when the third arrives,
    # which is microseconds later: the three tasks start in one go, with no checkpoint between.
    long_inputs = EmbeddingRequest(tuple(f"{i} " + "the city " * 10 for i in range(16)))
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await worker.embed(long_inputs)
            outcomes.append("ok")
        except WorkerBusy:
            outcomes.append("busy")

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
    assert sorted(outcomes) == ["busy", "ok", "ok"]


async def test_generation_and_scoring_are_refused(worker: EmbeddingWorker) -> None:
    with pytest.raises(GenerationError, match="embedding model"):
        async with worker.generate(GenerationRequest("hello", max_tokens=4)):
            pass
    with pytest.raises(GenerationError, match="embedding model"):
        await worker.score(ScoreRequest(GenerationRequest("hello", max_tokens=4), (5,)))


async def test_a_model_without_pooling_is_not_served(tiny_gguf: Path) -> None:
    worker = EmbeddingWorker(tiny_gguf, n_ctx=N_CTX, n_threads=2)
    with trio.fail_after(60), pytest.raises(ModelFileError, match="pooling"):
        await worker.start()
    await worker.aclose()


async def test_closed_worker_refuses(embedding_gguf: Path) -> None:
    w = EmbeddingWorker(embedding_gguf, n_ctx=N_CTX, n_threads=2)
    with pytest.raises(GenerationError, match="not running"):
        await w.embed(EmbeddingRequest(("x",)))
    with trio.fail_after(60):
        await w.start()
        await w.aclose()
    with pytest.raises(GenerationError, match="not running"):
        await w.embed(EmbeddingRequest(("x",)))


def test_request_bounds() -> None:
    with pytest.raises(ValueError, match="at least one"):
        EmbeddingRequest(())
    with pytest.raises(ValueError, match=f"at most {MAX_EMBED_INPUTS}"):
        EmbeddingRequest(("a",) * (MAX_EMBED_INPUTS + 1))
    with pytest.raises(ValueError, match=f"at most {MAX_EMBED_BYTES} bytes"):
        EmbeddingRequest(("é" * (MAX_EMBED_BYTES // 2 + 1),))
    assert max_inputs(256) == MAX_EMBED_INPUTS
    assert max_inputs(4096) * 4096 * 4 < 1 << 20  # an answer fits one session frame
