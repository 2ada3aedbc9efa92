"""`--max-vram` and the default context, with injected GPU readings (no GPU needed)."""

from __future__ import annotations

import attrs
import pytest

from inference.gpu import GpuInfo
from inference.memory_plan import (
    CTX_CEILING,
    CTX_FLOOR,
    CTX_STEP,
    cap_vram,
    default_context,
    parse_size,
    usable_vram,
)
from inference.model_file import ModelInfo, ModelLayout
from inference.offload import headroom, plan_offload

GB = 10**9
GIB = 1 << 30


def gpu(total_gb: float, free_gb: float, index: int = 0) -> GpuInfo:
    return GpuInfo(
        index=index,
        name=f"Test GPU {total_gb:g} GB",
        vram_total=int(total_gb * GB),
        vram_free=int(free_gb * GB),
        compute_capability="8.9",
        driver_version="550.0",
        cuda_version="12.4",
        utilization_pct=0,
    )


# The shape of Llama 3.1 8B at Q4_K_M: ~4.8 GB of weights, 128 KiB of KV cache per token.
LLAMA_8B = ModelInfo(
    path="/models/llama-8b.gguf",
    sha256="0" * 64,
    name="llama-8b",
    architecture="llama",
    parameter_count=0,
    quantization="Q4_K_M",
    context_length=131072,
    layer_count=32,
    file_size=32 * 138_000_000 + 840_000_000,
    has_chat_template=True,
    layout=ModelLayout(
        layer_bytes=(138_000_000,) * 32,
        input_bytes=420_000_000,
        output_bytes=420_000_000,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        key_length=128,
        value_length=128,
        n_vocab=128256,
    ),
)


def whole(info: ModelInfo, gpus: list[GpuInfo], n_ctx: int, n_seq: int) -> bool:
    plan = plan_offload(info, gpus, n_ctx, n_seq=n_seq)
    return plan.n_gpu_layers == info.layer_count + 1 and plan.vram_needed <= usable_vram(gpus)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("6G", 6 * GIB), ("6000M", 6000 << 20), ("5.5GiB", int(5.5 * GIB)), ("512mb", 512 << 20),
     ("1T", 1 << 40), ("123", 123), (" 2 G ", 2 * GIB)],
)  # fmt: skip
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "six", "6X", "-1G", "6 G B B"])
def test_bad_sizes_say_what_was_expected(text: str) -> None:
    with pytest.raises(ValueError, match="a size such as 6G"):
        parse_size(text)


def test_max_vram_caps_what_the_plan_uses_on_a_big_card() -> None:
    card = [gpu(24, 23.5)]
    assert plan_offload(LLAMA_8B, card, 8192, n_seq=4).n_gpu_layers == 33  # all of it
    capped = cap_vram(card, 6 * GIB)
    assert usable_vram(capped) == pytest.approx(6 * GIB, abs=1)
    plan = plan_offload(LLAMA_8B, capped, 8192, n_seq=4)
    assert 0 < plan.n_gpu_layers < 33 and plan.vram_needed <= 6 * GIB
    # a cap above what is free changes nothing
    assert cap_vram(card, 100 * GIB) == card
    assert cap_vram(card, None) == card


def test_max_vram_splits_over_gpus_in_proportion() -> None:
    cards = [gpu(24, 20.0, 0), gpu(12, 10.0, 1)]
    capped = cap_vram(cards, 8 * GIB)
    shares = [g.vram_free - headroom(g) for g in capped]
    assert sum(shares) == pytest.approx(8 * GIB, abs=2)
    before = [g.vram_free - headroom(g) for g in cards]
    assert shares[0] / shares[1] == pytest.approx(before[0] / before[1], rel=1e-6)
    assert all(attrs.evolve(g, vram_free=0) == attrs.evolve(c, vram_free=0) for g, c in
               zip(capped, cards, strict=True))  # fmt: skip


def test_default_context_on_a_big_card_is_the_ceiling() -> None:
    n_ctx, why = default_context(LLAMA_8B, [gpu(24, 23.5)], n_seq=4)
    assert n_ctx == CTX_CEILING
    assert "KV cache" in why


def test_default_context_on_a_small_card_is_the_most_that_fits_whole() -> None:
    card = [gpu(8, 7.5)]
    n_ctx, _ = default_context(LLAMA_8B, card, n_seq=4)
    assert CTX_FLOOR < n_ctx < CTX_CEILING
    assert whole(LLAMA_8B, card, n_ctx, 4)
    assert not whole(LLAMA_8B, card, n_ctx + CTX_STEP, 4)
    # more slots, each gets less
    assert default_context(LLAMA_8B, card, n_seq=8)[0] < n_ctx


def test_default_context_never_costs_a_layer_and_keeps_the_floor() -> None:
    # 5 GiB: the weights fit, the KV cache of 4 slots at 2048 does not fit beside them
    capped = cap_vram([gpu(24, 23.5)], 5 * GIB)
    assert not whole(LLAMA_8B, capped, CTX_FLOOR, 4)
    assert default_context(LLAMA_8B, capped, n_seq=4)[0] == CTX_FLOOR


def test_default_context_on_the_cpu_is_the_floor_or_the_trained_context() -> None:
    assert default_context(LLAMA_8B, [], n_seq=4)[0] == CTX_FLOOR
    assert default_context(LLAMA_8B, [gpu(24, 23.5)], n_seq=4, offload_supported=False)[0] == 2048
    assert default_context(LLAMA_8B, [gpu(24, 23.5)], n_seq=4, gpu_layers="0")[0] == 2048
    short = attrs.evolve(LLAMA_8B, context_length=512)
    assert default_context(short, [gpu(24, 23.5)], n_seq=4) == (512, "the most the model was "
                                                                "trained for")  # fmt: skip
    mid = attrs.evolve(LLAMA_8B, context_length=4096)
    assert default_context(mid, [gpu(24, 23.5)], n_seq=4)[0] == 4096
