"""Fixtures several inference tests share: the tiny GGUF served by BatchingWorker, or by either
worker. A test module's own fixture of the same name (a worker with other settings) overrides
these, as pytest does for any conftest fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inference.batching import BatchingWorker
from inference.worker import ModelWorker


@pytest.fixture
async def batch(tiny_gguf: Path) -> AsyncIterator[BatchingWorker]:
    """A BatchingWorker on the tiny GGUF: 4 slots, 4 more requests may wait."""
    async with BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=4, max_queue=4) as worker:
        yield worker


@pytest.fixture(params=["batch", "solo"])
async def worker(request: pytest.FixtureRequest, tiny_gguf: Path) -> AsyncIterator[Any]:
    """Each test on both workers: BatchingWorker's own chain, and ModelWorker's Llama.generate."""
    opened: Any = (
        BatchingWorker(tiny_gguf, n_ctx=512, n_threads=2, slots=4, max_queue=4)
        if request.param == "batch"
        else ModelWorker(tiny_gguf, n_ctx=512, n_threads=2)
    )
    async with opened as w:
        yield w
