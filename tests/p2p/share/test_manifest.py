"""The manifest of a model file: chunk hashes and the whole sha256 in one pass, pages of it as
the wire carries them, and the on-disk cache keyed by (path, size, mtime_ns) that spares a node
re-hashing its models at every start."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from p2p.protocol import wire
from p2p.protocol.share_wire import CHUNK_SIZE, MANIFEST_PAGE
from p2p.share.manifest import Manifest, ManifestCache, compute_manifest, manifest_root


def write_old(path: Path, data: bytes) -> Path:
    """*data* at *path* with an mtime an hour back (outside the racy window)."""
    path.write_bytes(data)
    past = time.time() - 3600
    os.utime(path, (past, past))
    return path


def test_manifest_is_every_chunks_sha256_and_the_whole_files(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 12345)
    manifest = compute_manifest(write_old(tmp_path / "m.gguf", data))
    expected = [
        hashlib.sha256(data[i : i + CHUNK_SIZE]).digest() for i in (0, CHUNK_SIZE, 2 * CHUNK_SIZE)
    ]
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.size == len(data) and manifest.total_chunks == 3
    assert manifest.page(0) == tuple(expected)
    assert manifest.root == manifest_root(expected) == hashlib.sha256(b"".join(expected)).digest()
    assert manifest_root(manifest.hashes) == manifest.root
    # a file of whole chunks has no short one; a byte more is another chunk, and another root
    whole = compute_manifest(write_old(tmp_path / "w.gguf", data[: 2 * CHUNK_SIZE]))
    assert whole.total_chunks == 2 and whole.page(0) == tuple(expected[:2])
    longer = compute_manifest(write_old(tmp_path / "n.gguf", data[: 2 * CHUNK_SIZE] + b"x"))
    assert longer.total_chunks == 3 and longer.root != whole.root


def test_pages_split_a_large_manifest_and_travel_the_wire(tmp_path: Path) -> None:
    total = MANIFEST_PAGE + 3
    hashes = os.urandom(32 * total)
    manifest = Manifest("ab" * 32, (total - 1) * CHUNK_SIZE + 7, hashes)
    first, second = manifest.page(0), manifest.page(MANIFEST_PAGE)
    assert len(first) == MANIFEST_PAGE and len(second) == 3
    assert b"".join(first + second) == hashes
    page = wire.ManifestPage(5, manifest.sha256, manifest.size, MANIFEST_PAGE, second)
    assert wire.decode(wire.encode(page)) == page
    with pytest.raises(ValueError):
        Manifest("ab" * 32, 10 * CHUNK_SIZE, hashes)  # hashes that do not fit the size


def test_the_cache_spares_rehashing_until_the_file_changes(tmp_path: Path) -> None:
    path = write_old(tmp_path / "m.gguf", os.urandom(CHUNK_SIZE + 1))
    cache = ManifestCache(tmp_path / "cache")
    first = cache.manifest(path)
    assert cache.computed == 1
    again = ManifestCache(tmp_path / "cache")  # another process, the next start
    assert again.manifest(path) == first and again.computed == 0
    # a change of content (and so of size or mtime) is hashed afresh
    write_old(path, os.urandom(CHUNK_SIZE + 2))
    changed = again.manifest(path)
    assert again.computed == 1 and changed.root != first.root
    assert changed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_written_just_now_is_hashed_but_not_remembered(tmp_path: Path) -> None:
    path = tmp_path / "fresh.gguf"
    path.write_bytes(os.urandom(1000))  # mtime now: it may change again within the same tick
    cache = ManifestCache(tmp_path / "cache")
    cache.manifest(path)
    assert cache.lookup(path) is None
    cache.manifest(path)
    assert cache.computed == 2


def test_a_damaged_cache_entry_counts_as_missing(tmp_path: Path) -> None:
    path = write_old(tmp_path / "m.gguf", os.urandom(3 * CHUNK_SIZE))
    cache = ManifestCache(tmp_path / "cache")
    good = cache.manifest(path)
    entry = cache.entry_path(path)
    raw = bytearray(entry.read_bytes())
    raw[-1] ^= 1  # one bit of one chunk hash: the root in the header no longer matches
    entry.write_bytes(bytes(raw))
    assert cache.lookup(path) is None
    assert cache.manifest(path) == good and cache.computed == 2
    entry.write_bytes(b"garbage")
    assert cache.lookup(path) is None
    entry.write_bytes(raw[: len(raw) // 2])  # truncated
    assert cache.lookup(path) is None
