"""Shared fixtures: model files built once per test session (or once per machine)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path, and the
# project is not necessarily installed into the environment that runs the tests.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _load_make_tiny_gguf() -> Callable[..., Path]:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_gguf", ROOT / "tools/make_tiny_gguf.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_gguf  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def make_tiny_gguf() -> Callable[..., Path]:
    """tools/make_tiny_gguf.py's make_tiny_gguf(path, *, seed=0, quantize="F32")."""
    return _load_make_tiny_gguf()


@pytest.fixture(scope="session")
def tiny_gguf(
    tmp_path_factory: pytest.TempPathFactory, make_tiny_gguf: Callable[..., Path]
) -> Path:
    """A ~6 MB random-weight Llama (2 layers, 512-token vocab, 512 context), F32."""
    return make_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf", seed=0)


@pytest.fixture(scope="session")
def gpu_layers() -> int:
    """Layers the model worker tests ask to offload: $GPUNET_TEST_GPU_LAYERS, default 0.

    CI has no GPU, so it runs them on the CPU. On a machine with an NVIDIA GPU and a CUDA build
    of llama-cpp-python, `GPUNET_TEST_GPU_LAYERS=99 pytest tests/inference` checks that
    batching, the reproducible lane and cancellation hold there too (tools/cuda_check.py).
    """
    return int(os.environ.get("GPUNET_TEST_GPU_LAYERS", "0"))


@pytest.fixture(scope="session")
def tiny_layers_offloaded(gpu_layers: int) -> int:
    """What a worker reports offloading of the tiny model when asked for `gpu_layers`: at most
    its 2 blocks and the output layer, and nothing with a CPU build of llama.cpp."""
    from inference.gpu import supports_gpu_offload

    return min(gpu_layers, 3) if supports_gpu_offload() else 0


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The real default model, assembled into the machine's model cache (once per machine).

    $GPUNET_MODEL_CACHE points it elsewhere, e.g. at a CI cache directory.
    """
    from inference.default_model import ensure_default_model

    return ensure_default_model()
