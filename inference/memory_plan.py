"""What the node's memory allows beyond the layer split: `--max-vram` and the default context.

`--max-vram SIZE` caps the VRAM the offload plan (inference/offload.py) may use, for a volunteer
who games or trains on the same card: `cap_vram` hands the planner GPU readings whose usable
memory (free minus headroom) adds up to no more than the cap, split over the GPUs in proportion
to what each has usable, so everything that plans from them (layers, slots, context) obeys it.

Without `--ctx-size` a request's context is `default_context`: on a GPU that holds the whole
model, the largest context up to the model's trained one and CTX_CEILING whose KV cache for every
slot still fits beside the weights (context never costs a layer: a layer on the CPU slows every
token, a longer context helps only long prompts); CTX_FLOOR otherwise, as on a CPU, where a long
prompt's prefill takes minutes anyway and the KV cache would take RAM the volunteer uses.

Pure arithmetic over GGUF sizes and (possibly injected) GPU readings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from inference.gpu import GpuInfo
from inference.model_file import ModelInfo
from inference.offload import headroom, parse_gpu_layers, plan_offload

CTX_FLOOR = 2048
CTX_CEILING = 8192
CTX_STEP = 256  # contexts tried between floor and ceiling
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of a size such as 6G, 6000M, 5.5GiB or 512MB (K/M/G/T are powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a size such as 6G or 6000M, got {text!r:.40}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def usable_vram(gpus: Sequence[GpuInfo]) -> int:
    """Bytes the planner may use over all *gpus* (free memory less each one's headroom)."""
    return sum(max(0, g.vram_free - headroom(g)) for g in gpus)


def cap_vram(gpus: Sequence[GpuInfo], max_bytes: int | None) -> list[GpuInfo]:
    """*gpus* as the planner should see them under `--max-vram max_bytes` (None: as they are)."""
    total = usable_vram(gpus)
    if max_bytes is None or total <= max_bytes:
        return list(gpus)
    out = []
    for g in gpus:
        share = max(0, g.vram_free - headroom(g)) * max_bytes // total
        out.append(attrs.evolve(g, vram_free=min(g.vram_free, share + headroom(g))))
    return out


def _whole_model_on_gpu(
    info: ModelInfo, gpus: Sequence[GpuInfo], n_ctx: int, n_seq: int, gpu_layers: str
) -> bool:
    plan = plan_offload(info, gpus, n_ctx, gpu_layers, n_seq=n_seq)
    return plan.n_gpu_layers > info.layer_count and plan.vram_needed <= usable_vram(gpus)


def default_context(
    info: ModelInfo,
    gpus: Sequence[GpuInfo],
    *,
    n_seq: int,
    gpu_layers: str = "auto",
    offload_supported: bool = True,
) -> tuple[int, str]:
    """The context of each request when `--ctx-size` is not given, and why (for the log)."""
    trained = info.context_length
    top = min(trained, CTX_CEILING) if trained > 0 else CTX_CEILING
    floor = min(CTX_FLOOR, top)
    if floor < CTX_FLOOR:
        return floor, "the most the model was trained for"
    if not gpus or not offload_supported or info.layout is None:
        return floor, "the default on the CPU; --ctx-size for more"
    if parse_gpu_layers(gpu_layers) == 0:
        return floor, "the default with --gpu-layers 0"
    if not _whole_model_on_gpu(info, gpus, floor, n_seq, gpu_layers):
        return floor, "the default: the model does not fit the GPU whole"
    best = floor
    for n_ctx in range(top, floor, -CTX_STEP):
        if _whole_model_on_gpu(info, gpus, n_ctx, n_seq, gpu_layers):
            best = n_ctx
            break
    limit = "what the GPU memory holds"
    if best == trained:
        limit = "the most the model was trained for"
    elif best == CTX_CEILING:
        limit = f"at most {CTX_CEILING} by default"
    return best, f"{n_seq} slots' KV cache beside the weights on the GPU; {limit}"
