"""`--slots auto`: how many sequences to decode together, from this machine's measured curve.

Batching pays while decoding is memory-bound: a step of 8 rows costs little more than a step of
one, so 8 sequences decode nearly 8 times the aggregate tokens/s. Once the step is compute-bound
more sequences only share the same tokens/s more thinly, each request gets slower and the KV
cache grows for nothing. Where that happens is a property of the hardware, not a constant (the
default model on 2 cores: llama-server's aggregate still grew 1.6x from 4 to 8 streams; on an
H100 8 streams gave 3.7x one). So the node measures the step cost per row count at start
(inference/step_costs.py) and picks the knee: the fewest sequences that no larger count beats
by more than MIN_GAIN per doubling, within the memory the slots' KV cache may take (each slot
keeps n_ctx cells; `memory_cap`).

Pure arithmetic over measured numbers and GGUF sizes, so it is tested with fake curves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

from inference.gpu import GpuInfo
from inference.model_file import ModelInfo
from inference.offload import plan_offload

MAX_SLOTS = 64  # the settings' bound on --slots
# A doubling of concurrent sequences must raise aggregate decode by more than this: a smaller
# gain halves every request's speed to win a few percent of throughput.
MIN_GAIN = 0.10
# Of the RAM free at start, the share the KV cache of CPU-resident layers may take: the rest is
# for the weights' page cache, the OS and whatever else the volunteer runs.
RAM_SHARE = 0.5
# A curve measured to fewer sequences than this says nothing of a knee past its end.
TRUSTED_UP_TO = 8


@attrs.frozen
class SlotPlan:
    slots: int
    reason: str  # one line for the log: the curve and why this count


def plan_slots(
    rates: Mapping[int, float],
    *,
    memory_cap: int = MAX_SLOTS,
    min_gain: float = MIN_GAIN,
    short_curve: int = 1,
) -> SlotPlan:
    """As `knee`, except for a curve cut short: measured to fewer than TRUSTED_UP_TO
    sequences (and fewer than the cap) and still growing at its end — the measurement's budget
    ran out on a busy or very slow machine — says nothing of the knee, so then at least
    `short_curve` slots (within the cap)."""
    plan = knee(rates, memory_cap=memory_cap, min_gain=min_gain)
    cap = max(1, min(memory_cap, MAX_SLOTS))
    measured = max((n for n, r in rates.items() if r > 0), default=0)
    if measured < min(cap, TRUSTED_UP_TO) and plan.slots == measured:
        slots = max(plan.slots, min(short_curve, cap))
        return SlotPlan(slots, f"{slots} slots: measured only up to {measured} sequences")
    return plan


def knee(
    rates: Mapping[int, float],
    *,
    memory_cap: int = MAX_SLOTS,
    min_gain: float = MIN_GAIN,
) -> SlotPlan:
    """The knee of `rates` ({concurrent sequences: aggregate tokens/s}): the fewest sequences
    that no larger measured count beats by more than `min_gain` per doubling; never more than
    `memory_cap` (nor MAX_SLOTS), and the cap when the curve still grows there. Not the first
    count whose next doubling gains little: on a CPU, llama.cpp's matrix kernels make 2 rows
    cost twice 1 row (default model, 2 cores: 43 and 45 tok/s) and 4 rows barely more than 2
    (81 tok/s), so the curve is not concave."""
    cap = max(1, min(memory_cap, MAX_SLOTS))
    points = sorted((n, r) for n, r in rates.items() if n >= 1 and r > 0)
    if not points:
        return SlotPlan(1, "1 slot: no decode rate measured")
    curve = " → ".join(f"{r:.0f}" for _, r in points)
    at = "/".join(str(n) for n, _ in points)
    shown = f"aggregate decode {curve} tok/s at {at} sequences"
    at_cap = SlotPlan(cap, f"{cap} slots, as many as memory allows ({shown})")
    for i, (n, r) in enumerate(points):
        if n > cap:
            return at_cap
        better = [m for m, q in points[i + 1 :] if q > r * (1 + min_gain) ** math.log2(m / n)]
        if not better:
            more = (
                f"; {points[i + 1][0]} add {100 * (points[i + 1][1] / r - 1):+.0f} %"
                if (i + 1 < len(points))
                else ", the most measured"
            )
            return SlotPlan(n, f"{n} slots{more} ({shown})")
        if min(better) > cap:
            return at_cap
    raise AssertionError("unreachable: the last point has nothing better")


def kv_bytes_per_slot(info: ModelInfo, n_ctx: int, layers: int | None = None) -> int:
    """KV cache bytes one slot of `n_ctx` cells takes over `layers` blocks (default: all);
    0 when the file's sizes are unknown."""
    if info.layout is None:
        return 0
    blocks = info.layer_count if layers is None else layers
    return blocks * n_ctx * info.layout.kv_bytes_per_token_per_layer


def memory_cap(
    info: ModelInfo,
    n_ctx: int,
    *,
    ram_available: int,
    gpus: Sequence[GpuInfo] = (),
    gpu_layers: str = "auto",
    offload_supported: bool = True,
    limit: int = MAX_SLOTS,
) -> int:
    """The most slots whose KV cache fits: on the GPU without offloading fewer layers than one
    slot would (slots never cost speed per token), and for the layers left on the CPU within
    RAM_SHARE of `ram_available`. `limit` when the sizes are unknown."""
    if info.layout is None:
        return limit

    def plan_layers(n: int) -> int:  # the output head counts: it is a layer to lose too
        plan = plan_offload(
            info, gpus, n_ctx, gpu_layers, n_seq=n, offload_supported=offload_supported
        )
        return plan.n_gpu_layers

    on_gpu = plan_layers(1)
    blocks_on_cpu = info.layer_count - min(on_gpu, info.layer_count)
    on_cpu_per_slot = kv_bytes_per_slot(info, n_ctx, blocks_on_cpu)
    best = 1
    for n in range(2, limit + 1):
        if on_cpu_per_slot * n > RAM_SHARE * ram_available:
            break
        if on_gpu and plan_layers(n) < on_gpu:
            break
        best = n
    return best
