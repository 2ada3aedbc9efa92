"""The manifest of a model file: the sha256 of each `CHUNK_SIZE` chunk, computed once per file.

A fetcher checks every chunk against the manifest before it writes it, so one bad peer costs
one chunk, not a whole download; two peers' manifests of one file are compared by their root
(`manifest_root`, the sha256 of the concatenated chunk hashes), one 32-byte value.

Hashing a 40 GB GGUF takes a minute, so a node keeps the manifest in the model cache
(`manifests/`, one small binary file per model path) and trusts it while the file's size and
mtime (nanoseconds) are unchanged — the rule and the two traps of inference/sha256_cache.py: a
file modified within `RACY_WINDOW_S` of hashing is not remembered, and a file that changes while
it is read is read again.

The same pass computes the whole file's sha256, so a manifest is only ever served for the
content the node's signed record names (the service compares the two). Folding it into the
node's first sha256 (inference/sha256_cache.py) would save one read of the file, from the page
cache right after that hash, and cost every node the chunk hashing whether it shares or not;
with the chunk hashes on a second thread the manifest takes about as long as the sha256 alone
(docs/benchmarks.md, "Model sharing"), so the sha256 cache stays as it is.

Blocking; call it from a worker thread inside trio.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from inference.sha256_cache import RACY_WINDOW_S, FileChangedWhileHashing
from p2p.protocol.share_wire import CHUNK_SIZE, HASH_LEN, MANIFEST_PAGE, chunk_count, chunk_digest

MANIFEST_DIRNAME = "manifests"
MAX_ENTRIES = 256  # manifests remembered; far more models than a node serves
_MAGIC = b"gpunet-manifest\n"
_FORMAT = 1
_ATTEMPTS = 3
_MAX_HEADER = 8192
_AHEAD = 8  # chunks read ahead of the chunk-hashing thread (4 MiB)

Progress = Callable[[int, int], None]  # (bytes hashed so far, file size)


def manifest_root(hashes: Iterable[bytes] | bytes) -> bytes:
    """The sha256 of the chunk hashes in order: equal roots, equal manifests."""
    joined = hashes if isinstance(hashes, bytes) else b"".join(hashes)
    return hashlib.sha256(joined).digest()


@attrs.frozen
class Manifest:
    """A file's *size*, its whole *sha256* (hex) and its chunk hashes, concatenated (32 bytes
    each: one bytes object, not a tuple, so a 1 TB file's 2 M hashes cost 64 MB, not 200)."""

    sha256: str
    size: int
    hashes: bytes = attrs.field(repr=False)

    @hashes.validator
    def _check(self, _attribute: Any, value: bytes) -> None:
        if len(value) != chunk_count(self.size) * HASH_LEN:
            raise ValueError("manifest hashes do not match the file size")

    @property
    def total_chunks(self) -> int:
        return chunk_count(self.size)

    @property
    def root(self) -> bytes:
        return manifest_root(self.hashes)

    def chunk_hash(self, index: int) -> bytes:
        return self.hashes[index * HASH_LEN : (index + 1) * HASH_LEN]

    def page(self, first: int) -> tuple[bytes, ...]:
        """The hashes of chunks *first* .. *first* + `MANIFEST_PAGE` - 1 (fewer at the end)."""
        end = min(first + MANIFEST_PAGE, self.total_chunks)
        return tuple(self.chunk_hash(i) for i in range(first, end))


def compute_manifest(path: Path, progress: Progress | None = None) -> Manifest:
    """Read *path* once: every chunk's sha256 and the whole file's. `progress(done, total)` is
    called every 128 chunks (64 MiB) and once at the end.

    The chunk hashes are computed on a second thread while this one feeds the whole file's
    digest (hashlib releases the GIL), so on two free cores the manifest costs about what the
    sha256 alone does; at most `_AHEAD` chunks wait for that thread, bounding the memory."""
    whole = hashlib.sha256()
    hashes = bytearray()
    pending: deque[Future[bytes]] = deque()
    done = 0
    with open(path, "rb", buffering=0) as f, ThreadPoolExecutor(1, "manifest") as pool:
        size = os.fstat(f.fileno()).st_size
        while done < size:
            piece = _read_chunk(f)
            if not piece:
                break  # the file shrank while read: the size check below raises
            pending.append(pool.submit(chunk_digest, piece))
            whole.update(piece)
            done += len(piece)
            while len(pending) > _AHEAD:
                hashes += pending.popleft().result()
            if progress is not None and (done // CHUNK_SIZE) % 128 == 0:
                progress(done, size)
        while pending:
            hashes += pending.popleft().result()
    if progress is not None:
        progress(done, size)
    if done != size:
        raise FileChangedWhileHashing(f"{path} changed size while it was hashed")
    return Manifest(whole.hexdigest(), size, bytes(hashes))


def _read_chunk(f: BinaryIO) -> bytes:
    """The next `CHUNK_SIZE` bytes of *f* (short only at the end of the file)."""
    parts = []
    want = CHUNK_SIZE
    while want and (part := f.read(want)):
        parts.append(part)
        want -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ManifestCache:
    """Manifests remembered in `directory/manifests/`:

        cache = ManifestCache(model_cache_dir())
        manifest = cache.manifest(path)

    An unreadable, truncated or tampered entry (its hashes are checked against the root in its
    header) counts as missing; a read-only cache still answers, by computing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory) / MANIFEST_DIRNAME
        self.computed = 0  # manifests actually hashed by this object (for tests and logs)

    def entry_path(self, path: Path) -> Path:
        name = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
        return self.directory / f"{name}.manifest"

    def lookup(self, path: Path) -> Manifest | None:
        """The remembered manifest of *path*, if its size and mtime still match; else None."""
        path = Path(path).resolve()
        try:
            st = path.stat()
            raw = self.entry_path(path).read_bytes()
        except OSError:
            return None
        return _decode(raw, str(path), _key(st))

    def manifest(self, path: Path, progress: Progress | None = None) -> Manifest:
        """The file's manifest: remembered, or computed (and remembered when it is safe to)."""
        path = Path(path).resolve()
        cached = self.lookup(path)
        if cached is not None:
            return cached
        for _ in range(_ATTEMPTS):
            before = path.stat()
            try:
                manifest = compute_manifest(path, progress)
            except FileChangedWhileHashing:
                continue
            self.computed += 1
            after = path.stat()
            if _key(before) == _key(after):
                break
        else:
            raise FileChangedWhileHashing(f"{path} kept changing while it was hashed")
        if time.time_ns() - after.st_mtime_ns >= RACY_WINDOW_S * 1e9:
            with contextlib.suppress(OSError):
                self._store(path, manifest, _key(after))
        return manifest

    def remember(self, path: Path, manifest: Manifest) -> None:
        """Keep *manifest* as *path*'s without hashing the file: for a file whose every chunk
        and whole sha256 were just checked (a finished pull). The caller vouches that the file
        is whole and will not be written again; the size must match. Not stored when the cache
        cannot be written (the manifest is then computed when it is needed)."""
        path = Path(path).resolve()
        st = path.stat()
        if st.st_size != manifest.size:
            raise ValueError(f"{path} has {st.st_size} bytes, its manifest says {manifest.size}")
        with contextlib.suppress(OSError):
            self._store(path, manifest, _key(st))

    def _store(self, path: Path, manifest: Manifest, key: dict[str, int]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.entry_path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(_encode(str(path), key, manifest))
        os.replace(tmp, target)  # whole or not at all; two writers write the same bytes
        self._prune(keep=target)

    def _prune(self, keep: Path) -> None:
        """Drop entries beyond `MAX_ENTRIES`, the least recently written first."""
        entries = sorted(self.directory.glob("*.manifest"), key=_mtime)
        for old in entries[: max(0, len(entries) - MAX_ENTRIES)]:
            if old != keep:
                with contextlib.suppress(OSError):
                    old.unlink()


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _encode(path: str, key: dict[str, int], manifest: Manifest) -> bytes:
    header = {
        "format": _FORMAT,
        "path": path,
        **key,
        "sha256": manifest.sha256,
        "chunk_size": CHUNK_SIZE,
        "root": manifest.root.hex(),
    }
    return _MAGIC + json.dumps(header).encode() + b"\n" + manifest.hashes


def _decode(raw: bytes, path: str, key: dict[str, int]) -> Manifest | None:
    if not raw.startswith(_MAGIC):
        return None
    end = raw.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    if end < 0:
        return None
    try:
        header = json.loads(raw[len(_MAGIC) : end])
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        return None
    if header.get("path") != path or header.get("chunk_size") != CHUNK_SIZE:
        return None
    if {k: header.get(k) for k in ("size", "mtime_ns")} != key:
        return None
    sha256, root, hashes = header.get("sha256"), header.get("root"), raw[end + 1 :]
    if not isinstance(sha256, str) or len(sha256) != 64 or not isinstance(root, str):
        return None
    if len(hashes) != chunk_count(key["size"]) * HASH_LEN or manifest_root(hashes).hex() != root:
        return None
    return Manifest(sha256, key["size"], hashes)
