from __future__ import annotations

import ast
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from inference.model_file import inspect_gguf
from inference.sha256_cache import (
    CACHE_FILENAME,
    FileChangedWhileHashing,
    Sha256Cache,
    default_sha256_cache,
    sha256_file,
)

HOUR_NS = 3600 * 10**9


def settled(path: Path, content: bytes, age_ns: int = HOUR_NS) -> Path:
    """Write a file and date it in the past, outside the racy window."""
    path.write_bytes(content)
    past = time.time_ns() - age_ns
    os.utime(path, ns=(past, past))
    return path


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_hashes_once_then_remembers_across_objects(tmp_path: Path) -> None:
    f = settled(tmp_path / "m.gguf", b"weights" * 1000)
    cache = Sha256Cache(tmp_path / "cache")
    assert cache.sha256(f) == sha(b"weights" * 1000)
    assert cache.sha256(f) == sha(b"weights" * 1000)
    assert cache.hashed == 1
    again = Sha256Cache(tmp_path / "cache")
    assert again.lookup(f) == sha(b"weights" * 1000)
    assert again.sha256(f) == sha(b"weights" * 1000) and again.hashed == 0
    stored = json.loads((tmp_path / "cache" / CACHE_FILENAME).read_text())
    assert stored["files"][str(f.resolve())]["size"] == 7000


def test_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    f = settled(tmp_path / "m.gguf", b"aaaa")
    cache = Sha256Cache(tmp_path)
    assert cache.sha256(f) == sha(b"aaaa")
    settled(f, b"bbbb", age_ns=HOUR_NS // 2)  # same size, newer mtime
    assert cache.lookup(f) is None
    assert cache.sha256(f) == sha(b"bbbb")
    assert cache.hashed == 2


def test_a_just_written_file_is_not_remembered(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"fresh")
    cache = Sha256Cache(tmp_path)
    assert cache.sha256(f) == sha(b"fresh")
    assert cache.lookup(f) is None
    assert not (tmp_path / CACHE_FILENAME).exists()


def test_corrupt_or_foreign_cache_counts_as_empty(tmp_path: Path) -> None:
    f = settled(tmp_path / "m.gguf", b"x")
    for junk in ("{not json", "[1, 2]", json.dumps({"format": 99, "files": {}})):
        (tmp_path / CACHE_FILENAME).write_text(junk)
        cache = Sha256Cache(tmp_path)
        assert cache.sha256(f) == sha(b"x") and cache.hashed == 1
    assert Sha256Cache(tmp_path).lookup(f) == sha(b"x")


def test_entries_of_deleted_files_are_dropped(tmp_path: Path) -> None:
    cache = Sha256Cache(tmp_path / "cache")
    gone = settled(tmp_path / "gone.gguf", b"1")
    cache.sha256(gone)
    gone.unlink()
    cache.sha256(settled(tmp_path / "kept.gguf", b"2"))
    files = json.loads((tmp_path / "cache" / CACHE_FILENAME).read_text())["files"]
    assert list(files) == [str((tmp_path / "kept.gguf").resolve())]


def test_progress_reports_the_end(tmp_path: Path) -> None:
    f = settled(tmp_path / "m.gguf", bytes(3 << 20))
    seen: list[tuple[int, int]] = []
    assert sha256_file(f, lambda done, total: seen.append((done, total))) == sha(bytes(3 << 20))
    assert seen[-1] == (3 << 20, 3 << 20)


def test_a_file_changing_while_hashed_is_hashed_again(tmp_path: Path) -> None:
    f = settled(tmp_path / "m.gguf", b"one")
    calls = 0

    def grow_once(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            settled(f, b"two!", age_ns=HOUR_NS // 2)

    assert Sha256Cache(tmp_path).sha256(f, grow_once) == sha(b"two!")

    def always_grow(done: int, total: int) -> None:
        with open(f, "ab") as out:
            out.write(b".")

    with pytest.raises(FileChangedWhileHashing):
        Sha256Cache(tmp_path / "other").sha256(f, always_grow)


def test_inspect_gguf_uses_the_cache(tmp_path: Path, tiny_gguf: Path) -> None:
    model = tmp_path / "tiny.gguf"
    settled(model, tiny_gguf.read_bytes())
    cache = Sha256Cache(tmp_path / "cache")
    seen: list[int] = []
    first = inspect_gguf(model, hash_cache=cache, progress=lambda d, t: seen.append(d))
    second = inspect_gguf(model, hash_cache=cache, progress=lambda d, t: seen.append(d))
    assert first.sha256 == second.sha256 == sha(model.read_bytes())
    assert cache.hashed == 1
    assert seen == [model.stat().st_size]


def test_the_default_cache_lives_in_the_model_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GPUNET_MODEL_CACHE", str(tmp_path))
    assert default_sha256_cache().path == tmp_path / CACHE_FILENAME


def test_the_cache_does_not_import_the_default_model() -> None:
    """The old circle: sha256_cache → default_model → model_file → sha256_cache."""
    import inference.sha256_cache as module

    tree = ast.parse(Path(module.__file__ or "").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "inference.default_model" not in imported
    assert "inference.model_cache" in imported
