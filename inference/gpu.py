"""What hardware this node can offer: NVIDIA GPUs through NVML, and the CPU.

Most machines that run a node have no NVIDIA driver; there `probe_gpus()` is an ordinary empty
answer, never an error. NVML is initialised for one probe and shut down again, rather than held
open, because probes are rare (start-up and the occasional capability refresh) and a held handle
would outlive a driver reload.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
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


# --- build and hardware class ------------------------------------------------------------------
#
# Greedy decoding gives the same text on the same llama.cpp build and the same kind of hardware;
# a different backend, card or SIMD path rounds differently and may pick another token. The node
# publishes both facts so that a client continuing a broken stream can prefer a node of the same
# build and class (p2p/client/failover.py). Everything here is short, printable and
# bounded: it goes into a signed record of at most 7 KiB.

MAX_CPU_FLAGS = 32  # llama.cpp reports ~20 CPU features today
MAX_BUILD = 64
MAX_HARDWARE_CLASS = 128
_FLAG_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,23}$")
_BACKEND_RE = re.compile(r"[^a-z0-9_-]")
MAX_BACKENDS = 8
# Build switches the CPU section reports next to the instruction sets: not SIMD.
_NOT_SIMD = frozenset(
    {"LLAMAFILE", "OPENMP", "REPACK", "AARCH64_REPACK", "KLEIDIAI", "ACCELERATE", "BLAS", "CPU_HBM"}
)
# The SIMD level that names a CPU hardware class, most capable first, per architecture family.
_SIMD_LEVELS = ("AVX512", "AVX2", "AVX", "SSE3", "SVE", "NEON", "VSX", "VXE", "RISCV_V")


def _system_info_entries(text: str) -> list[tuple[str, str, str]]:
    """(backend, feature, value) for each `NAME = value` of llama.cpp's system info.

    Since late 2024 the text is `CPU : SSE3 = 1 | AVX = 1 | ... | CUDA : ARCHS = 890 | ...`, one
    section per registered backend; older builds printed the CPU features with no section name
    (backend ""). Anything that does not parse is skipped.
    """
    entries = []
    backend = ""
    for part in re.split(r"[|\n]", text):
        head, eq, value = part.partition("=")
        if ":" in head:
            section, _, head = head.partition(":")
            backend = section.strip()
        if eq:
            entries.append((backend, head.strip(), value.strip()))
    return entries


def parse_cpu_flags(system_info: str) -> tuple[str, ...]:
    """The CPU features llama.cpp was built to use (`AVX2 = 1`), sorted, at most 32.

    Only the CPU section counts (a CUDA section's `USE_GRAPHS = 1` is not a CPU flag), and build
    switches such as OPENMP or LLAMAFILE are left out.
    """
    flags = {
        name
        for backend, name, value in _system_info_entries(system_info)
        if backend.upper() in ("", "CPU")
        and value == "1"
        and _FLAG_RE.fullmatch(name)
        and name not in _NOT_SIMD
    }
    return tuple(sorted(flags)[:MAX_CPU_FLAGS])


def _backend_names_from_system_info(system_info: str) -> list[str]:
    """Backends named as sections of the system info (only those that report features)."""
    return list(dict.fromkeys(b for b, _, _ in _system_info_entries(system_info) if b))


def format_build(version: str, backends: Sequence[str]) -> str:
    """`llama-cpp-python 0.3.36 cuda+cpu`: the package version (it pins llama.cpp's commit) and
    the compute backends compiled in, lower case, in llama.cpp's registry order (GPUs first)."""
    names = [_BACKEND_RE.sub("", b.lower())[:16] for b in backends]
    names = list(dict.fromkeys(n for n in names if n))[:MAX_BACKENDS] or ["unknown"]
    version = re.sub(r"[^A-Za-z0-9.+_-]", "", version)[:24] or "unknown"
    return f"llama-cpp-python {version} {'+'.join(names)}"[:MAX_BUILD]


def _registered_backends() -> list[str]:
    """llama.cpp's backend registry (CUDA, Metal, Vulkan, CPU, ...), through libggml's C API.

    llama-cpp-python does not bind `ggml_backend_reg_*`, so this opens the same libggml it loaded
    (a new handle on the already loaded library, so the argument types set here stay ours).
    [] when the library or the symbols are missing.
    """
    try:
        import ctypes

        from llama_cpp import _ggml

        lib = ctypes.CDLL(_ggml.libggml._name)
        lib.ggml_backend_reg_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_count.argtypes = []
        lib.ggml_backend_reg_get.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_reg_name.restype = ctypes.c_char_p
        lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        count = min(int(lib.ggml_backend_reg_count()), MAX_BACKENDS)
        names = []
        for i in range(count):
            reg = lib.ggml_backend_reg_get(i)
            name = lib.ggml_backend_reg_name(reg) if reg else None
            if name:
                names.append(_text(name))
        return names
    except Exception:
        return []


def llama_build_id() -> str:
    """This node's llama.cpp build, e.g. `llama-cpp-python 0.3.36 cpu`; "" without llama_cpp.

    The backends come from llama.cpp's registry, else from the sections of its system info, else
    from `llama_supports_gpu_offload` alone ("gpu" or "cpu").
    """
    try:
        import llama_cpp
    except ImportError:
        return ""
    backends = _registered_backends()
    if not backends:
        backends = _backend_names_from_system_info(_text(llama_cpp.llama_print_system_info()))
    if not backends:
        backends = ["gpu" if supports_gpu_offload() else "cpu"]
    return format_build(str(getattr(llama_cpp, "__version__", "")), backends)


def simd_level(flags: Sequence[str]) -> str:
    """The one SIMD level that matters most for speed and rounding: `avx512`, `avx2`, `neon`..."""
    present = set(flags)
    for level in _SIMD_LEVELS:
        if level in present or any(f.startswith(level + "_") for f in present):
            return level.lower()
    return "generic"


def hardware_class(
    gpus: Sequence[GpuInfo], *, offload: bool, cpu_flags: Sequence[str], machine: str
) -> str:
    """What computes the tokens: `NVIDIA H100 80GB HBM3 sm90` (`2x ...` for two alike, ` + `
    between different cards) when models run on GPUs, else `cpu x86_64 avx2`."""
    if offload and gpus:
        kinds: dict[str, int] = {}
        for g in gpus:
            sm = g.compute_capability.replace(".", "")
            kind = f"{g.name.strip()} sm{sm}" if sm.isdigit() and int(sm) else g.name.strip()
            kinds[kind] = kinds.get(kind, 0) + 1
        text = " + ".join(f"{n}x {k}" if n > 1 else k for k, n in kinds.items())
    else:
        arch = re.sub(r"[^a-z0-9_]", "", machine.lower())[:16] or "unknown"
        text = f"cpu {arch} {simd_level(cpu_flags)}"
    return "".join(c for c in text if c.isprintable())[:MAX_HARDWARE_CLASS]


@attrs.frozen
class HostFacts:
    """What the node learns once at start about its CPU and its llama.cpp build."""

    cores: int
    ram_bytes: int
    cpu_flags: tuple[str, ...]
    gpu_offload: bool  # this llama.cpp build can offload layers to a GPU
    build: str
    machine: str  # platform.machine(): x86_64, aarch64, arm64


def probe_host() -> HostFacts:
    summary = cpu_summary()
    cores, ram = summary.get("cores"), summary.get("ram_bytes")
    return HostFacts(
        cores=cores if isinstance(cores, int) else 0,
        ram_bytes=ram if isinstance(ram, int) else 0,
        cpu_flags=parse_cpu_flags(str(summary.get("system_info", ""))),
        gpu_offload=supports_gpu_offload(),
        build=llama_build_id(),
        machine=platform.machine(),
    )
