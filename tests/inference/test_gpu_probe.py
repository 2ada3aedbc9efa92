from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml

from inference.gpu import (
    MAX_BUILD,
    MAX_CPU_FLAGS,
    MAX_HARDWARE_CLASS,
    GpuInfo,
    cpu_summary,
    format_build,
    hardware_class,
    llama_build_id,
    parse_cpu_flags,
    probe_gpus,
    probe_host,
    supports_gpu_offload,
)


def test_probe_with_the_real_nvml_never_raises() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        # The normal case on GPU-less machines (NVMLError_LibraryNotFound): no GPUs, no error.
        assert probe_gpus() == []
        return
    pynvml.nvmlShutdown()
    gpus = probe_gpus()
    assert gpus and all(isinstance(gpu, GpuInfo) for gpu in gpus)


class FakeNvml:
    """One 80 GB H100 as NVML would describe it."""

    def __init__(self, *, init_error: Exception | None = None) -> None:
        self.init_error = init_error
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return ("handle", index)

    def nvmlDeviceGetName(self, handle: Any) -> bytes:
        return b"NVIDIA H100 80GB HBM3"  # old nvidia-ml-py returned bytes

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return SimpleNamespace(total=80 * 1024**3, free=79 * 1024**3, used=1024**3)

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")  # as on some vGPUs


def test_probe_reads_one_card_from_a_fake_nvml() -> None:
    nvml = FakeNvml()
    assert probe_gpus(nvml) == [
        GpuInfo(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            vram_total=80 * 1024**3,
            vram_free=79 * 1024**3,
            compute_capability="9.0",
            driver_version="550.54.15",
            cuda_version="12.4",
            utilization_pct=0,
        )
    ]
    assert nvml.shutdown_calls == 1


def test_probe_without_driver_is_empty() -> None:
    nvml = FakeNvml(init_error=pynvml.NVMLError_LibraryNotFound())
    assert probe_gpus(nvml) == []


def test_cpu_summary_and_offload_flag() -> None:
    summary = cpu_summary()
    assert isinstance(summary["cores"], int) and summary["cores"] >= 1
    assert isinstance(summary["ram_bytes"], int) and summary["ram_bytes"] > 0
    assert "CPU" in str(summary["system_info"])
    assert isinstance(supports_gpu_offload(), bool)


# llama-cpp-python 0.3.36 on an x86-64 CPU build, as `llama_print_system_info()` prints it
CPU_BUILD_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | "
    "OPENMP = 1 | REPACK = 1 | "
)
# a CUDA build: its CUDA section comes first and its features are not CPU flags
CUDA_BUILD_INFO = (
    "CUDA : ARCHS = 500,610,700,750,800,860,890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 0 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "AVX512 = 0 | LLAMAFILE = 1 | OPENMP = 1 | "
)
# before backends had sections (2024): the CPU features with no section name
OLD_INFO = "AVX = 1 | AVX_VNNI = 0 | AVX2 = 1 | AVX512 = 0 | NEON = 0 | FMA = 1 | BLAS = 0 | "


def test_cpu_flags_from_a_real_system_info() -> None:
    assert parse_cpu_flags(CPU_BUILD_INFO) == (
        "AVX",
        "AVX2",
        "AVX512",
        "AVX512_BF16",
        "AVX512_VBMI",
        "AVX512_VNNI",
        "BMI2",
        "F16C",
        "FMA",
        "SSE3",
        "SSSE3",
    )
    assert parse_cpu_flags(CUDA_BUILD_INFO) == ("AVX", "AVX2", "F16C", "FMA", "SSE3", "SSSE3")
    assert parse_cpu_flags(OLD_INFO) == ("AVX", "AVX2", "FMA")
    ours = parse_cpu_flags(str(cpu_summary()["system_info"]))
    assert ours == tuple(sorted(ours)) and len(ours) <= MAX_CPU_FLAGS


def test_cpu_flags_from_junk_are_empty_or_bounded() -> None:
    for junk in ("", "garbage", "| = | : = 1 |", "\x00\x1b[31m = 1", "avx2 = 1", "AVX2 = yes"):
        assert parse_cpu_flags(junk) == ()
    many = " | ".join(f"F{i} = 1" for i in range(100))
    flags = parse_cpu_flags(many)
    assert len(flags) == MAX_CPU_FLAGS
    assert parse_cpu_flags("CPU : " + "A" * 200 + " = 1 | AVX = 1") == ("AVX",)


def test_build_id() -> None:
    assert format_build("0.3.36", ["CUDA", "CPU"]) == "llama-cpp-python 0.3.36 cuda+cpu"
    assert format_build("0.3.36", ["Metal", "BLAS", "CPU"]) == (
        "llama-cpp-python 0.3.36 metal+blas+cpu"
    )
    assert format_build("", []) == "llama-cpp-python unknown unknown"
    assert len(format_build("9" * 100, ["x" * 100] * 20)) <= MAX_BUILD
    import llama_cpp

    build = llama_build_id()
    assert build.startswith(f"llama-cpp-python {llama_cpp.__version__} ")
    assert ("cpu" in build.split()[-1].split("+")) or supports_gpu_offload()


def gpu(name: str = "NVIDIA H100 80GB HBM3", cc: str = "9.0", index: int = 0) -> GpuInfo:
    return GpuInfo(index, name, 80 << 30, 79 << 30, cc, "550.54.15", "12.4", 0)


def test_hardware_class() -> None:
    x86 = ("AVX", "AVX2", "FMA", "SSE3")
    assert hardware_class([gpu()], offload=True, cpu_flags=x86, machine="x86_64") == (
        "NVIDIA H100 80GB HBM3 sm90"
    )
    two = [gpu(index=0), gpu(index=1)]
    assert hardware_class(two, offload=True, cpu_flags=x86, machine="x86_64") == (
        "2x NVIDIA H100 80GB HBM3 sm90"
    )
    mixed = [gpu("NVIDIA GeForce RTX 4090", "8.9"), gpu("NVIDIA GeForce RTX 3090", "8.6", 1)]
    assert hardware_class(mixed, offload=True, cpu_flags=x86, machine="x86_64") == (
        "NVIDIA GeForce RTX 4090 sm89 + NVIDIA GeForce RTX 3090 sm86"
    )
    # a GPU the build cannot use (CPU wheel), or no GPU: the CPU's class
    assert hardware_class([gpu()], offload=False, cpu_flags=x86, machine="x86_64") == (
        "cpu x86_64 avx2"
    )
    assert hardware_class([], offload=True, cpu_flags=("AVX512_VNNI",), machine="x86_64") == (
        "cpu x86_64 avx512"
    )
    assert hardware_class([], offload=False, cpu_flags=("NEON",), machine="aarch64") == (
        "cpu aarch64 neon"
    )
    assert hardware_class([], offload=False, cpu_flags=(), machine="") == "cpu unknown generic"
    long = [gpu("\x1b[2J" + "G" * 300, "9.0", i) for i in range(3)]
    text = hardware_class(long, offload=True, cpu_flags=(), machine="x86_64")
    assert len(text) <= MAX_HARDWARE_CLASS and text.isprintable()


def test_probe_host_on_this_machine() -> None:
    host = probe_host()
    assert host.cores >= 1 and host.ram_bytes > 0
    assert host.build == llama_build_id()
    assert host.gpu_offload == supports_gpu_offload()
    assert host.cpu_flags == parse_cpu_flags(str(cpu_summary()["system_info"]))
