"""`--slots auto`: the planner picks the knee of a step-cost curve and memory bounds it (fake
curves, pure), the step costs are measured on a real worker that serves on unchanged
afterwards, and a node started with slots="auto" runs the planner within a bounded time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inference.batching import BatchingWorker
from inference.generation import GenerationRequest
from inference.gpu import GpuInfo
from inference.model_file import inspect_gguf
from inference.offload import GIB, MIB, plan_offload
from inference.slot_planner import (
    MAX_SLOTS,
    RAM_SHARE,
    kv_bytes_per_slot,
    memory_cap,
    plan_slots,
)
from inference.step_costs import StepCosts
from p2p.node.auto_slots import ram_available
from p2p.node.models import load_models
from p2p.node.runtime import NodeConfig
from tests.inference.test_batching import bit_exact_batches, run

# The default model on 2 cores (tools/bench_decode_steps.py): memory-bound up to 8 rows, then
# each extra row costs nearly a full row's time.
CPU_MS = {1: 16.0, 2: 18.0, 4: 22.0, 8: 30.0, 16: 58.0, 32: 115.0, 64: 230.0}
# llama.cpp's CPU kernels make 2 rows cost twice one and 4 barely more than 2 (measured).
CPU_DIP_MS = {1: 23.5, 2: 44.9, 4: 49.1, 8: 77.6, 16: 150.0, 32: 300.0}
# A GPU: every doubling still pays up to 64.
GPU_MS = {1: 5.0, 2: 5.1, 4: 5.3, 8: 5.6, 16: 6.5, 32: 8.0, 64: 11.0}


def costs(ms: dict[int, float]) -> StepCosts:
    return StepCosts.of({n: t / 1000 for n, t in ms.items()})


def test_the_knee_of_a_cpu_curve_is_where_aggregate_stops_growing() -> None:
    plan = plan_slots(costs(CPU_MS).decode_rates())
    assert plan.slots == 8
    assert "16 add +3 %" in plan.reason and "at 1/2/4/8/16/32/64 sequences" in plan.reason


def test_a_dip_at_two_rows_does_not_stop_the_walk() -> None:
    assert plan_slots(costs(CPU_DIP_MS).decode_rates()).slots == 8


def test_a_curve_that_still_grows_takes_the_most_measured_or_the_memory_cap() -> None:
    rates = costs(GPU_MS).decode_rates()
    assert plan_slots(rates).slots == 64
    capped = plan_slots(rates, memory_cap=24)
    assert capped.slots == 24 and "as many as memory allows" in capped.reason
    assert plan_slots(rates, memory_cap=2).slots == 2


def test_memory_caps_a_knee_below_it_only() -> None:
    rates = costs(CPU_MS).decode_rates()
    assert plan_slots(rates, memory_cap=5).slots == 5  # 8 would still have paid
    assert plan_slots(rates, memory_cap=40).slots == 8


def test_a_flat_curve_is_one_slot_and_a_stricter_gain_fewer() -> None:
    flat = {1: 10.0, 2: 20.0, 4: 40.0, 8: 80.0}  # compute-bound from the first row
    assert plan_slots(costs(flat).decode_rates()).slots == 1
    assert plan_slots(costs(CPU_MS).decode_rates(), min_gain=0.5).slots == 4
    assert plan_slots({}).slots == 1


def test_a_curve_cut_short_while_growing_is_not_taken_for_a_knee() -> None:
    cut = costs({1: 16.0, 2: 18.0})  # the budget ran out after two counts (a busy machine)
    short = plan_slots(cut.decode_rates(), short_curve=4)
    assert short.slots == 4 and "measured only up to 2" in short.reason
    assert plan_slots(cut.decode_rates(), short_curve=4, memory_cap=3).slots == 3
    flat = costs({1: 16.0, 2: 32.0})  # a knee it did see
    assert plan_slots(flat.decode_rates(), short_curve=4).slots == 1
    assert plan_slots(costs(CPU_MS).decode_rates(), short_curve=16).slots == 8


def test_step_costs_interpolate_and_extrapolate() -> None:
    c = costs({1: 10.0, 4: 16.0, 8: 32.0})
    assert c.cost(1) == c.cost(0) == pytest.approx(0.010)
    assert c.cost(2) == pytest.approx(0.012)
    assert c.cost(6) == pytest.approx(0.024)
    assert c.cost(16) == pytest.approx(0.064)  # the last slope goes on
    mixed = StepCosts((1, 2, 64), (0.01, 0.02, 0.3), (1, 2, 8))
    assert mixed.decode_rates() == {1: 100.0, 2: 100.0}  # 64 rows came from 8 sequences
    with pytest.raises(ValueError, match="increasing"):
        StepCosts((2, 1), (0.1, 0.1), (2, 1))
    with pytest.raises(ValueError, match="positive"):
        StepCosts((1,), (0.0,), (1,))


def test_memory_cap_bounds_slots_by_ram_and_by_the_gpu(tiny_gguf: Path) -> None:
    info = inspect_gguf(tiny_gguf)
    per_slot = kv_bytes_per_slot(info, 512)
    assert per_slot == 2 * 2 * 2 * 64 * 2 * 512  # layers x (K+V) x heads x dims x f16 x cells
    ram = int(3.5 * per_slot / RAM_SHARE)
    assert memory_cap(info, 512, ram_available=ram, offload_supported=False) == 3
    assert memory_cap(info, 512, ram_available=1 << 40, offload_supported=False) == MAX_SLOTS
    # All on a GPU: RAM holds no KV; the GPU bounds the slots to those that keep every layer.
    gpu = GpuInfo(0, "fake", 8 * GIB, 768 * MIB + 24 * MIB, "9.0", "x", "12.4", 0)
    cap = memory_cap(info, 512, ram_available=0, gpus=[gpu])
    assert 1 < cap < MAX_SLOTS

    def layers(n: int) -> int:
        return plan_offload(info, [gpu], 512, n_seq=n).n_gpu_layers

    assert layers(cap) == layers(1) > layers(cap + 1)
    assert memory_cap(info, 512, ram_available=0, gpus=[gpu], gpu_layers="0") == 1


def test_ram_available_reads_meminfo() -> None:
    text = "MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n"
    assert ram_available(text) == 8000000 * 1024
    assert ram_available("MemTotal: 1 kB\n") == 0


async def test_step_costs_measured_on_a_worker_that_then_serves_unchanged(
    gpu_layers: int, tiny_gguf: Path
) -> None:
    request = GenerationRequest("the capital of france is", max_tokens=24)
    async with BatchingWorker(
        tiny_gguf, n_ctx=256, n_gpu_layers=gpu_layers, n_threads=2, slots=4
    ) as worker:
        before = await run(worker, request)
        measured = await worker.measure_step_costs(budget_s=5.0)
        after = await run(worker, request)
        exact = bit_exact_batches(worker)
    assert measured.rows == (1, 2, 4, 8, 16, 32, 64)[: len(measured.rows)]  # as budget allows
    # a sequence per row up to the 4 there are, then several rows per sequence
    assert measured.sequences == tuple(min(r, 4) for r in measured.rows)
    assert set(measured.decode_rates()) == {r for r in measured.rows if r <= 4}
    assert after.ids == before.ids or not exact


async def test_a_node_with_auto_slots_measures_them_at_start(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    config = NodeConfig(
        data_dir=tmp_path, models=(inspect_gguf(tiny_gguf),), slots="auto", n_ctx=256, n_threads=2
    )
    lines: list[str] = []
    started = time.perf_counter()
    served = await load_models(config, benchmark=True, on_progress=lines.append)
    seconds = time.perf_counter() - started
    try:
        worker = served[0].worker
        assert isinstance(worker, BatchingWorker)
        assert any(line.startswith("measuring tiny-llama's decode steps") for line in lines)
        assert sum(line.startswith(f"tiny-llama: {worker.slots} slots") for line in lines) == 1
        assert worker.draft_policy is not None and worker.draft_policy.costs is not None
        # two loads of a 6 MB model, under 2 s of steps, the 1.5 s self-benchmark (~2 s on a
        # quiet machine): bounded even on a busy one
        assert seconds < 30
        result = await run(worker, GenerationRequest("hello world", max_tokens=8))
        assert result.done.completion_tokens == 8
    finally:
        await served[0].worker.aclose()
    without = await load_models(config, benchmark=False)
    try:
        assert without[0].worker.slots == 4  # nothing measured: the old default
    finally:
        await without[0].worker.aclose()
