"""`--slots auto` at start, and the step costs the drafting policy weighs drafts against.

The slot count has to be chosen before the serving worker is created (its KV cache holds
n_ctx x slots cells), and measuring how aggregate decode grows needs a context with as many
sequences as the count could reach. So the node first loads a short-lived measuring worker: the
same file, threads and offloaded layers, as many sequences as memory would allow the slots
(inference/slot_planner.py `memory_cap`) but a short context each, so it costs little memory;
it times decode steps by row count (inference/step_costs.py), is closed, and the planner picks
the knee. The costs it measured also feed the serving worker's drafting policy
(inference/draft_policy.py); with an explicit --slots N the serving worker measures them itself.

How the count was chosen is one line (`SlotChoice.how`), logged at start and shown by `gpunet
status`: "auto: 8 slots; 16 add +3 % (aggregate decode ...)", "auto without --benchmark: 4
slots" or "--slots 6".

Start-up cost: a second load of the weights (mmap'd on the CPU: a fraction of a second) and
STEP_COSTS_S of measurement at most (the tiny test model: well under a second in all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from inference.batching import DEFAULT_SLOTS, BatchingWorker
from inference.generation import GenerationError
from inference.gpu import GpuInfo, supports_gpu_offload
from inference.model_file import ModelFileError, ModelInfo
from inference.offload import plan_offload
from inference.slot_planner import SlotPlan, memory_cap, plan_slots
from inference.step_costs import PREFIX_TOKENS, StepCosts
from p2p.node.config import NodeConfig

log = logging.getLogger(__name__)

AUTO = "auto"
# Seconds of step timing at most (1 and 2 rows are always measured): on the default model on
# 2 cores the seven row counts take about 1.5 s.
STEP_COSTS_S = 2.0
# Cells per sequence of the measuring worker: the shared prefix, then up to 64 rows of one
# sequence where there are fewer sequences than rows.
_MEASURE_CTX = PREFIX_TOKENS + 64 + 16


@attrs.frozen
class SlotChoice:
    """A model's slot count, how it was chosen (one line), and the step costs measured on the
    way (None unless --slots auto measured them)."""

    slots: int
    how: str
    costs: StepCosts | None = None


def ram_available(meminfo: str) -> int:
    """MemAvailable of /proc/meminfo's text in bytes; 0 when it does not say."""
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemAvailable":
            parts = value.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * 1024
    return 0


def _read_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8", errors="replace") as f:
            return ram_available(f.read())
    except OSError:
        return 0


async def choose_slots(
    info: ModelInfo,
    path: Path,
    *,
    n_ctx: int,
    n_threads: int,
    gpus: Sequence[GpuInfo],
    gpu_layers: str,
    offload_supported: bool,
    on_progress: Callable[[str], None] = lambda _line: None,
) -> tuple[SlotPlan, StepCosts | None]:
    """The slot count for `info` served with `n_ctx` cells a request, and the costs measured
    on the way; DEFAULT_SLOTS (and no costs) when the measuring worker cannot run."""
    ram = _read_ram()
    cap = memory_cap(
        info,
        n_ctx,
        ram_available=ram or 1 << 62,  # unknown: let llama.cpp's own failure say
        gpus=gpus,
        gpu_layers=gpu_layers,
        offload_supported=offload_supported,
    )
    plan = plan_offload(
        info, gpus, n_ctx, gpu_layers, n_seq=cap, offload_supported=offload_supported
    )
    on_progress(f"measuring {info.name}'s decode steps for --slots auto (up to {cap} slots)...")
    worker = BatchingWorker(
        path,
        n_ctx=min(n_ctx, _MEASURE_CTX),
        n_threads=n_threads,
        n_gpu_layers=plan.n_gpu_layers,
        tensor_split=plan.tensor_split or None,
        slots=cap,
        max_queue=0,
        prefix_cache=False,
        speculate=False,
    )
    try:
        await worker.start()
        costs = await worker.measure_step_costs(budget_s=STEP_COSTS_S)
    except (ModelFileError, GenerationError) as exc:
        log.warning("%s: --slots auto could not measure (%s); %d slots", info.name, exc, cap)
        return SlotPlan(min(DEFAULT_SLOTS, cap), f"not measured: {exc}"), None
    finally:
        await worker.aclose()
    slot_plan = plan_slots(costs.decode_rates(), memory_cap=cap, short_curve=DEFAULT_SLOTS)
    if slot_plan.slots < cap:  # the cap's own reason says so already
        slot_plan = SlotPlan(slot_plan.slots, f"{slot_plan.reason}; memory allows {cap}")
    log.info("%s: step costs %s", info.name, costs.describe())
    on_progress(f"{info.name}: {slot_plan.reason}")
    return slot_plan, costs


async def slots_for(
    config: NodeConfig,
    info: ModelInfo,
    *,
    n_ctx: int,
    n_threads: int,
    gpus: Sequence[GpuInfo],
    benchmark: bool,
    on_progress: Callable[[str], None],
) -> SlotChoice:
    """The slots of `info`'s worker: --slots N as given, or for auto the measured knee with the
    costs measured on the way. Auto without the self-benchmark (or for an embedding model,
    which does not decode) is DEFAULT_SLOTS. Says how, in the log and as progress."""
    choice = await _choose(config, info, n_ctx, n_threads, gpus, benchmark, on_progress)
    log.info("%s: %s", info.name, choice.how)
    if choice.costs is None:  # a measured choice was shown as progress already
        on_progress(f"{info.name}: {choice.how}")
    return choice


async def _choose(
    config: NodeConfig,
    info: ModelInfo,
    n_ctx: int,
    n_threads: int,
    gpus: Sequence[GpuInfo],
    benchmark: bool,
    on_progress: Callable[[str], None],
) -> SlotChoice:
    if config.slots != AUTO:
        return SlotChoice(int(config.slots), f"--slots {int(config.slots)}")
    if info.pooling_type is not None:
        return SlotChoice(DEFAULT_SLOTS, f"auto for an embedding model: {DEFAULT_SLOTS} slots")
    if not benchmark:
        return SlotChoice(DEFAULT_SLOTS, f"auto without --benchmark: {DEFAULT_SLOTS} slots")
    plan, costs = await choose_slots(
        info,
        Path(info.path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        gpus=gpus,
        gpu_layers=config.gpu_layers,
        offload_supported=supports_gpu_offload(),
        on_progress=on_progress,
    )
    return SlotChoice(plan.slots, f"auto: {plan.reason}", costs)
