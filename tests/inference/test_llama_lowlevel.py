"""LoadedModel's context settings, read back from llama.cpp."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from inference.llama_lowlevel import LoadedModel, default_threads


@pytest.mark.parametrize("threads", [1, 3])
def test_an_explicit_thread_count_holds_for_batches_too(tiny_gguf: Path, threads: int) -> None:
    model = LoadedModel.load(tiny_gguf, n_ctx=256, n_seq=2, n_threads=threads, n_gpu_layers=0)
    try:
        assert llama_cpp.llama_n_threads(model.ctx) == threads
        assert llama_cpp.llama_n_threads_batch(model.ctx) == threads
    finally:
        model.close()


def test_without_a_thread_count_batches_use_every_core(tiny_gguf: Path) -> None:
    model = LoadedModel.load(tiny_gguf, n_ctx=256, n_seq=2, n_threads=None, n_gpu_layers=0)
    try:
        assert (
            llama_cpp.llama_n_threads(model.ctx),
            llama_cpp.llama_n_threads_batch(model.ctx),
        ) == default_threads()
    finally:
        model.close()
