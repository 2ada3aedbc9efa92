"""Benchmark gpunet against direct llama-cpp-python on this machine, in one run.

Starts one gpunet node (default model, Gemma 3 270M Q4_K_M) as a subprocess, then measures the
same greedy request three ways, strictly one at a time (the node and this process share the
CPU cores, so nothing runs concurrently):

  direct  llama_cpp.Llama in this process, create_completion(stream=True)
  client  gpunet's in-process client: open_client() then generate() over an encrypted session
  ask     `python -m p2p ask ...` as a child process, timed from spawn to exit

Each method gets one warm-up run, then --runs measured runs; rounds are interleaved (direct,
client, ask, rotating the order each round) so slow drift on a shared machine hits all three
alike. Medians are printed side by side with the ratios gpunet/direct.

    python tools/bench_network.py [--runs 5] [--max-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The prompt of ../shared/bench/openai_stream_bench.py: the model keeps going for 128 tokens.
PROMPT = "List the numbers from 1 to 300, separated by commas:"
THREADS = 2
N_CTX = 2048
NODE_READY_TIMEOUT_S = 300.0
ASK_TIMEOUT_S = 300.0
METHODS = ("direct", "client", "warm", "ask")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child_env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GPUNET_DATA_DIR"] = str(data_dir)
    env["GPUNET_BOOTSTRAP"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- the node ---------------------------------------------------------------------------------


def start_node(data_dir: Path, stderr_file: Any) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    cmd = [sys.executable, "-m", "p2p", "node", "--dht-port", "0", "--port", "0", "--json"]
    # the same prompt every run: without this the node would skip its prefill, direct would not
    cmd += ["--no-prompt-cache"]
    cmd += ["--threads", str(THREADS)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=stderr_file, env=child_env(data_dir)
    )
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # keep draining so the node never blocks on a full pipe
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    try:
        first = lines.get(timeout=NODE_READY_TIMEOUT_S)
    except queue.Empty:
        first = b""
    try:
        ready = json.loads(first)
        if ready.get("event") != "ready":
            raise ValueError(first)
    except ValueError:
        stop_node(proc)
        raise RuntimeError(f"the node did not report ready (first line {first[:200]!r})") from None
    return proc, ready


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the three methods ------------------------------------------------------------------------


def run_direct(llm: Any, max_tokens: int) -> dict[str, Any]:
    """One completion straight from llama-cpp-python, from an empty KV cache like the node."""
    llm.reset()  # otherwise create_completion reuses the cached prompt and skips the prefill
    pieces: list[str] = []
    stamps: list[float] = []
    finish = None
    start = time.perf_counter()
    for chunk in llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0, stream=True):
        now = time.perf_counter()
        choice = chunk["choices"][0]
        if choice["text"]:
            pieces.append(choice["text"])
            stamps.append(now)
        finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    tokens = len(stamps)  # one non-empty chunk per token without stop strings (checked)
    return {
        "ttft_s": stamps[0] - start,
        "decode_tok_s": rate(tokens - 1, stamps[-1] - stamps[0]),
        "wall_s": end - start,
        "tokens": tokens,
        "finish_reason": finish,
        "text": "".join(pieces),
    }


def run_client(
    dht: tuple[str, int], model: str, max_tokens: int, *, warm: bool = False
) -> dict[str, Any]:
    """One request through gpunet's client library; TTFT from just before generate().

    Cold (default): the first request of a fresh client, so TTFT includes the DHT lookup and
    the Noise handshake. Warm: a short request first, then the measured one on the pooled
    session (TTFT still includes the provider lookup, not the handshake)."""
    import trio

    from p2p.client.failover import generate
    from p2p.client.network import open_client
    from p2p.protocol import wire

    out: dict[str, Any] = {}

    async def main() -> None:
        pieces: list[str] = []
        stamps: list[float] = []

        def on_text(text: str) -> None:
            stamps.append(time.perf_counter())
            pieces.append(text)

        t_join = time.perf_counter()
        async with open_client([dht]) as client:
            if warm:
                first = wire.Generate(id=1, model=model, prompt=PROMPT, max_tokens=2)
                await generate(client, model, first, lambda _t: None)
            start = time.perf_counter()
            request = wire.Generate(
                id=1, model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0.0
            )
            done = await generate(client, model, request, on_text)
            end = time.perf_counter()
        out.update(
            join_s=start - t_join,
            ttft_s=stamps[0] - start,
            decode_tok_s=rate(done.completion_tokens - 1, stamps[-1] - stamps[0]),
            wall_s=end - start,
            tokens=done.completion_tokens,
            chunks=len(stamps),
            finish_reason=done.finish_reason,
            node_ttft_s=done.ttft_s,
            node_decode_tok_s=done.decode_tok_s,
            text="".join(pieces),
        )

    trio.run(main)
    return out


def run_ask(
    dht: str, model: str, max_tokens: int, data_dir: Path, count_tokens: Callable[[str], int]
) -> dict[str, Any]:
    """`python -m p2p ask` as a process: wall time, and TTFT as the first byte on its stdout."""
    cmd = [sys.executable, "-m", "p2p", "ask", "--bootstrap", dht, "--max-tokens", str(max_tokens)]
    cmd += ["--model", model, PROMPT]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, env=child_env(data_dir), bufsize=0
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        data = b""
        first = last = None
        while chunk := os.read(fd, 65536):
            now = time.perf_counter()
            data += chunk
            if first is None:
                first = now
            if chunk.strip(b"\n"):
                last = now  # the final "\n" the CLI adds is not a token
        try:
            rc = proc.wait(timeout=ASK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        end = time.perf_counter()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if rc != 0 or first is None or last is None:
        raise RuntimeError(f"gpunet ask failed (exit {rc}): {stderr.strip()[-500:]}")
    text = data.decode("utf-8")
    text = text[:-1] if text.endswith("\n") else text
    tokens = count_tokens(text)
    return {
        "ttft_s": first - start,
        "decode_tok_s": rate(tokens - 1, last - first),
        "wall_s": end - start,
        "tokens": tokens,
        "text": text,
    }


# --- bookkeeping ------------------------------------------------------------------------------


def rate(count: int, seconds: float) -> float:
    return count / seconds if count > 0 and seconds > 0 else 0.0


def summarise(runs: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(stat: dict[str, float] | None, scale: float = 1.0, digits: int = 1) -> str:
    if stat is None:
        return "-"
    med, lo, hi = (stat[k] * scale for k in ("median", "min", "max"))
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> float | None:
    if a is None or b is None or b["median"] == 0:
        return None
    return a["median"] / b["median"]


def print_table(result: dict[str, Any]) -> None:
    s = result["summary"]
    cfg = result["config"]
    print(
        f"gpunet vs direct llama-cpp-python: {cfg['model']}, {cfg['max_tokens']} tokens, greedy, "
        f"{cfg['threads']} threads, median (min-max) of {cfg['runs']} runs after 1 warm-up"
    )
    print(f"machine: {cfg['machine']}; date {cfg['date']}")
    rows = [
        ("direct llama-cpp-python", s["direct"], "ttft_s", "decode_tok_s", "wall_s"),
        ("gpunet client, cold", s["client"], "ttft_s", "decode_tok_s", "wall_s"),
        ("gpunet client, warm session", s["warm"], "ttft_s", "decode_tok_s", "wall_s"),
        ("  node-side, from Done", s["client"], "node_ttft_s", "node_decode_tok_s", None),
        ("gpunet ask (process)", s["ask"], "ttft_s", "decode_tok_s", "wall_s"),
    ]
    header = f"{'method':<28} {'TTFT ms':>22} {'decode tok/s':>20} {'wall s':>20}"
    print(header)
    print("-" * len(header))
    for label, stats, ttft, dec, wall in rows:
        print(
            f"{label:<28} {fmt(stats[ttft], 1000, 1):>22} {fmt(stats[dec]):>20} "
            f"{fmt(stats[wall], 1, 2) if wall else '-':>20}"
        )
    print(f"client DHT join (open_client, not in TTFT): {fmt(s['client']['join_s'], 1000, 1)} ms")
    for label, key in (("cold", "client"), ("warm", "warm")):
        stats, base = s[key]["ttft_s"], s["direct"]["ttft_s"]
        if stats and base:
            extra = (stats["median"] - base["median"]) * 1000
            print(f"TTFT overhead over direct, {label}: {extra:+.1f} ms (medians)")
    print("ratios gpunet/direct (medians):")
    for label, r in result["ratios"].items():
        print(f"  {label:<28} {'-' if r is None else f'{r:.2f}x'}")
    c = result["checks"]
    print(
        f"checks: all runs produced {cfg['max_tokens']} tokens: {c['all_full_length']}; "
        f"gpunet text == direct text: client {c['client_text_matches']}, "
        f"warm {c['warm_text_matches']}, ask {c['ask_text_matches']}; "
        f"direct runs agree: {c['direct_deterministic']}"
    )
    if c["mismatch_example"]:
        print(f"first mismatch: {c['mismatch_example']}")


def first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at char {i}: direct {a[i : i + 40]!r} vs gpunet {b[i : i + 40]!r}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Decode tok/s and TTFT of gpunet (node + client, and `gpunet ask` as a "
        "process) beside direct llama-cpp-python, for the default model, in one run."
    )
    parser.add_argument("--runs", type=int, default=5, help="measured runs per method (default 5)")
    parser.add_argument(
        "--max-tokens", type=int, default=128, help="tokens to generate (default 128)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    if args.runs < 1 or args.max_tokens < 2:
        parser.error("--runs must be >= 1 and --max-tokens >= 2")

    for name in ("kademlia", "rpcudp"):  # unanswered-RPC chatter of the client's DHT
        logging.getLogger(name).setLevel(logging.ERROR)

    import llama_cpp

    from inference.default_model import ensure_default_model
    from p2p.host_port import parse_host_port

    model_path = ensure_default_model()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="gpunet-bench-") as tmp:
        data_dir = Path(tmp)
        node_log = open(data_dir / "node-stderr.log", "wb")  # noqa: SIM115
        log("starting the node...")
        t = time.perf_counter()
        node, ready = start_node(data_dir, node_log)
        try:
            node_start_s = time.perf_counter() - t
            model = ready["models"][0]["name"]
            dht_text = ready["dht"]
            dht = parse_host_port(dht_text)
            log(f"node ready in {node_start_s:.1f} s: {model} at {dht_text}; loading direct model")
            t = time.perf_counter()
            llm = llama_cpp.Llama(
                model_path=str(model_path), n_ctx=N_CTX, n_threads=THREADS, verbose=False
            )
            direct_load_s = time.perf_counter() - t

            def count_tokens(text: str) -> int:
                return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

            measure: dict[str, Callable[[], dict[str, Any]]] = {
                "direct": lambda: run_direct(llm, args.max_tokens),
                "client": lambda: run_client(dht, model, args.max_tokens),
                "warm": lambda: run_client(dht, model, args.max_tokens, warm=True),
                "ask": lambda: run_ask(dht_text, model, args.max_tokens, data_dir, count_tokens),
            }
            for round_no in range(args.runs + 1):
                shift = round_no % len(METHODS)
                for method in METHODS[shift:] + METHODS[:shift]:
                    r = measure[method]()
                    tag = "warm-up" if round_no == 0 else f"run {round_no}"
                    log(
                        f"{tag:>8} {method:<6} ttft {r['ttft_s'] * 1000:7.1f} ms  "
                        f"decode {r['decode_tok_s']:5.1f} tok/s  wall {r['wall_s']:5.2f} s  "
                        f"tokens {r['tokens']}"
                    )
                    if round_no:
                        runs[method].append(r)
        finally:
            stop_node(node)
            node_log.close()

    reference = runs["direct"][0]["text"]
    mismatch = ""
    for method in ("client", "warm", "ask"):
        for r in runs[method]:
            if r["text"] != reference and not mismatch:
                mismatch = f"{method}: " + first_difference(reference, r["text"])
    summary = {
        m: {
            k: summarise(runs[m], k)
            for k in (
                "ttft_s",
                "decode_tok_s",
                "wall_s",
                "join_s",
                "node_ttft_s",
                "node_decode_tok_s",
            )
        }
        for m in METHODS
    }
    result = {
        "config": {
            "model": ready["models"][0]["name"],
            "model_sha256": ready["models"][0]["sha256"],
            "prompt": PROMPT,
            "max_tokens": args.max_tokens,
            "runs": args.runs,
            "threads": THREADS,
            "llama_cpp_python": llama_cpp.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU offload"
            if not llama_cpp.llama_supports_gpu_offload()
            else f"{platform.machine()}, {os.cpu_count()} cores, GPU offload available",
            "date": datetime.date.today().isoformat(),
            "node_start_s": node_start_s,
            "direct_load_s": direct_load_s,
        },
        "summary": summary,
        "ratios": {
            "TTFT, client": ratio(summary["client"]["ttft_s"], summary["direct"]["ttft_s"]),
            "TTFT, warm": ratio(summary["warm"]["ttft_s"], summary["direct"]["ttft_s"]),
            "TTFT, ask": ratio(summary["ask"]["ttft_s"], summary["direct"]["ttft_s"]),
            "decode tok/s, warm": ratio(
                summary["warm"]["decode_tok_s"], summary["direct"]["decode_tok_s"]
            ),
            "decode tok/s, client": ratio(
                summary["client"]["decode_tok_s"], summary["direct"]["decode_tok_s"]
            ),
            "decode tok/s, node-side": ratio(
                summary["client"]["node_decode_tok_s"], summary["direct"]["decode_tok_s"]
            ),
            "decode tok/s, ask": ratio(
                summary["ask"]["decode_tok_s"], summary["direct"]["decode_tok_s"]
            ),
            "wall s, ask": ratio(summary["ask"]["wall_s"], summary["direct"]["wall_s"]),
        },
        "checks": {
            "all_full_length": all(
                r["tokens"] == args.max_tokens for m in METHODS for r in runs[m]
            ),
            "client_text_matches": all(r["text"] == reference for r in runs["client"]),
            "ask_text_matches": all(r["text"] == reference for r in runs["ask"]),
            "warm_text_matches": all(r["text"] == reference for r in runs["warm"]),
            "direct_deterministic": all(r["text"] == reference for r in runs["direct"]),
            "mismatch_example": mismatch,
        },
        "runs": {m: [{k: v for k, v in r.items() if k != "text"} for r in runs[m]] for m in runs},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
