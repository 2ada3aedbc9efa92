from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml

from inference.gpu import GpuInfo, cpu_summary, probe_gpus, supports_gpu_offload


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
