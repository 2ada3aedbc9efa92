"""The software version published in capability records, and `gpunet --version`'s lines."""

from importlib.metadata import PackageNotFoundError, version

try:
    SOFTWARE_VERSION = f"gpunet/{version('gpunet')}"
except PackageNotFoundError:  # running from a checkout without installing
    SOFTWARE_VERSION = "gpunet/0.0.0+src"


def version_lines() -> list[str]:
    """gpunet's version, the llama.cpp build and its system info (the CPU features and GPU
    backends compiled in), read from the library without loading a model."""
    lines = [SOFTWARE_VERSION.replace("/", " ", 1)]
    try:
        import llama_cpp
    except ImportError:
        return [*lines, "llama.cpp: not installed (pip install llama-cpp-python)"]
    from inference.gpu import llama_build_id

    info = llama_cpp.llama_print_system_info()
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    return [*lines, f"llama.cpp: {llama_build_id()}", f"llama.cpp system info: {text.strip()}"]
