"""Model files shared between nodes: the manifest of a GGUF's chunk hashes, and its chunks.

A file is named by its sha256 (the one in the serving node's signed record) and cut into chunks
of exactly `CHUNK_SIZE` bytes (the last one shorter). A fetcher first asks for the manifest
(`FetchManifest` → `ManifestPage`, the sha256 of every chunk, `MANIFEST_PAGE` hashes a page),
then for chunks by index (`FetchChunk` → `Chunk`), several at once and from several peers. Each
chunk is checked against the manifest before it reaches the disk, and the whole file against
its sha256 before it is used (p2p/share/).

One chunk is one message in one session frame: `CHUNK_SIZE` plus the map's few dozen bytes is
well under crypto.secure_session's 1 MiB frame. Like a `Score` or an `Embed`, each request gets
one final answer (the page or the chunk) or an `Error`.

This file imports nothing of wire.py (wire.py imports it for its dispatch); the field reader is
embed_wire's `FieldReader`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

from p2p.protocol.embed_wire import FieldReader

CHUNK_SIZE = 512 * 1024
HASH_LEN = 32
# Hashes per manifest page: 512 KiB of hashes, so a page fits one frame with room to spare; a
# 4 GiB model has 8192 chunks, one page.
MANIFEST_PAGE = 16384
# Files larger than this are not shared (the largest GGUFs people run are ~250 GB).
MAX_FILE_SIZE = 1 << 40
MAX_CHUNKS = -(-MAX_FILE_SIZE // CHUNK_SIZE)


def chunk_count(size: int) -> int:
    """How many chunks a file of *size* bytes has (an empty file has none)."""
    return -(-size // CHUNK_SIZE)


def chunk_length(size: int, index: int) -> int:
    """The exact length of chunk *index* of a file of *size* bytes."""
    return min(CHUNK_SIZE, size - index * CHUNK_SIZE)


def chunk_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sha256_hex(f: FieldReader, key: str) -> str:
    value = f.string(key, 64)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        f.fail(key, f"{key} must be 64 lowercase hex digits")
    return value


@attrs.frozen
class FetchManifest:
    """The chunk hashes of the file *sha256*, from chunk index *first* (a multiple of
    `MANIFEST_PAGE`)."""

    id: int
    sha256: str
    first: int = 0


@attrs.frozen
class ManifestPage:
    """The file's *size* and the hashes of chunks *first* .. *first* + len(hashes) - 1, in order
    (32 bytes each): the whole manifest when it has at most `MANIFEST_PAGE` chunks."""

    id: int
    sha256: str
    size: int
    first: int
    hashes: tuple[bytes, ...]

    @property
    def total_chunks(self) -> int:
        return chunk_count(self.size)


@attrs.frozen
class FetchChunk:
    id: int
    sha256: str
    index: int


@attrs.frozen
class Chunk:
    id: int
    sha256: str
    index: int
    data: bytes


def fetch_manifest_body(msg: FetchManifest) -> dict[str, Any]:
    return {"id": msg.id, "sha256": msg.sha256, "first": msg.first}


def manifest_page_body(msg: ManifestPage) -> dict[str, Any]:
    return {
        "id": msg.id,
        "sha256": msg.sha256,
        "size": msg.size,
        "first": msg.first,
        "hashes": b"".join(msg.hashes),
    }


def fetch_chunk_body(msg: FetchChunk) -> dict[str, Any]:
    return {"id": msg.id, "sha256": msg.sha256, "index": msg.index}


def chunk_body(msg: Chunk) -> dict[str, Any]:
    return {"id": msg.id, "sha256": msg.sha256, "index": msg.index, "data": msg.data}


def decode_fetch_manifest(f: FieldReader, rid: int) -> FetchManifest:
    first = f.integer("first", 0, MAX_CHUNKS, 0)
    if first % MANIFEST_PAGE:
        f.fail("first", f"first must be a multiple of {MANIFEST_PAGE}")
    return FetchManifest(rid, _sha256_hex(f, "sha256"), first)


def decode_manifest_page(f: FieldReader, rid: int) -> ManifestPage:
    """A page as a hostile peer may send it: the size bounded, the page's hash count exactly
    what *size* and *first* imply."""
    sha256 = _sha256_hex(f, "sha256")
    size = f.integer("size", 1, MAX_FILE_SIZE)
    total = chunk_count(size)
    first = f.integer("first", 0, MAX_CHUNKS)
    if first % MANIFEST_PAGE or first >= total:
        f.fail("first", "first is not a page of this file")
    raw = f.body.get("hashes")
    expected = min(MANIFEST_PAGE, total - first)
    if not isinstance(raw, bytes) or len(raw) != expected * HASH_LEN:
        f.fail("hashes", f"hashes must be {expected} x {HASH_LEN} bytes")
    hashes = tuple(raw[i : i + HASH_LEN] for i in range(0, len(raw), HASH_LEN))
    return ManifestPage(rid, sha256, size, first, hashes)


def decode_fetch_chunk(f: FieldReader, rid: int) -> FetchChunk:
    return FetchChunk(rid, _sha256_hex(f, "sha256"), f.integer("index", 0, MAX_CHUNKS))


def decode_chunk(f: FieldReader, rid: int) -> Chunk:
    """A chunk's data is bounded here by `CHUNK_SIZE`; its exact length and hash are the
    fetcher's to check (it knows the file's size and manifest)."""
    data = f.body.get("data")
    if not isinstance(data, bytes) or not 0 < len(data) <= CHUNK_SIZE:
        f.fail("data", f"data must be 1..{CHUNK_SIZE} bytes")
    return Chunk(rid, _sha256_hex(f, "sha256"), f.integer("index", 0, MAX_CHUNKS), data)
