"""Provider filters over verified records (what `gpunet peers --model X --gpu ...` applies)."""

from __future__ import annotations

import attrs
import pytest

from crypto.identity import Identity
from p2p.client.provider_query import filter_providers, max_free_vram, parse_size
from p2p.dht.records import CapabilityRecord, GpuEntry, ModelEntry
from tests.p2p.dht.test_records import SHA, make_record

GIB = 1 << 30


def _gpu(free_gib: float) -> GpuEntry:
    return GpuEntry("H100", 80 * GIB, int(free_gib * GIB), "9.0", "550", "12.4", 3)


def _node(quant: str, gpus: tuple[GpuEntry, ...], offloaded: int) -> CapabilityRecord:
    model = ModelEntry(SHA, "Tiny-Llama", "llama", 1000, quant, 512, offloaded, 2)
    return attrs.evolve(make_record(Identity.generate(), models=(model,)), gpus=gpus)


CPU = _node("Q4_K_M", (), 0)
SMALL_GPU = _node("Q4_K_M", (_gpu(6),), 2)
BIG_GPU = _node("Q8_0", (_gpu(2), _gpu(40)), 2)
GPU_UNUSED = _node("Q4_K_M", (_gpu(70),), 0)  # has a GPU, serves this model on the CPU
OTHER = attrs.evolve(make_record(Identity.generate()), models=())
ALL = [CPU, SMALL_GPU, BIG_GPU, GPU_UNUSED, OTHER]


def _ids(matches: list[object]) -> list[str]:
    return [m.record.peer_id for m in matches]  # type: ignore[attr-defined]


def test_model_by_name_any_case_or_sha256() -> None:
    want = [CPU, SMALL_GPU, BIG_GPU, GPU_UNUSED]
    for model in ("tiny-llama", "TINY-LLAMA", "Tiny-Llama", SHA, SHA.upper()):
        assert _ids(filter_providers(ALL, model)) == [r.peer_id for r in want], model
    assert filter_providers(ALL, "other-model") == []
    assert filter_providers(ALL, "tiny-llama")[0].model.name == "Tiny-Llama"


def test_gpu_vram_and_quantization_filters() -> None:
    ids = lambda rs: [r.peer_id for r in rs]  # noqa: E731
    assert _ids(filter_providers(ALL, SHA, gpu=True)) == ids([SMALL_GPU, BIG_GPU])
    assert _ids(filter_providers(ALL, SHA, gpu=False)) == ids([CPU, GPU_UNUSED])
    assert _ids(filter_providers(ALL, SHA, min_vram=8 * GIB)) == ids([BIG_GPU, GPU_UNUSED])
    assert _ids(filter_providers(ALL, SHA, gpu=True, min_vram=8 * GIB)) == ids([BIG_GPU])
    assert _ids(filter_providers(ALL, SHA, quantization="q4_k_m")) == ids(
        [CPU, SMALL_GPU, GPU_UNUSED]
    )
    assert _ids(filter_providers(ALL, SHA, gpu=True, quantization="Q8_0")) == ids([BIG_GPU])
    assert max_free_vram(BIG_GPU) == 40 * GIB and max_free_vram(CPU) == 0


def test_sizes_parse_in_binary_units() -> None:
    assert parse_size("8G") == parse_size("8GiB") == parse_size("8gb") == 8 * GIB
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5g") == int(1.5 * GIB)
    assert parse_size("1024") == 1024
    for bad in ("", "G", "8X", "-1G", "eight"):
        with pytest.raises(ValueError):
            parse_size(bad)
