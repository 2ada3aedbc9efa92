"""The models a node serves: one batching worker each, offloaded as planned, speed measured."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from inference.batching import DEFAULT_SLOTS, BatchingWorker
from inference.chat import chat_format, supports_tools
from inference.embedding_worker import EmbeddingWorker
from inference.gpu import GpuInfo, supports_gpu_offload
from inference.llama_lowlevel import LoadFailed
from inference.memory_plan import cap_vram, default_context, format_size
from inference.model_file import ModelFileError, ModelInfo
from inference.offload import OffloadPlan, plan_offload, vram_needed
from p2p.model_match import model_matches
from p2p.node.auto_slots import slots_for
from p2p.node.config import NodeConfig, NodeError

log = logging.getLogger(__name__)

# Seconds of self-benchmark per model at start: enough for a stable tok/s on a small model.
SELF_BENCHMARK_S = 1.5


@attrs.define
class ServedModel:
    info: ModelInfo
    # An embedding GGUF (`info.pooling_type` set) gets an EmbeddingWorker, which refuses
    # generation and scoring with bad_request; every other model a BatchingWorker.
    worker: BatchingWorker | EmbeddingWorker
    plan: OffloadPlan | None = None
    n_ctx: int = 0  # the context each request gets here (what the record publishes)
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    cheat: str = ""  # tests only: how this node lies about its work (docs/security.md)
    # What the record says of the model beyond its file (p2p.dht.records.CHAT_FORMATS and
    # MODEL_CAPABILITIES), set where the model is loaded.
    chat_format: str = ""
    capabilities: tuple[str, ...] = ()
    slots_how: str = ""  # how the slot count was chosen (p2p/node/auto_slots.py SlotChoice)


def find_model(served: Sequence[ServedModel], wanted: str) -> ServedModel | None:
    """The served model that answers to *wanted* (a name or a sha256), if any."""
    for m in served:
        if model_matches(wanted, m.info.sha256, m.info.name):
            return m
    return None


def physical_cores(cpuinfo: str) -> int:
    """Distinct (package, core) pairs in /proc/cpuinfo's text; 0 when it does not say."""
    cores: set[tuple[str, str]] = set()
    package = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            cores.add((package, value.strip()))
    return len(cores)


def default_threads() -> int:
    """llama.cpp's threads when --threads is not given: the physical cores, as llama.cpp's own
    tools default to (a second hyper-thread on a core adds little to memory-bound decoding and
    slows prompts), and never more than the CPUs this process may run on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    usable = usable or 1
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            physical = physical_cores(f.read())
    except OSError:
        physical = 0
    return max(1, min(usable, physical or usable))


def served_context(wanted: int, info: ModelInfo) -> int:
    """The context a request gets: --ctx-size, at most what the model was trained for (past
    it a model's output degrades; an unknown trained context caps nothing)."""
    return min(wanted, info.context_length) if info.context_length > 0 else wanted


def _context(
    config: NodeConfig,
    info: ModelInfo,
    gpus: Sequence[GpuInfo],
    offload_ok: bool,
    on_progress: Callable[[str], None],
) -> int:
    """--ctx-size capped by the trained context, or without it the memory plan's default."""
    if config.n_ctx is None:
        # --slots auto: planned for the default count; auto then takes more slots only while
        # their KV cache fits beside this context (inference/slot_planner.py memory_cap)
        slots = config.slots if isinstance(config.slots, int) else DEFAULT_SLOTS
        n_ctx, why = default_context(
            info, gpus, n_seq=slots, gpu_layers=config.gpu_layers, offload_supported=offload_ok
        )
        on_progress(f"{info.name}: context {n_ctx} tokens ({why})")
        return n_ctx
    n_ctx = served_context(config.n_ctx, info)
    if n_ctx < config.n_ctx:
        on_progress(f"{info.name}: context {n_ctx} tokens, the most it was trained for")
    return n_ctx


def _memory_estimate(info: ModelInfo, n_ctx: int, n_seq: int) -> str:
    if info.layout is None:
        return ""
    need = vram_needed(info.layout, info.layer_count + 1, n_ctx=n_ctx, n_seq=n_seq)
    size = f"{need / 2**30:.1f} GiB" if need >= 2**30 else f"{need / 2**20:.0f} MiB"
    return (
        f"; it needs about {size} (weights and a KV cache of {n_seq} slots "
        f"x {n_ctx} tokens: try fewer --slots)"
    )


async def load_models(
    config: NodeConfig,
    gpus: Sequence[GpuInfo] = (),
    *,
    benchmark: bool = True,
    on_progress: Callable[[str], None] = lambda _line: None,
) -> list[ServedModel]:
    """Start one batching worker per model, offloaded as the planner decides for the free VRAM,
    then measure its prefill/decode speed (published in the record; clients rank by it).

    A model llama.cpp cannot load (unknown architecture, out of memory) is left out with a
    warning, so the node still serves the others; NodeError when none loads.
    """
    served: list[ServedModel] = []
    problems: list[str] = []
    offload_ok = supports_gpu_offload()
    if config.max_vram is not None and gpus:  # --max-vram: the planner sees no more than this
        gpus = cap_vram(gpus, config.max_vram)
        on_progress(f"planning with at most {format_size(config.max_vram)} of VRAM (--max-vram)")
    for info in config.models:
        n_ctx = _context(config, info, gpus, offload_ok, on_progress)
        n_threads = config.n_threads or default_threads()
        choice = await slots_for(  # --slots auto measures here (auto_slots.py)
            config,
            info,
            n_ctx=n_ctx,
            n_threads=n_threads,
            gpus=gpus,
            benchmark=benchmark,
            on_progress=on_progress,
        )
        slots, costs = choice.slots, choice.costs
        plan = plan_offload(
            info, gpus, n_ctx, config.gpu_layers, n_seq=slots, offload_supported=offload_ok
        )
        log.info("%s: %s", info.name, plan.reason)
        on_progress(f"loading {info.name}: {plan.reason}")
        path, cheat = Path(info.path), config.cheat
        if cheat.startswith("other-model:"):
            path = Path(cheat.removeprefix("other-model:"))
            log.warning("CHEATING (tests only): serving %s while claiming %s", path, info.sha256)
        elif cheat:
            log.warning("CHEATING (tests only): %s on every request for %s", cheat, info.name)
        worker: BatchingWorker | EmbeddingWorker
        if info.pooling_type is not None:  # serves /v1/embeddings only (embedding_serving.py)
            worker = EmbeddingWorker(
                path,
                n_ctx=n_ctx,
                n_threads=config.n_threads or default_threads(),
                n_gpu_layers=plan.n_gpu_layers,
                max_queue=config.max_queue,
            )
        else:
            worker = BatchingWorker(
                path,
                n_ctx=n_ctx,
                n_threads=config.n_threads or default_threads(),
                n_gpu_layers=plan.n_gpu_layers,
                tensor_split=plan.tensor_split or None,
                max_queue=config.max_queue,
                slots=slots,
                prefix_cache=config.prompt_cache,
                speculate=config.speculate,
            )
        try:
            await worker.start()
        except ModelFileError as exc:
            oom = isinstance(exc, LoadFailed) and exc.out_of_memory
            reason = f"{exc}{_memory_estimate(info, n_ctx, slots) if oom else ''}"
            log.warning("not serving %s: %s", info.name, reason)
            on_progress(f"not serving {info.name}: {reason}")
            problems.append(reason)
            await worker.aclose()
            continue
        model = ServedModel(
            info,
            worker,
            plan,
            n_ctx=n_ctx,
            cheat=cheat,
            chat_format=chat_format(info.architecture, info.chat_template, info.name),
            # a template that renders tool definitions (inference/chat.py): tools are refused
            # for every other model rather than dropped
            capabilities=("tools",) if supports_tools(info.chat_template) else (),
            slots_how=choice.how,
        )
        if isinstance(worker, EmbeddingWorker):  # no chat, no decode speed to measure
            model.chat_format, model.capabilities = "", ("embedding",)
        elif benchmark:
            on_progress(f"measuring {info.name}'s speed ({SELF_BENCHMARK_S:g} s)...")
            speed = await worker.measure_throughput(budget_s=SELF_BENCHMARK_S)
            model.prefill_tok_s, model.decode_tok_s = speed.prefill_tok_s, speed.decode_tok_s
            on_progress(
                f"{info.name}: prefill {speed.prefill_tok_s:.0f} tok/s, "
                f"decode {speed.decode_tok_s:.1f} tok/s"
            )
            if config.speculate:  # drafts weighed against this machine's step costs
                worker.use_step_costs(costs or await worker.measure_step_costs())
        served.append(model)
    if not served:
        raise NodeError("no model could be loaded: " + "; ".join(problems[:3]))
    return served
