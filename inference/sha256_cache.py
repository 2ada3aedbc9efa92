"""sha256 of model files, computed once and remembered by (path, size, mtime_ns).

A model is identified on the network by its sha256, and hashing a 40 GB GGUF takes minutes, so a
node must not hash it at every start. The answer is kept in one small JSON file in the model
cache (`sha256-cache.json`), keyed by the file's resolved path and trusted while its size and
modification time (in nanoseconds) are unchanged — the test `make`, rsync and git use.

Two traps handled here:
- A file written in the same clock tick as it was hashed could change again without its mtime
  changing ("racy git"); a file modified less than RACY_WINDOW_S before hashing is hashed but
  not remembered.
- A file that changes while being hashed gives a hash of neither version; the size and mtime are
  compared before and after, and the hash is retried.

Several nodes of one user share the cache, so updates are read-merge-written under an exclusive
lock and published by an atomic rename; an unreadable or corrupt cache file counts as empty.
Entries for files that no longer exist are dropped when the cache is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inference.model_cache import model_cache_dir

CACHE_FILENAME = "sha256-cache.json"
RACY_WINDOW_S = 2.0
MAX_ENTRIES = 4096  # far more models than a node serves; bounds the file at ~1 MB
_BLOCK = 1 << 20
_PROGRESS_EVERY = 64  # blocks (MiB) between progress calls
_ATTEMPTS = 3
_FORMAT = 1

Progress = Callable[[int, int], None]  # (bytes hashed so far, file size)


class FileChangedWhileHashing(OSError):
    """The file kept changing while it was read."""


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so a multi-GB model never sits in memory.

    `progress(done, total)` is called every 64 MiB and once at the end.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        done = 0
        blocks = 0
        while block := f.read(_BLOCK):
            digest.update(block)
            done += len(block)
            blocks += 1
            if progress is not None and blocks % _PROGRESS_EVERY == 0:
                progress(done, total)
        if progress is not None:
            progress(done, total)
    return digest.hexdigest()


def stderr_progress(label: str, *, min_bytes: int = 1 << 30) -> Progress:
    """A progress callback drawing `label  NN%` on one stderr line, for files ≥ min_bytes."""

    def show(done: int, total: int) -> None:
        if total < min_bytes:
            return
        end = "\n" if done >= total else ""
        print(f"\r{label}  {100 * done // max(total, 1):3d}%", end=end, file=sys.stderr)

    return show


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, even if we crash
        yield


def _key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class Sha256Cache:
    """The sha256 of files, remembered in `directory/sha256-cache.json`.

        cache = Sha256Cache(model_cache_dir())
        digest = cache.sha256(path, progress=stderr_progress(path.name))

    Blocking; call it from a worker thread inside trio.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CACHE_FILENAME
        self.hashed = 0  # files actually read by this object (for tests and logs)

    def lookup(self, path: Path) -> str | None:
        """The remembered sha256 of `path`, if its size and mtime still match; else None."""
        path = Path(path).resolve()
        try:
            st = path.stat()
        except OSError:
            return None
        entry = self._load().get(str(path))
        if isinstance(entry, dict) and {k: entry.get(k) for k in ("size", "mtime_ns")} == _key(st):
            digest = entry.get("sha256")
            if isinstance(digest, str) and len(digest) == 64:
                return digest
        return None

    def sha256(self, path: Path, progress: Progress | None = None) -> str:
        """The file's sha256: remembered, or computed (and remembered when it is safe to)."""
        path = Path(path).resolve()
        cached = self.lookup(path)
        if cached is not None:
            return cached
        for _ in range(_ATTEMPTS):
            before = path.stat()
            digest = sha256_file(path, progress)
            self.hashed += 1
            after = path.stat()
            if _key(before) == _key(after):
                break
        else:
            raise FileChangedWhileHashing(f"{path} kept changing while it was hashed")
        if time.time_ns() - after.st_mtime_ns >= RACY_WINDOW_S * 1e9:
            with contextlib.suppress(OSError):  # a read-only cache still answers
                self._store(path, {"sha256": digest, **_key(after)})
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """Record *digest* for *path*, which the caller has just verified (a pulled model,
        p2p/share/): its next `sha256` is a lookup, even inside the racy window."""
        path = Path(path).resolve()
        with contextlib.suppress(OSError):
            self._store(path, {"sha256": digest, **_key(path.stat())})

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return {}
        files = data.get("files")
        return files if isinstance(files, dict) else {}

    def _store(self, path: Path, entry: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with _locked(self.directory / f"{CACHE_FILENAME}.lock"):
            files = {k: v for k, v in self._load().items() if os.path.exists(k)}
            files.pop(str(path), None)
            files[str(path)] = entry  # newest last: the oldest go first when over the bound
            while len(files) > MAX_ENTRIES:
                del files[next(iter(files))]
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": _FORMAT, "files": files}, indent=0))
            os.replace(tmp, self.path)


def default_sha256_cache() -> Sha256Cache:
    """The cache shared by every node of this user, beside the default model."""
    return Sha256Cache(model_cache_dir())
