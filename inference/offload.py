"""How many layers of a model to put on the GPU(s): pure arithmetic over GGUF sizes and NVML.

llama.cpp's `n_gpu_layers` counts from the top of the network: with n_gpu_layers = k it keeps the
first `n_layer - k` repeating blocks on the CPU and runs the last k on the GPU; a value above
`n_layer` also moves the output head (for a tied head, a copy of the token embeddings). The token
embeddings themselves always stay on the CPU (llama.cpp looks rows up there). The KV cache of an
offloaded block lives beside it on the GPU (llama.cpp's default `offload_kqv`).

So the VRAM a choice needs is

    weights of the offloaded blocks (+ the output head when all blocks are offloaded)
    + KV cache of those blocks for every cell of the context (all sequences)
    + the compute buffer (activations of one micro-batch, logits included when the head is there)

and each GPU keeps some headroom for the CUDA context, cuBLAS workspace and fragmentation, which
NVML's "free" does not yet show before the model loads. The estimate of the compute buffer is
generous (a layer too few on the GPU costs a few percent of speed, a layer too many fails the
load). It assumes flash attention, which llama.cpp's default (`flash_attn_type` auto) turns on for
CUDA devices; without it the attention scores of a micro-batch over the whole context are
materialised too (`flash_attention=False` counts them: 2 GiB for 32 heads at 32k context).

With several GPUs the layers are split in proportion to each one's usable memory (llama.cpp's
`tensor_split`); the compute buffer sits on the first. NVML numbers GPUs in PCI bus order while
CUDA by default numbers the fastest first: run the node with `CUDA_DEVICE_ORDER=PCI_BUS_ID` so the
two agree when the cards differ.

Everything here is a pure function of its arguments, so the planner is tested with injected GPU
readings for 8, 24 and 80 GB cards on a machine that has none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from inference.gpu import GpuInfo
from inference.model_file import ModelInfo, ModelLayout

GIB = 1 << 30
MIB = 1 << 20
# Per GPU, held back from NVML's free memory: the CUDA context and cuBLAS workspace take
# ~300-500 MiB on recent drivers before anything of ours is allocated; the rest covers
# fragmentation and other processes growing a little.
MIN_HEADROOM_BYTES = 768 * MIB
HEADROOM_FRACTION = 0.05
# llama.cpp's default micro-batch (n_ubatch): what one forward pass holds activations for.
DEFAULT_N_UBATCH = 512


@attrs.frozen
class OffloadPlan:
    n_gpu_layers: int  # llama.cpp's unit: repeating blocks, + 1 for the output head
    layer_count: int  # the model's repeating blocks
    tensor_split: tuple[float, ...]  # per GPU (NVML order), sums to 1; () with fewer than 2 GPUs
    vram_needed: int  # bytes this choice is estimated to need, over all GPUs
    reason: str  # one line for the log

    @property
    def layers_offloaded(self) -> int:
        """Repeating blocks on the GPU: what the capability record publishes (out of
        layer_count)."""
        return min(self.n_gpu_layers, self.layer_count)


def parse_gpu_layers(text: str | int) -> int | None:
    """`--gpu-layers` as given: "auto" → None; a whole number ≥ 0 → itself. Else ValueError."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str) and text.strip().lower() == "auto":
        return None
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(
                f"--gpu-layers takes a number of layers or 'auto', not {text!r}"
            ) from None
    if value < 0:
        raise ValueError(f"--gpu-layers must be 0 or more (or 'auto'), not {value}")
    return value


def headroom(gpu: GpuInfo) -> int:
    return max(MIN_HEADROOM_BYTES, int(gpu.vram_total * HEADROOM_FRACTION))


def compute_buffer_bytes(
    layout: ModelLayout,
    *,
    n_ctx_seq: int,
    with_output: bool,
    flash_attention: bool = True,
    n_ubatch: int = DEFAULT_N_UBATCH,
) -> int:
    """A generous estimate of llama.cpp's GPU compute buffer for one micro-batch (f32
    activations: the residual stream and its temporaries, the attention scores over the context
    unless flash attention computes them in tiles, and the logits when the output head is
    offloaded)."""
    per_token = 16 * layout.n_embd
    if not flash_attention:
        per_token += layout.n_head * n_ctx_seq
    if with_output:
        per_token += layout.n_vocab
    return n_ubatch * 4 * per_token


def vram_needed(
    layout: ModelLayout,
    n_gpu_layers: int,
    *,
    n_ctx: int,
    n_seq: int = 1,
    flash_attention: bool = True,
) -> int:
    """Bytes of VRAM that offloading `n_gpu_layers` needs (0 for none)."""
    n_layer = len(layout.layer_bytes)
    blocks = min(max(n_gpu_layers, 0), n_layer)
    if blocks == 0 and n_gpu_layers <= n_layer:
        return 0
    with_output = n_gpu_layers > n_layer
    weights = sum(layout.layer_bytes[n_layer - blocks :])
    if with_output:
        weights += layout.output_bytes
    kv = blocks * n_ctx * n_seq * layout.kv_bytes_per_token_per_layer
    compute = compute_buffer_bytes(
        layout, n_ctx_seq=n_ctx, with_output=with_output, flash_attention=flash_attention
    )
    return weights + kv + compute


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


@attrs.frozen
class _Devices:
    """The GPUs a plan may use: bytes usable on all of them, the split, and their name in the
    plan's reason."""

    usable: int
    split: tuple[float, ...]
    where: str

    @classmethod
    def of(cls, gpus: Sequence[GpuInfo]) -> _Devices:
        usable = [max(0, g.vram_free - headroom(g)) for g in gpus]
        total = sum(usable)
        split = tuple(u / total for u in usable) if len(gpus) > 1 and total else ()
        where = (
            f"GPU {gpus[0].index} ({gpus[0].name})"
            if len(gpus) == 1
            else f"{len(gpus)} GPUs split {':'.join(f'{s:.2f}' for s in split) or 'evenly'}"
        )
        return cls(total, split, where)


def plan_offload(
    info: ModelInfo,
    gpus: Sequence[GpuInfo],
    n_ctx: int,
    override: str | int | None = "auto",
    *,
    n_seq: int = 1,
    offload_supported: bool = True,
    flash_attention: bool = True,
) -> OffloadPlan:
    """Choose n_gpu_layers (and the split over several GPUs) for one model.

    `n_ctx` is the context of one sequence and `n_seq` the number of sequences the worker keeps
    (BatchingWorker's slots): the KV cache holds n_ctx × n_seq cells. `override` is
    `--gpu-layers`: "auto" (or None) plans, 0 keeps the model on the CPU, N offloads N (capped at
    every layer) whether or not the estimate says it fits — the user knows better, or will see
    llama.cpp's out-of-memory error. `offload_supported` is `llama_supports_gpu_offload()`;
    `flash_attention=False` plans for a context created with flash attention off.
    """
    wanted = None if override is None else parse_gpu_layers(override)
    n_layer = info.layer_count
    layout = info.layout
    if wanted == 0:
        return _on_cpu(n_layer, "on the CPU (--gpu-layers 0)")
    if not offload_supported:
        return _on_cpu(n_layer, "on the CPU: this llama.cpp build cannot offload to a GPU")
    if not gpus:
        return _on_cpu(n_layer, "on the CPU: no NVIDIA GPU found")
    devices = _Devices.of(gpus)

    def need(n: int) -> int:
        if layout is None:
            return 0
        return vram_needed(layout, n, n_ctx=n_ctx, n_seq=n_seq, flash_attention=flash_attention)

    if wanted is not None:
        return _as_told(wanted, n_layer, devices, need)
    if layout is None or len(layout.layer_bytes) != n_layer:
        # No sizes to go by (a hand-built ModelInfo): offload everything, as llama.cpp would.
        reason = f"all layers on {devices.where} (model sizes unknown)"
        return OffloadPlan(n_layer + 1, n_layer, devices.split, 0, reason)
    return _most_that_fit(n_layer, devices, need, f"context {n_ctx} × {n_seq}")


def _on_cpu(n_layer: int, reason: str) -> OffloadPlan:
    return OffloadPlan(0, n_layer, (), 0, reason)


def _as_told(
    wanted: int, n_layer: int, devices: _Devices, need: Callable[[int], int]
) -> OffloadPlan:
    """`--gpu-layers N`: N layers (at most all of them), fitting or not; the reason says."""
    everything = n_layer + 1
    n = min(wanted, everything)
    fits = "" if need(n) <= devices.usable else "; the estimate says it does not fit"
    return OffloadPlan(
        n,
        n_layer,
        devices.split,
        need(n),
        f"{n} of {everything} layers on {devices.where} (--gpu-layers {wanted}): needs about "
        f"{_gib(need(n))} of {_gib(devices.usable)} usable{fits}",
    )


def _most_that_fit(
    n_layer: int, devices: _Devices, need: Callable[[int], int], context: str
) -> OffloadPlan:
    """ "auto": as many layers as the estimate fits into the usable memory; none if not one."""
    everything = n_layer + 1
    best = next((n for n in range(everything, 0, -1) if need(n) <= devices.usable), 0)
    if best == 0:
        return OffloadPlan(
            0,
            n_layer,
            (),
            0,
            f"on the CPU: even one layer needs {_gib(need(1))} and {devices.where} has "
            f"{_gib(devices.usable)} usable",
        )
    what = f"all {everything} layers" if best == everything else f"{best} of {everything} layers"
    return OffloadPlan(
        best,
        n_layer,
        devices.split,
        need(best),
        f"{what} on {devices.where}: needs about {_gib(need(best))} of "
        f"{_gib(devices.usable)} usable ({context})",
    )
