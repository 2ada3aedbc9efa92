from __future__ import annotations

import ctypes
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import llama_cpp
import pytest

from inference.model_file import inspect_gguf
from inference.quantize import QuantizeError, quantize_gguf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory: pytest.TempPathFactory, make_tiny_gguf: Callable[..., Path]) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("f16") / "tiny-f16.gguf", quantize="F16")


def tensor_names(path: Path) -> list[str]:
    return [t.name for t in gguf.GGUFReader(path).tensors]


def generate(path: Path, n_tokens: int) -> int:
    """Load the model with llama.cpp and decode greedily; the number of tokens it produced."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, verbose=False)
    try:
        out = llm("hello world", max_tokens=n_tokens, temperature=0.0)
        assert isinstance(out, dict)
        assert out["choices"][0]["text"]
        return int(out["usage"]["completion_tokens"])
    finally:
        llm.close()


def log_callback_address() -> int | None:
    callback, data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(data))
    return ctypes.cast(callback, ctypes.c_void_p).value


@pytest.mark.parametrize(
    ("source", "target"), [("F32", "Q8_0"), ("F32", "Q4_K_M"), ("F16", "q4_k_m")]
)
def test_quantizes_loads_and_generates(
    tiny_gguf: Path, tiny_f16: Path, tmp_path: Path, source: str, target: str
) -> None:
    src = tiny_gguf if source == "F32" else tiny_f16
    dst = tmp_path / "out.gguf"
    calls: list[tuple[int, int, str]] = []
    logger_before = log_callback_address()

    result = quantize_gguf(src, dst, target, threads=2, on_progress=lambda *a: calls.append(a))
    print(f"{source} -> {target}: {result.seconds:.3f}s, {result.src_bytes} -> {result.dst_bytes}")

    assert inspect_gguf(dst, sha256="").quantization == target.upper()
    assert result.target == target.upper() and result.source_type == source
    assert result.dst_bytes == dst.stat().st_size < src.stat().st_size == result.src_bytes
    assert result.ratio > 1.5
    names = tensor_names(src)
    assert result.tensor_count == len(names) == 21
    assert [c[0] for c in calls] == list(range(1, len(names) + 1))
    assert {c[1] for c in calls} == {len(names)}
    assert sorted(c[2] for c in calls) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]  # no temporary left
    assert log_callback_address() == logger_before  # llama.cpp's logging put back
    assert generate(dst, 8) == 8


def test_overwrite_replaces_existing_dst(tiny_gguf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"old")
    quantize_gguf(tiny_gguf, dst, "Q8_0", overwrite=True)
    assert inspect_gguf(dst, sha256="").quantization == "Q8_0"


def test_allow_requantize(make_tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    src = make_tiny_gguf(tmp_path / "q4_0.gguf", quantize="Q4_0")
    dst = tmp_path / "out.gguf"
    result = quantize_gguf(src, dst, "Q4_K_M", allow_requantize=True)
    assert result.source_type == "Q4_0"
    assert inspect_gguf(dst, sha256="").quantization == "Q4_K_M"


def _assert_rejected(
    tmp_path: Path, match: str, src: Path, dst: Path, target: str = "Q8_0", **kw: object
) -> None:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(QuantizeError, match=match) as info:
        quantize_gguf(src, dst, target, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert sorted(tmp_path.rglob("*")) == before  # no dst, no temporary file


def test_missing_source(tmp_path: Path) -> None:
    _assert_rejected(tmp_path, "no such file", tmp_path / "nope.gguf", tmp_path / "out.gguf")


def test_source_not_gguf(tmp_path: Path) -> None:
    src = tmp_path / "notes.gguf"
    src.write_bytes(b"these are not the weights you are looking for\n" * 4)
    _assert_rejected(tmp_path, "is not a GGUF model file", src, tmp_path / "out.gguf")


def test_already_quantized_source(make_tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    src = make_tiny_gguf(tmp_path / "q8.gguf", quantize="Q8_0")
    _assert_rejected(tmp_path, r"already quantized \(Q8_0\)", src, tmp_path / "out.gguf")


def test_unknown_target(tiny_gguf: Path, tmp_path: Path) -> None:
    _assert_rejected(
        tmp_path, "unknown target type 'Q5_K_M'", tiny_gguf, tmp_path / "o.gguf", "q5_k_m"
    )


def test_existing_dst_without_overwrite(tiny_gguf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"keep me")
    _assert_rejected(tmp_path, "already exists", tiny_gguf, dst)
    assert dst.read_bytes() == b"keep me"


def test_dst_is_src(make_tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    src = make_tiny_gguf(tmp_path / "m.gguf")
    _assert_rejected(tmp_path, "is the input file", src, src, overwrite=True)


def test_dst_directory_missing(tiny_gguf: Path, tmp_path: Path) -> None:
    _assert_rejected(tmp_path, "is not a directory", tiny_gguf, tmp_path / "no" / "out.gguf")


def test_bad_threads(tiny_gguf: Path, tmp_path: Path) -> None:
    _assert_rejected(tmp_path, "threads must be at least 1", tiny_gguf, tmp_path / "o", threads=0)


def test_llama_cpp_failure_leaves_nothing(
    make_tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    """A file whose header claims F16 but holds Q4_0 tensors passes our check; llama.cpp opens
    the output, then refuses to requantize, and would leave a stub file behind."""
    src = make_tiny_gguf(tmp_path / "liar.gguf", quantize="Q4_0")
    data = bytearray(src.read_bytes())
    at = data.index(b"general.file_type") + len(b"general.file_type")
    assert struct.unpack_from("<II", data, at) == (gguf.GGUFValueType.UINT32, 2)  # Q4_0
    struct.pack_into("<I", data, at + 4, 1)  # MOSTLY_F16
    src.write_bytes(bytes(data))
    assert inspect_gguf(src, sha256="").quantization == "F16"
    _assert_rejected(
        tmp_path, "llama.cpp could not quantize .*requantizing from type q4_0", src,
        tmp_path / "out.gguf",
    )  # fmt: skip


def test_exception_in_progress_callback_cleans_up(tiny_gguf: Path, tmp_path: Path) -> None:
    """What Ctrl-C does, raised from the progress callback: the C call runs on, the file goes."""

    class Stop(Exception):
        pass

    def stop(index: int, total: int, name: str) -> None:
        raise Stop

    dst = tmp_path / "out.gguf"
    with pytest.raises(Stop):
        quantize_gguf(tiny_gguf, dst, "Q8_0", on_progress=stop)
    assert list(tmp_path.iterdir()) == []
    # The abandoned quantization finishes in its thread; the next one waits for it, then works.
    quantize_gguf(tiny_gguf, dst, "Q8_0")
    assert inspect_gguf(dst, sha256="").quantization == "Q8_0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "tools/quantize.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli(tiny_gguf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "tiny-q4_k_m.gguf"
    done = run_cli(tiny_gguf, dst, "--type", "q4_k_m", "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert f"{dst}: F32 -> Q4_K_M" in done.stdout and "21 tensors" in done.stdout
    assert "[21/21] " in done.stderr  # progress, sampled since stderr is not a terminal
    assert inspect_gguf(dst, sha256="").quantization == "Q4_K_M"

    again = run_cli(tiny_gguf, dst, "--type", "Q4_K_M")
    assert again.returncode == 2
    assert again.stdout == ""
    assert again.stderr == f"quantize.py: {dst} already exists (--force overwrites it)\n"

    forced = run_cli(tiny_gguf, dst, "--type", "Q8_0", "--force", "--json", "--sha256", "-q")
    assert forced.returncode == 0, forced.stderr
    assert forced.stderr == ""
    out = json.loads(forced.stdout)
    assert out["target"] == "Q8_0" and out["tensor_count"] == 21
    assert out["dst_bytes"] == dst.stat().st_size
    assert len(out["sha256"]) == 64

    usage = run_cli(tiny_gguf, tmp_path / "x.gguf", "--type", "Q5_0")
    assert usage.returncode == 2
    assert usage.stderr.count("\n") == 1 and "invalid choice" in usage.stderr
    assert "Traceback" not in usage.stderr + again.stderr
