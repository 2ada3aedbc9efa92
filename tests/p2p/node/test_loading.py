"""Models llama.cpp refuses: the node serves the others and says why; out of memory names the
memory the model needed. Real llama.cpp on generated GGUFs."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from crypto.identity import Identity
from inference.llama_lowlevel import LoadedModel, LoadFailed
from inference.model_file import inspect_gguf
from p2p.node.models import load_models
from p2p.node.runtime import Node, NodeConfig, NodeError

# The tiny model's KV cache per token: 2 layers x (K + V) x 2 KV heads x 64 dims x f16.
TINY_KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 2


@pytest.fixture
def foreign_arch(tmp_path: Path, make_tiny_gguf: Callable[..., Path]) -> Path:
    return make_tiny_gguf(tmp_path / "alien.gguf", architecture="gpunet-no-such-arch")


async def test_a_model_of_an_unknown_architecture_is_left_out_with_the_reason(
    tiny_gguf: Path, foreign_arch: Path, tmp_path: Path
) -> None:
    config = NodeConfig(
        data_dir=tmp_path, models=(inspect_gguf(foreign_arch), inspect_gguf(tiny_gguf))
    )
    lines: list[str] = []
    served = await load_models(config, benchmark=False, on_progress=lines.append)
    try:
        assert [m.info.name for m in served] == ["tiny-llama"]
        refusal = [line for line in lines if line.startswith("not serving alien")]
        assert len(refusal) == 1
        assert "cannot load the architecture 'gpunet-no-such-arch'" in refusal[0]
        node = Node(config, Identity.generate())
        node.served = served
        record = node.build_record("127.0.0.1:1")
        assert [m.name for m in record.models] == ["tiny-llama"]
    finally:
        for m in served:
            await m.worker.aclose()


async def test_no_loadable_model_is_a_node_error(foreign_arch: Path, tmp_path: Path) -> None:
    config = NodeConfig(data_dir=tmp_path, models=(inspect_gguf(foreign_arch),))
    with pytest.raises(NodeError, match=r"no model could be loaded: alien\.gguf: this llama\.cpp"):
        await load_models(config, benchmark=False)


def test_a_kv_cache_larger_than_memory_is_a_clear_out_of_memory_error(tiny_gguf: Path) -> None:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tokens = 1 << (4 * ram // TINY_KV_BYTES_PER_TOKEN).bit_length()  # over 4x RAM, a power of 2
    with pytest.raises(LoadFailed) as info:
        LoadedModel.load(tiny_gguf, n_ctx=tokens, n_seq=1, n_threads=1, n_gpu_layers=0)
    assert info.value.out_of_memory
    assert f"not enough memory for the KV cache of 1 sequences of {tokens} tokens" in str(
        info.value
    )


async def test_out_of_memory_names_what_the_model_needs(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference.batching import BatchingWorker

    async def refuse(self: BatchingWorker) -> None:
        raise LoadFailed("tiny-llama.gguf: not enough memory to load it", out_of_memory=True)

    monkeypatch.setattr(BatchingWorker, "start", refuse)
    config = NodeConfig(data_dir=tmp_path, models=(inspect_gguf(tiny_gguf),), slots=8)
    with pytest.raises(NodeError) as info:
        await load_models(config, benchmark=False)
    assert re.search(r"it needs about [1-9]\d* MiB", str(info.value))  # weights + KV + buffers
    assert "KV cache of 8 slots x 512 tokens: try fewer --slots" in str(info.value)
