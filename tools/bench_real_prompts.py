"""gpunet `node --api` beside llama.cpp's llama-server on prompts that look like real use.

The yardstick's one prompt (a list of numbers) repeats itself, which flatters speculation and
hides how batching and the step loop fare on text that does not. This benchmark sends code,
prose and chat prompts written to look like real requests (nothing in them repeats), streaming
/v1/completions, greedy, --max-tokens (128) with ignore_eos so every stream is full length, at
1, 4 and 8 concurrent streams (each stream of a burst gets another prompt of the class), to:

  gpunet             `python -m p2p node --api` with its defaults (--slots auto, speculation
                     on), plus any --gpunet NAME='FLAGS' variants (e.g. slots8='--slots 8')
  llama-server       llama.cpp's server, `-t T -c 8192` and its defaults otherwise
  llama-server -np 8 the same with 8 slots (what the issue's table compares against)
  llama-server ngram `-np 8 --spec-type ngram-mod`: llama.cpp's draft-free speculation

llama-server comes from ../shared/bench/build-llama-server.sh (it prints the binary's path;
building takes minutes of every core, so build it before, not during, a run). Every server
runs for the whole run on a free loopback port (an idle one uses no CPU); units are interleaved:
each round measures every (class, concurrency) on every target in turn, rotating which target
goes first, so drift in the machine's load hits all of them alike. Reported per unit: the median
over rounds of single-stream decode tok/s ((tokens - 1) / seconds after the first) at 1 and of
aggregate tok/s (all tokens / wall seconds of the burst) at 4 and 8, and the median (min-max)
of each round's ratio to the reference target (--reference, default llama-server -np 8).

    python tools/bench_real_prompts.py --llama-server BIN [--model GGUF] [--rounds 3]
        [--threads 2] [--gpu-layers N] [--concurrency 1 4 8] [--gpunet NAME='FLAGS' ...]
        [--only TARGET ...] [--quiet-wait SECONDS] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_servers import free_port, log, run_together, serving
from bench_batching import QUIET_BUSY, cpu_busy
from bench_gateway import node_api_server

# Three of each, so a burst of 4 or 8 streams mixes them; none repeats a phrase of its own.
PROMPTS: dict[str, tuple[str, ...]] = {
    "code": (
        "import csv\nfrom pathlib import Path\n\n\ndef load_orders(path: Path) -> list[dict]:\n"
        '    """Read the orders export and return rows whose status is shipped."""\n',
        "// Debounce a function: call it only after `wait` ms without another call.\n"
        "export function debounce(fn, wait) {\n",
        "#include <stdio.h>\n#include <stdlib.h>\n\n/* Parse a port number from argv, "
        "exit with a message when it is out of range. */\nint parse_port(const char *text) {\n",
    ),
    "prose": (
        "The ferry left the harbour an hour late, and by the time it cleared the breakwater "
        "the wind had turned. Marta stood at the rail with her brother's letter folded in "
        "her coat pocket, trying to decide whether she would",
        "Municipal budgets in mid-sized cities have come under pressure from two directions "
        "at once: rising maintenance costs for ageing water systems, and a shrinking base of",
        "When the first reports of the drought reached the capital, the ministry's response "
        "was cautious. Officials pointed to reservoirs that were still",
    ),
    "chat": (
        "<start_of_turn>user\nI'm moving from Berlin to Lisbon in March with a cat. What "
        "paperwork do I need and what should I sort out first?<end_of_turn>\n"
        "<start_of_turn>model\n",
        "<start_of_turn>user\nCan you explain the difference between a mutex and a semaphore, "
        "with an example of when I'd pick each?<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\nMy sourdough comes out dense and sour. I feed the starter once "
        "a day and bake at 230 C. What should I change?<end_of_turn>\n<start_of_turn>model\n",
    ),
}
REFERENCE = "llama-server -np 8"
LLAMA_SERVER_CTX = 8192


def gpunet_server(
    model: Path, work: Path, threads: int, gpu_layers: int, flags: list[str]
) -> contextlib.AbstractContextManager[str]:
    """`gpunet node --api` alone in its own DHT, with `flags` after the benchmark's own."""
    own = ["--gpu-layers", str(gpu_layers), "--max-queue", "64"]
    return node_api_server(model, work, None, threads, [*own, *flags])


def llama_server(
    binary: Path, model: Path, work: Path, threads: int, gpu_layers: int, extra: list[str]
) -> contextlib.AbstractContextManager[str]:
    import os

    port = free_port()
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", str(threads), "-c", str(LLAMA_SERVER_CTX), "-ngl", str(gpu_layers), *extra]
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    name = "llama_server_" + "_".join(a.strip("-") for a in extra) + ".log"
    return serving(cmd, work / name, port, env)


class Target:
    def __init__(self, name: str, url: str, max_tokens: int) -> None:
        import openai

        self.name, self.max_tokens = name, max_tokens
        self.client = openai.OpenAI(base_url=url, api_key="none", timeout=900)
        self.model = self.client.models.list().data[0].id
        self.stream(PROMPTS["prose"][0], 16)  # warm-up

    def stream(self, prompt: str, max_tokens: int) -> tuple[float, int, float]:
        """(seconds to the first text, chunks with text, seconds to the end)."""
        t = time.monotonic()
        first, n = 0.0, 0
        for chunk in self.client.completions.create(
            model=self.model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        ):
            if chunk.choices and chunk.choices[0].text:
                n += 1
                first = first or time.monotonic() - t
        return first, n, time.monotonic() - t

    def unit(self, kind: str, k: int) -> float:
        """Single-stream decode tok/s (k = 1) or aggregate tok/s of k streams together."""
        prompts = PROMPTS[kind]
        calls = [
            functools.partial(self.stream, prompts[i % len(prompts)], self.max_tokens)
            for i in range(k)
        ]
        results, wall = run_together(self.name, calls)
        short = [n for _, n, _ in results if n < self.max_tokens]
        if short:
            log(f"WARNING {self.name}: {len(short)} of {k} streams ended early ({short} chunks)")
        if k == 1:
            first, n, total = results[0]
            return (n - 1) / max(total - first, 1e-9)
        return sum(n for _, n, _ in results) / wall


def run(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    figures: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for kind in PROMPTS:
            for k in args.concurrency:
                key = f"{kind} x{k}"
                order = targets[r % len(targets) :] + targets[: r % len(targets)]
                for target in order:
                    if args.quiet_wait:
                        deadline = time.monotonic() + args.quiet_wait
                        while cpu_busy() > QUIET_BUSY and time.monotonic() < deadline:
                            time.sleep(2)
                    value = target.unit(kind, k)
                    figures.setdefault(key, {}).setdefault(target.name, []).append(value)
                    log(f"round {r + 1} {key:9} {target.name:22} {value:7.1f} tok/s")
    reference = args.reference if args.reference in [t.name for t in targets] else None
    table: dict[str, Any] = {}
    for key, per_target in figures.items():
        row: dict[str, Any] = {}
        for name, values in per_target.items():
            cell: dict[str, Any] = {"tok_s": statistics.median(values), "rounds": values}
            if reference and name != reference:
                ratios = [v / ref for v, ref in zip(values, per_target[reference], strict=True)]
                cell["ratio"] = statistics.median(ratios)
                cell["ratio_range"] = [min(ratios), max(ratios)]
            row[name] = cell
        table[key] = row
    return {"reference": reference, "units": table}


def show(result: dict[str, Any], names: list[str]) -> None:
    print(f"{'unit':10} " + " ".join(f"{n[:24]:>24}" for n in names))
    for key, row in result["units"].items():
        cells = []
        for n in names:
            c = row.get(n)
            if c is None:
                cells.append(f"{'-':>24}")
            elif "ratio" in c:
                lo, hi = c["ratio_range"]
                cells.append(f"{c['tok_s']:7.1f} {c['ratio']:.2f}x({lo:.2f}-{hi:.2f})".rjust(24))
            else:
                cells.append(f"{c['tok_s']:7.1f}".rjust(24))
        print(f"{key:10} " + " ".join(cells))
    print(f"(decode tok/s at x1, aggregate tok/s beyond; ratios to {result['reference']})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: Gemma 3 270M)")
    parser.add_argument("--llama-server", type=Path, default=None, help="llama-server binary")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU, all servers")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument(
        "--gpunet",
        action="append",
        default=[],
        metavar="NAME='FLAGS'",
        help="another gpunet node variant, e.g. slots8-nospec='--slots 8 --no-speculate'",
    )
    parser.add_argument("--only", nargs="+", default=None, help="measure only these targets")
    parser.add_argument("--reference", default=REFERENCE, help="the target ratios divide by")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.model is None:
        from inference.default_model import ensure_default_model

        args.model = ensure_default_model()
    if args.llama_server is not None and not args.llama_server.is_file():
        parser.error(f"--llama-server {args.llama_server}: no such file")
    return args


def servers(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(name, "gpunet" or "llama-server", extra flags) of every target to start."""
    out: list[tuple[str, str, list[str]]] = [("gpunet", "gpunet", [])]
    for spec in args.gpunet:
        name, _, flags = spec.partition("=")
        out.append((f"gpunet {name}", "gpunet", shlex.split(flags)))
    if args.llama_server is not None:
        out.append(("llama-server", "llama-server", []))
        out.append((REFERENCE, "llama-server", ["-np", "8"]))
        out.append(("llama-server ngram", "llama-server", ["-np", "8", "--spec-type", "ngram-mod"]))
    return [t for t in out if args.only is None or t[0] in args.only]


def main() -> int:
    args = parse_args()
    chosen = servers(args)
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp, contextlib.ExitStack() as es:
        targets = []
        for name, kind, extra in chosen:
            work = Path(tmp) / name.replace(" ", "_")
            work.mkdir()
            log(f"starting {name}...")
            if kind == "gpunet":
                server = gpunet_server(args.model, work, args.threads, args.gpu_layers, extra)
            else:
                server = llama_server(
                    args.llama_server, args.model, work, args.threads, args.gpu_layers, extra
                )
            targets.append(Target(name, es.enter_context(server), args.max_tokens))
        result = run(args, targets)
    result["setup"] = {
        "model": args.model.name,
        "threads": args.threads,
        "gpu_layers": args.gpu_layers,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "machine": platform.platform(),
        "targets": {name: extra for name, _, extra in chosen},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        show(result, [name for name, _, _ in chosen])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
