"""What hardware this node can offer: NVIDIA GPUs through NVML, and the CPU.

Most machines that run a node have no NVIDIA driver; there `probe_gpus()` is an ordinary empty
answer, never an error. NVML is initialised for one probe and shut down again, rather than held
open, because probes are rare (start-up and the occasional capability refresh) and a held handle
would outlive a driver reload.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import attrs


@attrs.frozen
class GpuInfo:
    index: int
    name: str
    vram_total: int  # bytes
    vram_free: int  # bytes
    compute_capability: str  # "9.0"
    driver_version: str
    cuda_version: str  # the newest CUDA the driver supports, "12.4"
    utilization_pct: int


def _text(value: Any) -> str:
    # Old nvidia-ml-py releases return bytes, newer ones str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _or_default(default: Any, fn: Any, *args: Any) -> Any:
    """One NVML query that may be unsupported on this card or driver (common on vGPUs)."""
    try:
        return fn(*args)
    except Exception:
        return default


def probe_gpus(nvml: ModuleType | Any | None = None) -> list[GpuInfo]:
    """List NVIDIA GPUs; [] when there is no driver, no NVML library, or NVML fails.

    `nvml` is the `pynvml` module (from nvidia-ml-py) unless a test passes a stand-in.
    """
    if nvml is None:
        try:
            import pynvml as nvml_module
        except ImportError:
            return []
        nvml = nvml_module
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, _NoPermission, ...
        return []
    try:
        driver = _text(_or_default("", nvml.nvmlSystemGetDriverVersion))
        cuda_int = _or_default(0, nvml.nvmlSystemGetCudaDriverVersion)
        cuda = f"{cuda_int // 1000}.{cuda_int % 1000 // 10}" if cuda_int else ""
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = _or_default((0, 0), nvml.nvmlDeviceGetCudaComputeCapability, handle)
            utilization = _or_default(None, nvml.nvmlDeviceGetUtilizationRates, handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    vram_total=int(memory.total),
                    vram_free=int(memory.free),
                    compute_capability=f"{major}.{minor}",
                    driver_version=driver,
                    cuda_version=cuda,
                    utilization_pct=int(utilization.gpu) if utilization is not None else 0,
                )
            )
        return gpus
    except Exception:
        return []
    finally:
        _or_default(None, nvml.nvmlShutdown)


def supports_gpu_offload() -> bool:
    """Whether the installed llama.cpp build can put layers on a GPU (False on CPU builds)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_summary() -> dict[str, object]:
    """Cores, RAM and llama.cpp's own report of the CPU features it was built to use."""
    try:
        import llama_cpp

        system_info = _text(llama_cpp.llama_print_system_info()).strip()
    except ImportError:
        system_info = ""
    return {"cores": os.cpu_count() or 1, "ram_bytes": _ram_bytes(), "system_info": system_info}
