"""Quantize an F32/F16/BF16 GGUF to Q4_K_M, Q8_0, Q3_K_M or Q2_K with llama.cpp's own quantizer.

llama.cpp's `llama_model_quantize` (through llama-cpp-python's ctypes binding) does the work; the
K-quants exist nowhere else we can call (gguf-py writes only the legacy Q4_0/Q8_0 family). What
this module adds is what the C function lacks:

- Input checked before llama.cpp sees it (`inspect_gguf` reads the header without the weights),
  so a wrong file is a one-line QuantizeError, not a C++ exception text.
- No half-written output, ever. llama.cpp writes its output in place and leaves a truncated file
  behind when it fails (a refused requantization leaves a 12 KB stub); we hand it a hidden
  temporary name beside `dst` and rename only a finished, re-inspected file.
- Progress. The quantizer runs in C and blocks, reporting only through llama.cpp's log, one
  `[   3/  21] blk.0.attn_k.weight - [...]` line per tensor. We run it in a thread with our own
  log callback installed, turn those lines into `on_progress(index, total, tensor_name)` calls on
  the caller's thread, and send every whole log line to the "llama.cpp" logger, as
  inference/llama_lowlevel.py's bridge does.
- Ctrl-C. The C call cannot be cancelled (it has no abort hook, and an exception raised in a ctypes
  callback is printed and ignored), so the caller stops waiting, the temporary file is removed,
  and the thread finishes in the background; if the process exits first the file dies with it.

llama.cpp's log callback is process-global, so quantizations are serialised by a lock held by the
quantizing thread, and the previous callback is put back afterwards unless someone replaced ours
in the meantime.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from inference.model_file import ModelFileError, ModelInfo, inspect_gguf

# Targets we offer -> llama.cpp's llama_ftype (LLAMA_FTYPE_MOSTLY_Q4_K_M, LLAMA_FTYPE_MOSTLY_Q8_0).
# llama_ftype numbers. Q3_K_M and Q2_K exist for the verification benchmark's "lower
# quantization" cheat (tools/bench_verification.py): made from an already quantized model.
TARGETS: dict[str, int] = {"Q4_K_M": 15, "Q8_0": 7, "Q3_K_M": 12, "Q2_K": 10}
# Source types llama.cpp quantizes without allow_requantize (checked: BF16 is accepted too).
UNQUANTIZED = ("F32", "F16", "BF16")
# How long Ctrl-C waits for llama.cpp to open its output file (it does so right before the first
# progress line, after reading the input's metadata), so that the file can be removed.
_CANCEL_GRACE_S = 10.0

_LOG = logging.getLogger("llama.cpp")
_LOG.addHandler(logging.NullHandler())  # silent unless the application configures logging
# ggml's log levels (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5): see llama_lowlevel.py.
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_ERROR_LEVEL = 4
_CONT_LEVEL = 5
_PROGRESS_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_FAILED_PREFIX = "llama_model_quantize: failed to quantize: "

Progress = Callable[[int, int, str], None]


class QuantizeError(Exception):
    """Bad input for quantize_gguf, or llama.cpp failed; the message is one line for the user."""


@attrs.frozen
class QuantizeResult:
    src: Path
    dst: Path
    source_type: str  # the input's quantization as inspect_gguf names it, e.g. "F16"
    target: str  # "Q4_K_M" or "Q8_0"
    src_bytes: int
    dst_bytes: int
    seconds: float  # wall time of the whole call
    tensor_count: int | None  # from llama.cpp's progress lines; None if it printed none

    @property
    def ratio(self) -> float:
        """How many times smaller the output is."""
        return self.src_bytes / self.dst_bytes if self.dst_bytes else 0.0


class _Job:
    """One quantization's shared state between the caller, the thread and the log callback."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.cancelled = threading.Event()
        # Set once llama.cpp has opened its output (it prints the first progress line right
        # after) or has returned: from then on removing the temporary file is final.
        self.settled = threading.Event()
        self.partial = ""  # a log line arrives in pieces; this is the unfinished one
        self.level = logging.DEBUG
        self.errors: list[str] = []

    def log(self, level: int, text: str) -> None:
        if level != _CONT_LEVEL:
            self.level = _LOG_LEVELS.get(level, logging.DEBUG)
            if (m := _PROGRESS_LINE.match(text)) is not None:
                self.settled.set()
                self.events.put(("progress", int(m[1]), int(m[2]), m[3]))
        if level == _ERROR_LEVEL:
            self.errors.append(text.strip())
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            if line.strip():
                _LOG.log(self.level, "%s", line.rstrip())


_LOCK = threading.Lock()  # one quantization at a time: the log callback is process-global
_current: _Job | None = None
_callback: Any = None  # the ctypes callback, created once and kept so it is never collected


def _on_log(level: int, text: bytes | None, _user_data: Any) -> None:
    try:
        if _current is not None and text:
            _current.log(level, text.decode("utf-8", "replace"))
    except Exception:  # an exception here would only be printed by ctypes, mid-quantization
        pass


def _address(fn: Any) -> int | None:
    return ctypes.cast(fn, ctypes.c_void_p).value


def _quantize_in_thread(llama_cpp: Any, job: _Job, src: Path, tmp: Path, params: Any) -> None:
    """The thread's body: swap the log callback in, quantize, swap it back, report."""
    global _callback, _current
    try:
        with _LOCK:
            if _callback is None:
                _callback = llama_cpp.llama_log_callback(_on_log)
            previous, previous_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
            llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
            _current = job
            llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
            try:
                rc = llama_cpp.llama_model_quantize(
                    os.fsencode(src), os.fsencode(tmp), ctypes.byref(params)
                )
            finally:
                job.settled.set()
                current, current_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
                llama_cpp.llama_log_get(ctypes.byref(current), ctypes.byref(current_data))
                if _address(current) == _address(_callback):
                    llama_cpp.llama_log_set(previous, previous_data)
                _current = None
                if job.cancelled.is_set():
                    tmp.unlink(missing_ok=True)
        job.events.put(("done", rc, None))
    except BaseException as e:
        job.events.put(("done", None, e))


def _check_inputs(
    src: Path, dst: Path, target: str, *, allow_requantize: bool, overwrite: bool
) -> tuple[str, str, int]:
    """(normalised target, source type, source size), or QuantizeError."""
    target = target.upper()
    if target not in TARGETS:
        raise QuantizeError(f"unknown target type {target!r}: choose {' or '.join(TARGETS)}")
    try:
        info = inspect_gguf(src, sha256="")  # the input's hash is not needed here
    except ModelFileError as e:
        raise QuantizeError(str(e)) from e
    if info.quantization not in UNQUANTIZED and not allow_requantize:
        raise QuantizeError(
            f"{src} is already quantized ({info.quantization}); quantize from the "
            f"{'/'.join(UNQUANTIZED)} original (--allow-requantize accepts the quality loss)"
        )
    if dst.is_dir():
        raise QuantizeError(f"{dst} is a directory")
    if dst.exists():
        if dst.resolve() == src.resolve():
            raise QuantizeError(f"{dst} is the input file; write the output to a new file")
        if not overwrite:
            raise QuantizeError(f"{dst} already exists (--force overwrites it)")
    if not dst.parent.is_dir():
        raise QuantizeError(f"{dst.parent} is not a directory")
    if not os.access(dst.parent, os.W_OK | os.X_OK):
        raise QuantizeError(f"{dst.parent} is not writable")
    return target, info.quantization, info.file_size


def _publish(tmp: Path, dst: Path, *, overwrite: bool) -> None:
    """Rename the finished file to dst; without overwrite, never clobber a file that appeared."""
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # fails if dst exists, atomically
    except FileExistsError:
        raise QuantizeError(f"{dst} appeared while quantizing; not overwritten") from None
    except OSError:  # a filesystem without hard links
        if dst.exists():
            raise QuantizeError(f"{dst} appeared while quantizing; not overwritten") from None
        os.replace(tmp, dst)
        return
    tmp.unlink()


def _follow(job: _Job, on_progress: Progress | None) -> tuple[tuple[Any, ...], int | None]:
    """Relay llama.cpp's progress until it returns: its "done" event, and the tensor count."""
    tensor_count: int | None = None
    while True:
        with contextlib.suppress(queue.Empty):  # the timeout keeps Ctrl-C responsive
            event = job.events.get(timeout=0.25)
            if event[0] == "done":
                return event, tensor_count
            _, index, tensor_count, name = event
            if on_progress is not None:
                on_progress(index, tensor_count, name)


def _check_output(job: _Job, done: tuple[Any, ...], src: Path, tmp: Path, target: str) -> ModelInfo:
    """What llama.cpp wrote to `tmp`, if it succeeded and wrote a `target` GGUF."""
    _, rc, exc = done
    if exc is not None:
        raise QuantizeError(f"llama.cpp could not quantize {src}: {exc}") from exc
    if rc != 0:
        why = job.errors[-1].removeprefix(_FAILED_PREFIX) if job.errors else f"error {rc}"
        raise QuantizeError(f"llama.cpp could not quantize {src}: {why}")
    try:
        out = inspect_gguf(tmp, sha256="")
    except ModelFileError as e:
        raise QuantizeError(f"llama.cpp wrote an unreadable file: {e}") from e
    if out.quantization != target:
        raise QuantizeError(f"llama.cpp wrote {out.quantization}, not {target}")
    return out


def quantize_gguf(
    src: Path,
    dst: Path,
    target: str,
    *,
    threads: int | None = None,
    on_progress: Progress | None = None,
    allow_requantize: bool = False,
    overwrite: bool = False,
) -> QuantizeResult:
    """Write `src` quantized to `target` ("Q4_K_M" or "Q8_0", any case) as `dst`.

    `src` must be an F32, F16 or BF16 GGUF unless `allow_requantize` (quantizing a quantized
    model again loses quality twice). `dst` must not exist unless `overwrite`. `threads` defaults
    to llama.cpp's choice (all hardware threads). `on_progress(index, total, tensor_name)` is
    called on this thread as llama.cpp starts each tensor (index counts from 1). Raises
    QuantizeError for bad input or when llama.cpp fails; `dst` is then untouched.
    """
    import llama_cpp  # here, not at the top: loading llama.cpp's libraries takes a moment

    started = time.monotonic()
    src, dst = Path(src), Path(dst)
    target, source_type, src_bytes = _check_inputs(
        src, dst, target, allow_requantize=allow_requantize, overwrite=overwrite
    )
    if threads is not None and threads < 1:
        raise QuantizeError(f"threads must be at least 1, not {threads}")

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = TARGETS[target]
    params.nthread = threads or 0  # <= 0: std::thread::hardware_concurrency()
    params.allow_requantize = allow_requantize
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.part")
    job = _Job()
    thread = threading.Thread(
        target=_quantize_in_thread,
        args=(llama_cpp, job, src, tmp, params),
        name=f"quantize {src.name}",
        daemon=True,  # it cannot be stopped; it must not keep the process alive either
    )
    try:
        thread.start()
        done, tensor_count = _follow(job, on_progress)
        out = _check_output(job, done, src, tmp, target)
        _publish(tmp, dst, overwrite=overwrite)
    except BaseException:
        if thread.is_alive():
            job.cancelled.set()
            # Removing the file before llama.cpp creates it would be undone by llama.cpp.
            job.settled.wait(_CANCEL_GRACE_S)
        tmp.unlink(missing_ok=True)
        raise
    return QuantizeResult(
        src=src,
        dst=dst,
        source_type=source_type,
        target=target,
        src_bytes=src_bytes,
        dst_bytes=out.file_size,
        seconds=time.monotonic() - started,
        tensor_count=tensor_count,
    )
