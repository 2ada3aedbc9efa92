"""Running models on this node: hardware probe, model files, and the llama.cpp worker thread.

Nothing here does networking; the p2p layer drives it.
"""

from inference.batching import BatchingWorker
from inference.benchmark import Throughput
from inference.chat import render_chat
from inference.default_model import (
    DEFAULT_MODEL_FILENAME,
    DEFAULT_MODEL_SHA256,
    ensure_default_model,
    model_cache_dir,
)
from inference.gpu import GpuInfo, cpu_summary, probe_gpus, supports_gpu_offload
from inference.model_file import ModelFileError, ModelInfo, ModelLayout, inspect_gguf, sha256_file
from inference.offload import OffloadPlan, parse_gpu_layers, plan_offload
from inference.sha256_cache import Sha256Cache, default_sha256_cache, stderr_progress
from inference.worker import (
    GenerationDone,
    GenerationError,
    GenerationRequest,
    ModelWorker,
    PromptTooLong,
    TokenChunk,
    WorkerBusy,
    WorkerLoad,
)

__all__ = [
    "DEFAULT_MODEL_FILENAME",
    "DEFAULT_MODEL_SHA256",
    "BatchingWorker",
    "GenerationDone",
    "GenerationError",
    "GenerationRequest",
    "GpuInfo",
    "ModelFileError",
    "ModelInfo",
    "ModelLayout",
    "ModelWorker",
    "OffloadPlan",
    "PromptTooLong",
    "Sha256Cache",
    "Throughput",
    "TokenChunk",
    "WorkerBusy",
    "WorkerLoad",
    "cpu_summary",
    "default_sha256_cache",
    "ensure_default_model",
    "inspect_gguf",
    "model_cache_dir",
    "parse_gpu_layers",
    "plan_offload",
    "probe_gpus",
    "render_chat",
    "sha256_file",
    "stderr_progress",
    "supports_gpu_offload",
]
