"""Running models on this node: hardware probe, model files, and the llama.cpp worker thread.

Nothing here does networking; the p2p layer drives it.
"""

from inference.chat import render_chat
from inference.default_model import (
    DEFAULT_MODEL_FILENAME,
    DEFAULT_MODEL_SHA256,
    ensure_default_model,
    model_cache_dir,
)
from inference.gpu import GpuInfo, cpu_summary, probe_gpus, supports_gpu_offload
from inference.model_file import ModelFileError, ModelInfo, inspect_gguf, sha256_file
from inference.worker import (
    GenerationDone,
    GenerationError,
    GenerationRequest,
    ModelWorker,
    TokenChunk,
    WorkerBusy,
)

__all__ = [
    "DEFAULT_MODEL_FILENAME",
    "DEFAULT_MODEL_SHA256",
    "GenerationDone",
    "GenerationError",
    "GenerationRequest",
    "GpuInfo",
    "ModelFileError",
    "ModelInfo",
    "ModelWorker",
    "TokenChunk",
    "WorkerBusy",
    "cpu_summary",
    "ensure_default_model",
    "inspect_gguf",
    "model_cache_dir",
    "probe_gpus",
    "render_chat",
    "sha256_file",
    "supports_gpu_offload",
]
