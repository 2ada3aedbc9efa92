"""Check gpunet on a machine with an NVIDIA GPU: what a node sees, chooses and publishes there,
with its model on the GPU and on the CPU alone.

  1. NVML's readings of every GPU (inference.gpu.probe_gpus), this llama.cpp build's offload
     support, its build id and the hardware class a node would publish
  2. the offload planner's choice for the model with the node's defaults (context 2048 x 4 slots,
     --gpu-layers auto), and its VRAM estimate
  3. two legs, one after the other: the planned layers on the GPU, then --gpu-layers 0. Each loads
     a BatchingWorker as `gpunet node` does (threads: every core) and reports the layers
     llama.cpp took, the VRAM the load took (NVML, before and after), the self-benchmark the node
     publishes (prefill and decode tok/s), and --rounds single streams of the yardstick's greedy
     --max-tokens completion (decode tok/s after the first token, median)
  4. whether the two legs' greedy (reproducible) completions agree token for token, and where
     they first differ — different backends round differently (see hardware_class)

Progress goes to stderr; the report (or --json) to stdout. The exit status is 1 when a leg
failed to load or to generate, 0 otherwise (also with no GPU: then both legs run on the CPU).

    python tools/cuda_check.py [--model GGUF] [--rounds 3] [--max-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_batching import log, one
from bench_network import PROMPT

from inference.batching import BatchingWorker
from inference.generation import GenerationDone, GenerationRequest, TokenChunk
from inference.gpu import GpuInfo, hardware_class, probe_gpus, probe_host
from inference.model_file import inspect_gguf
from inference.offload import plan_offload

# The node's defaults (p2p/node/runtime.py NodeConfig and SELF_BENCHMARK_S), kept here so that this
# check imports nothing of p2p.
N_CTX = 2048
SLOTS = 4
SELF_BENCHMARK_S = 1.5


def used_bytes(gpus: list[GpuInfo]) -> int:
    return sum(g.vram_total - g.vram_free for g in gpus)


async def greedy_ids(worker: BatchingWorker, max_tokens: int) -> tuple[list[int], str]:
    ids: list[int] = []
    text = []
    request = GenerationRequest(PROMPT, max_tokens=max_tokens, reproducible=True)
    async with worker.generate(request) as stream:
        async for item in stream:
            if isinstance(item, TokenChunk):
                ids.extend(item.token_ids)
                text.append(item.text)
            elif isinstance(item, GenerationDone):
                break
    return ids, "".join(text)


async def leg(
    name: str, model: Path, n_gpu_layers: int, split: tuple[float, ...], args: argparse.Namespace
) -> dict[str, Any]:
    before = used_bytes(probe_gpus())
    worker = BatchingWorker(
        model,
        n_ctx=N_CTX,
        n_threads=args.threads,
        n_gpu_layers=n_gpu_layers,
        tensor_split=split or None,
        slots=SLOTS,
        speculate=False,  # the device's speed per decode step, not how many tokens a step keeps
    )
    log(f"{name}: loading with n_gpu_layers={n_gpu_layers}...")
    t0 = time.perf_counter()
    try:
        await worker.start()
        load_s = time.perf_counter() - t0
        vram = used_bytes(probe_gpus()) - before
        speed = await worker.measure_throughput(budget_s=SELF_BENCHMARK_S)
        log(
            f"{name}: {worker.n_gpu_layers} layers offloaded, load {load_s:.2f} s, "
            f"VRAM +{vram / 2**20:.0f} MiB; self-benchmark prefill {speed.prefill_tok_s:.0f} "
            f"tok/s, decode {speed.decode_tok_s:.1f} tok/s"
        )
        ids, text = await greedy_ids(worker, args.max_tokens)
        await one(worker, PROMPT, 16)  # warm-up, as the benchmarks do
        decode, ttft = [], []
        for r in range(args.rounds):
            tokens, first, total = await one(worker, PROMPT, args.max_tokens)
            if tokens < 2 or total <= first:
                raise RuntimeError(f"a completion produced {tokens} tokens")
            decode.append((tokens - 1) / (total - first))
            ttft.append(first * 1000)
            log(f"{name}: round {r + 1}/{args.rounds} decode {decode[-1]:.1f} tok/s")
    finally:
        await worker.aclose()
    return {
        "n_gpu_layers_asked": n_gpu_layers,
        "n_gpu_layers": worker.n_gpu_layers,
        "load_s": load_s,
        "vram_used_by_load_bytes": vram,
        "self_benchmark": attrs.asdict(speed),
        "decode_tok_s": decode,
        "decode_tok_s_median": statistics.median(decode),
        "ttft_ms_median": statistics.median(ttft),
        "greedy_ids": ids,
        "greedy_text": text,
    }


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


async def check(args: argparse.Namespace) -> dict[str, Any]:
    host = probe_host()
    gpus = probe_gpus()
    info = inspect_gguf(args.model)
    plan = plan_offload(info, gpus, N_CTX, "auto", n_seq=SLOTS, offload_supported=host.gpu_offload)
    log(f"GPUs: {[g.name for g in gpus] or 'none'}; build {host.build}")
    log(f"plan: {plan.reason}")
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "cores": host.cores,
        "threads": args.threads,
        "gpus": [attrs.asdict(g) for g in gpus],
        "gpu_offload": host.gpu_offload,
        "build": host.build,
        "hardware_class": hardware_class(
            gpus, offload=host.gpu_offload, cpu_flags=host.cpu_flags, machine=host.machine
        ),
        "model": info.name,
        "model_sha256": info.sha256,
        "layer_count": info.layer_count,
        "plan": {
            "n_gpu_layers": plan.n_gpu_layers,
            "tensor_split": list(plan.tensor_split),
            "vram_needed_bytes": plan.vram_needed,
            "reason": plan.reason,
        },
        "legs": {},
        "errors": {},
    }
    legs = [("gpu", plan.n_gpu_layers, plan.tensor_split), ("cpu", 0, ())]
    for name, layers, split in legs:
        try:
            report["legs"][name] = await leg(name, args.model, layers, split, args)
        except Exception as exc:  # a report with what did run beats a traceback
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: FAILED: {report['errors'][name]}")
    gpu, cpu = report["legs"].get("gpu"), report["legs"].get("cpu")
    if gpu and cpu:
        report["greedy_first_difference"] = first_difference(gpu["greedy_ids"], cpu["greedy_ids"])
        report["gpu_over_cpu_decode"] = gpu["decode_tok_s_median"] / cpu["decode_tok_s_median"]
    return report


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['date']}; Python {r['python']}; {r['cores']} cores, {r['threads']} threads")
    print(f"build: {r['build']} (offload {'yes' if r['gpu_offload'] else 'no'})")
    print(f"hardware class: {r['hardware_class']}")
    for g in r["gpus"]:
        print(
            f"GPU {g['index']}: {g['name']}, {g['vram_total'] / 2**30:.1f} GiB, "
            f"{g['vram_free'] / 2**30:.1f} GiB free, compute {g['compute_capability']}, "
            f"driver {g['driver_version']}, CUDA {g['cuda_version']}, "
            f"{g['utilization_pct']} % busy"
        )
    if not r["gpus"]:
        print("GPU: none found by NVML")
    plan = r["plan"]
    print(f"model: {r['model']} ({r['layer_count']} layers), sha256 {r['model_sha256'][:16]}...")
    print(f"plan: {plan['reason']}")
    for name, leg_ in r["legs"].items():
        s = leg_["self_benchmark"]
        print(
            f"{name}: {leg_['n_gpu_layers']} layers offloaded, VRAM +"
            f"{leg_['vram_used_by_load_bytes'] / 2**20:.0f} MiB, load {leg_['load_s']:.2f} s; "
            f"self-benchmark prefill {s['prefill_tok_s']:.0f} tok/s, decode "
            f"{s['decode_tok_s']:.1f} tok/s; single stream decode "
            f"{leg_['decode_tok_s_median']:.1f} tok/s, TTFT {leg_['ttft_ms_median']:.1f} ms "
            f"(median of {len(leg_['decode_tok_s'])})"
        )
    for name, error in r["errors"].items():
        print(f"{name}: FAILED: {error}")
    if "gpu_over_cpu_decode" in r:
        print(f"decode, GPU / CPU: {r['gpu_over_cpu_decode']:.2f}x")
        diff = r["greedy_first_difference"]
        print(
            "greedy texts: identical"
            if diff is None
            else f"greedy texts: first differ at token {diff}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--rounds", type=int, default=3, help="single streams per leg (3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="per completion (128)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="llama.cpp threads (default: every core, as a node)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    if args.rounds < 1 or args.max_tokens < 2 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1, --max-tokens >= 2")
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    elif not args.model.is_file():
        parser.error(f"{args.model} is not a file")
    report = trio.run(check, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
