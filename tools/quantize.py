#!/usr/bin/env python3
"""Quantize an F32/F16/BF16 GGUF to Q4_K_M, Q8_0, Q3_K_M or Q2_K with llama.cpp's quantizer.

    python tools/quantize.py model-f16.gguf model-q4_k_m.gguf --type Q4_K_M
    python tools/quantize.py model-f32.gguf model-q8_0.gguf --type q8_0 --threads 4 --json

Progress (one `[n/total] tensor` line, redrawn on a terminal) goes to stderr; the result is one
summary line on stdout, or a JSON object with --json. The output is written under a temporary
name beside DST and renamed when complete, so a failure or Ctrl-C leaves no partial file. Errors
are one line on stderr with exit code 2 (130 after Ctrl-C). The work is inference/quantize.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.quantize import TARGETS, QuantizeError, QuantizeResult, quantize_gguf
from inference.sha256_cache import sha256_file

PROG = "quantize.py"
# Off a terminal (a log file, CI), print a progress line only every this fraction of the tensors.
_LOG_STEP = 0.1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage + error
        self.exit(2, f"{PROG}: {message} (see --help)\n")


class StderrProgress:
    """`[  3/ 21] blk.0.attn_k.weight` on stderr: redrawn in place on a terminal, else sampled."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.next_logged = 0.0
        self.drawn = False

    def __call__(self, index: int, total: int, name: str) -> None:
        width = len(str(total))
        line = f"[{index:>{width}}/{total}] {name}"
        if self.tty:
            print(f"\r\x1b[K{line}", end="", file=sys.stderr, flush=True)
            self.drawn = True
        elif index / total >= self.next_logged or index == total:
            print(line, file=sys.stderr, flush=True)
            self.next_logged = index / total + _LOG_STEP

    def finish(self) -> None:
        if self.drawn:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
            self.drawn = False


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _summary(r: QuantizeResult, sha256: str | None) -> str:
    tensors = "" if r.tensor_count is None else f", {r.tensor_count} tensors"
    digest = "" if sha256 is None else f", sha256 {sha256}"
    return (
        f"{r.dst}: {r.source_type} -> {r.target}, {_size(r.src_bytes)} -> {_size(r.dst_bytes)} "
        f"({r.ratio:.1f}x smaller){tensors}, {r.seconds:.2f} s{digest}"
    )


def _json(r: QuantizeResult, sha256: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "src": str(r.src),
        "dst": str(r.dst),
        "source_type": r.source_type,
        "target": r.target,
        "src_bytes": r.src_bytes,
        "dst_bytes": r.dst_bytes,
        "ratio": round(r.ratio, 3),
        "seconds": round(r.seconds, 3),
        "tensor_count": r.tensor_count,
    }
    if sha256 is not None:
        out["sha256"] = sha256
    return out


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog=PROG,
        description="Quantize an F32/F16/BF16 GGUF model with llama.cpp's quantizer. Q4_K_M is "
        "what gpunet serves by default (about 4.9 bits per weight); Q8_0 is near-lossless at "
        "about 8.5 bits per weight.",
    )
    parser.add_argument("src", type=Path, metavar="SRC.gguf", help="input model (F32/F16/BF16)")
    parser.add_argument("dst", type=Path, metavar="DST.gguf", help="output path (must not exist)")
    parser.add_argument(
        "--type",
        dest="target",
        required=True,
        type=str.upper,
        choices=list(TARGETS),
        help="target quantization (case-insensitive)",
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="quantizer threads (default: all hardware threads)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument(
        "--allow-requantize",
        action="store_true",
        help="accept an already-quantized input (quality suffers twice)",
    )
    parser.add_argument("--sha256", action="store_true", help="also hash the output")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    progress = StderrProgress()
    try:
        result = quantize_gguf(
            args.src,
            args.dst,
            args.target,
            threads=args.threads,
            on_progress=None if args.quiet else progress,
            allow_requantize=args.allow_requantize,
            overwrite=args.force,
        )
        sha256 = sha256_file(result.dst) if args.sha256 else None
    except QuantizeError as e:
        progress.finish()
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        progress.finish()
        print(f"{PROG}: {e.strerror or e}: {e.filename or args.dst}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.finish()
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # llama.cpp may still be running in its thread; do not let interpreter shutdown wait on,
        # or tear down Python under, a C call that will call back into Python.
        os._exit(130)
    progress.finish()
    print(json.dumps(_json(result, sha256)) if args.json else _summary(result, sha256))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
