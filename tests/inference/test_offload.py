"""The offload planner, with injected NVML readings for 8, 24 and 80 GB cards."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.gpu import GpuInfo
from inference.model_file import ModelInfo, ModelLayout, inspect_gguf
from inference.offload import (
    MIN_HEADROOM_BYTES,
    OffloadPlan,
    headroom,
    parse_gpu_layers,
    plan_offload,
    vram_needed,
)

GB = 10**9


def gpu(total_gb: float, free_gb: float | None = None, index: int = 0) -> GpuInfo:
    total = int(total_gb * GB)
    return GpuInfo(
        index=index,
        name=f"Test GPU {total_gb:g} GB",
        vram_total=total,
        vram_free=int((free_gb if free_gb is not None else total_gb - 0.5) * GB),
        compute_capability="8.9",
        driver_version="550.0",
        cuda_version="12.4",
        utilization_pct=0,
    )


def model(
    n_layer: int,
    layer_bytes: int,
    *,
    output_bytes: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_vocab: int,
    name: str = "m",
) -> ModelInfo:
    head_dim = n_embd // n_head
    layout = ModelLayout(
        layer_bytes=(layer_bytes,) * n_layer,
        input_bytes=output_bytes,
        output_bytes=output_bytes,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=head_dim,
        value_length=head_dim,
        n_vocab=n_vocab,
    )
    return ModelInfo(
        path=f"/models/{name}.gguf",
        sha256="0" * 64,
        name=name,
        architecture="llama",
        parameter_count=0,
        quantization="Q4_K_M",
        context_length=131072,
        layer_count=n_layer,
        file_size=n_layer * layer_bytes + 2 * output_bytes,
        has_chat_template=True,
        layout=layout,
    )


# Shapes of Llama 3.1 8B and 70B at Q4_K_M (sizes rounded from the published GGUFs).
LLAMA_8B = model(
    32, 138_000_000, output_bytes=420_000_000, n_embd=4096, n_head=32, n_head_kv=8,
    n_vocab=128256, name="llama-8b",
)  # fmt: skip
LLAMA_70B = model(
    80, 500_000_000, output_bytes=1_100_000_000, n_embd=8192, n_head=64, n_head_kv=8,
    n_vocab=128256, name="llama-70b",
)  # fmt: skip


def usable(*gpus: GpuInfo) -> int:
    return sum(max(0, g.vram_free - headroom(g)) for g in gpus)


def assert_largest_that_fits(plan: OffloadPlan, info: ModelInfo, budget: int, n_ctx: int) -> None:
    assert info.layout is not None
    assert vram_needed(info.layout, plan.n_gpu_layers, n_ctx=n_ctx) <= budget
    if plan.n_gpu_layers <= info.layer_count:
        assert vram_needed(info.layout, plan.n_gpu_layers + 1, n_ctx=n_ctx) > budget


def test_8b_fits_whole_on_8gb_at_4k_context() -> None:
    plan = plan_offload(LLAMA_8B, [gpu(8)], n_ctx=4096)
    assert plan.n_gpu_layers == 33 and plan.layers_offloaded == 32
    assert plan.tensor_split == ()
    assert plan.reason.startswith("all 33 layers on GPU 0")
    assert 5 * GB < plan.vram_needed <= usable(gpu(8))


def test_8b_at_long_context_on_8gb_is_partial() -> None:
    card = gpu(8)
    plan = plan_offload(LLAMA_8B, [card], n_ctx=32768)
    assert 0 < plan.n_gpu_layers < 32
    assert_largest_that_fits(plan, LLAMA_8B, usable(card), 32768)
    assert f"{plan.n_gpu_layers} of 33 layers" in plan.reason


def test_more_sequences_mean_fewer_layers() -> None:
    one = plan_offload(LLAMA_8B, [gpu(8)], n_ctx=8192)
    eight = plan_offload(LLAMA_8B, [gpu(8)], n_ctx=8192, n_seq=8)
    assert eight.n_gpu_layers < one.n_gpu_layers


def test_70b_on_24gb_is_partial_and_on_80gb_whole() -> None:
    small = gpu(24)
    plan = plan_offload(LLAMA_70B, [small], n_ctx=8192)
    assert 30 < plan.n_gpu_layers < 45
    assert_largest_that_fits(plan, LLAMA_70B, usable(small), 8192)
    big = plan_offload(LLAMA_70B, [gpu(80)], n_ctx=8192)
    assert big.n_gpu_layers == 81
    assert big.reason.startswith("all 81 layers")


def test_busy_card_counts_free_not_total() -> None:
    idle = plan_offload(LLAMA_70B, [gpu(80)], n_ctx=8192)
    busy = plan_offload(LLAMA_70B, [gpu(80, free_gb=30)], n_ctx=8192)
    assert busy.n_gpu_layers < idle.n_gpu_layers
    assert_largest_that_fits(busy, LLAMA_70B, usable(gpu(80, free_gb=30)), 8192)


def test_nothing_fits_means_cpu() -> None:
    plan = plan_offload(LLAMA_70B, [gpu(8, free_gb=0.9)], n_ctx=8192)
    assert plan.n_gpu_layers == 0
    assert plan.reason.startswith("on the CPU: even one layer needs")


def test_two_cards_split_in_proportion_to_free_memory() -> None:
    cards = [gpu(24, index=0), gpu(8, index=1)]
    plan = plan_offload(LLAMA_70B, cards, n_ctx=8192)
    single = plan_offload(LLAMA_70B, cards[:1], n_ctx=8192)
    assert plan.n_gpu_layers > single.n_gpu_layers
    a, b = (max(0, c.vram_free - headroom(c)) for c in cards)
    assert plan.tensor_split == pytest.approx((a / (a + b), b / (a + b)))
    assert sum(plan.tensor_split) == pytest.approx(1.0)
    assert "2 GPUs split 0." in plan.reason
    assert_largest_that_fits(plan, LLAMA_70B, usable(*cards), 8192)


def test_two_80gb_cards_hold_70b_at_long_context() -> None:
    cards = [gpu(80, index=0), gpu(80, index=1)]
    plan = plan_offload(LLAMA_70B, cards, n_ctx=131072)
    assert plan.n_gpu_layers == 81
    assert plan.tensor_split == pytest.approx((0.5, 0.5))
    assert plan_offload(LLAMA_70B, cards[:1], n_ctx=131072).n_gpu_layers < 81


def test_overrides() -> None:
    cards = [gpu(24)]
    assert plan_offload(LLAMA_70B, cards, 8192, "0").n_gpu_layers == 0
    assert plan_offload(LLAMA_70B, cards, 8192, 0).reason == "on the CPU (--gpu-layers 0)"
    forced = plan_offload(LLAMA_70B, cards, 8192, "70")
    assert forced.n_gpu_layers == 70
    assert "does not fit" in forced.reason
    assert plan_offload(LLAMA_70B, cards, 8192, 500).n_gpu_layers == 81
    assert plan_offload(LLAMA_8B, cards, 8192, "10").reason.startswith("10 of 33 layers")
    assert plan_offload(LLAMA_8B, cards, 8192, None).n_gpu_layers == 33


def test_no_gpu_or_no_offload_build() -> None:
    assert plan_offload(LLAMA_8B, [], 4096).reason == "on the CPU: no NVIDIA GPU found"
    plan = plan_offload(LLAMA_8B, [gpu(80)], 4096, "33", offload_supported=False)
    assert plan.n_gpu_layers == 0
    assert "cannot offload" in plan.reason


def test_parse_gpu_layers() -> None:
    assert parse_gpu_layers("auto") is None
    assert parse_gpu_layers(" AUTO ") is None
    assert parse_gpu_layers("0") == 0
    assert parse_gpu_layers("12") == 12
    assert parse_gpu_layers(7) == 7
    for bad in ("-1", "many", "1.5", ""):
        with pytest.raises(ValueError, match="--gpu-layers"):
            parse_gpu_layers(bad)


def test_headroom() -> None:
    assert headroom(gpu(8)) == MIN_HEADROOM_BYTES
    assert headroom(gpu(80)) == int(80 * GB * 0.05)


def test_vram_needed_counts_blocks_then_the_output_head() -> None:
    layout = LLAMA_8B.layout
    assert layout is not None
    assert vram_needed(layout, 0, n_ctx=4096) == 0
    steps = [vram_needed(layout, n, n_ctx=4096) for n in range(34)]
    assert steps == sorted(steps)
    kv_per_layer = 4096 * layout.kv_bytes_per_token_per_layer
    assert steps[2] - steps[1] == 138_000_000 + kv_per_layer
    # the 33rd "layer" is the output head, plus the logits in the compute buffer
    assert steps[33] - steps[32] > 420_000_000


def test_layout_read_from_a_real_gguf(tiny_gguf: Path) -> None:
    info = inspect_gguf(tiny_gguf)
    layout = info.layout
    assert layout is not None
    assert len(layout.layer_bytes) == 2
    assert layout.layer_bytes[0] == layout.layer_bytes[1] > 0
    assert (layout.n_embd, layout.n_head, layout.n_head_kv, layout.n_vocab) == (256, 4, 2, 512)
    assert layout.key_length == layout.value_length == 64
    assert sum(layout.layer_bytes) + layout.input_bytes <= info.file_size
    plan = plan_offload(info, [gpu(8)], n_ctx=512)
    assert plan.n_gpu_layers == 3


@pytest.mark.slow
def test_layout_of_the_default_model(default_model: Path) -> None:
    from inference.default_model import DEFAULT_MODEL_SHA256

    info = inspect_gguf(default_model, sha256=DEFAULT_MODEL_SHA256)
    layout = info.layout
    assert layout is not None
    assert len(layout.layer_bytes) == 18
    # Gemma ties its output head to the token embeddings: the head on the GPU is a copy.
    assert layout.output_bytes >= layout.input_bytes > 100 * 10**6
    assert sum(layout.layer_bytes) + layout.input_bytes <= info.file_size
    assert layout.n_vocab == 262144 and layout.n_head_kv == 1 and layout.key_length == 256
    assert plan_offload(info, [gpu(8)], n_ctx=8192, n_seq=8).n_gpu_layers == 19


def test_without_flash_attention_long_contexts_cost_more() -> None:
    with_fa = plan_offload(LLAMA_8B, [gpu(24)], n_ctx=98304)
    without = plan_offload(LLAMA_8B, [gpu(24)], n_ctx=98304, flash_attention=False)
    assert without.n_gpu_layers < with_fa.n_gpu_layers == 33
    assert without.vram_needed > 0
