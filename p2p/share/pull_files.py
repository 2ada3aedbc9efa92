"""The disk side of a pull: the partial file, its state file, and the move into the model cache.

A pull writes into `<model cache>/partial/<sha256>.part` (sized up front, each verified chunk
written at its offset with os.pwrite) and keeps `<sha256>.state.json` beside it: the file's size
and the chunks verified so far, rewritten atomically every second or so. After Ctrl-C or a crash
the next pull of the same sha256 re-hashes the chunks the state names (`recheck`) and fetches
the rest; a state that names a chunk the file does not hold costs a refetch, never a bad file.

The finished file, once its whole sha256 matched, is linked into the cache as `<name>.gguf`:
os.link fails rather than replace an existing file, so a different file of that name is never
overwritten (the pull takes `<name>-<sha256 prefix>.gguf` then) and no reader ever sees half a
file. Blocking functions: the fetcher runs them in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inference.model_file import model_name_from
from inference.sha256_cache import Sha256Cache, sha256_file
from p2p.errors import GpunetError
from p2p.protocol.share_wire import CHUNK_SIZE, chunk_count, chunk_digest
from p2p.share.fetch_plan import FetchPlan, PlanError

PARTIAL_DIR = "partial"
SYNC_EVERY_CHUNKS = 128  # 64 MiB
_STATE_FORMAT = 1


class PullError(GpunetError):
    """A pull that cannot finish; the message is one line for the user."""


def partial_paths(cache_dir: Path, sha256: str) -> tuple[Path, Path]:
    folder = cache_dir / PARTIAL_DIR
    return folder / f"{sha256}.part", folder / f"{sha256}.state.json"


def file_name(name: str) -> str:
    """The cache file name for a model named *name* (a record's name, already restricted to
    [A-Za-z0-9._+-]): the node that serves it later publishes the same name."""
    return model_name_from(Path(f"{name}.gguf")) + ".gguf"


def disk_error(exc: OSError, where: Path) -> PullError:
    if exc.errno == errno.ENOSPC:
        return PullError(f"disk full while writing {where}; free some space and pull again")
    return PullError(f"cannot write {where}: {exc.strerror or exc}")


class PartFile:
    """The partial file of one pull, open for positioned writes."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        # The whole file's sha256, fed in order by whichever worker thread wrote the chunk that
        # extends the hashed prefix (`advance`): in the thread call that writes a chunk, since a
        # separate hand-off per batch cost as much CPU as the hashing did.
        self.whole = hashlib.sha256()
        self.hashed = 0  # chunks fed to `whole` so far
        self.total = chunk_count(size)
        self._written: set[int] = set()
        self._hash_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when it closes
        except BlockingIOError:
            os.close(self.fd)
            raise PullError(
                f"another pull of this file is under way ({path}); wait for it to finish"
            ) from None
        try:
            if os.fstat(self.fd).st_size != size:
                os.ftruncate(self.fd, size)
        except OSError:
            os.close(self.fd)
            raise

    def check_and_write(self, index: int, data: bytes, expected: bytes, length: int) -> bool:
        """Write *data* at chunk *index* only if it has the manifest's length and hash: a
        corrupted chunk never reaches the disk."""
        if len(data) != length or chunk_digest(data) != expected:
            return False
        view = memoryview(data)
        offset = index * CHUNK_SIZE
        while view:  # pwrite may write less than asked (a signal, a full pipe of a FUSE disk)
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written
        self.mark_written([index])
        return True

    def mark_written(self, indices: Iterable[int]) -> None:
        """Chunks now on disk with their manifest hash (resumed ones too): the in-order hash
        moves on over them."""
        self._written.update(indices)
        self.advance()

    def advance(self) -> None:
        """Feed `whole` with the written chunks that extend its prefix, read back from the
        page cache (what is hashed is what is on disk), fsync every SYNC_EVERY_CHUNKS. One
        thread at a time; a thread that finds another at it leaves the work to it, which checks
        again after letting go, so no written chunk is missed."""
        while self.hashed in self._written:
            if not self._hash_lock.acquire(blocking=False):
                return
            try:
                start = end = self.hashed
                while end in self._written:
                    end += 1
                for first in range(start, end, 16):
                    last = min(end, first + 16)
                    self.hash_into(self.whole, first, last)
                    if last // SYNC_EVERY_CHUNKS > first // SYNC_EVERY_CHUNKS:
                        self.sync()  # flushed as it goes: the last fsync is short
                    self.hashed = last
            finally:
                self._hash_lock.release()

    @property
    def whole_sha256(self) -> str | None:
        """The file's sha256 once every chunk was hashed in order; else None."""
        return self.whole.hexdigest() if self.hashed >= self.total else None

    def recheck(self, plan: FetchPlan, claimed: Iterable[int]) -> set[int]:
        """The chunks of *claimed* whose bytes on disk still have their manifest hash."""
        good = set()
        for index in claimed:
            if not 0 <= index < plan.total:
                continue
            expected, length = plan.expected(index)
            data = os.pread(self.fd, length, index * CHUNK_SIZE)
            if len(data) == length and chunk_digest(data) == expected:
                good.add(index)
        return good

    def hash_into(self, digest: Any, first: int, end: int) -> None:
        """Feed chunks *first* .. *end* - 1, as on disk, to *digest* (a hashlib object)."""
        offset = first * CHUNK_SIZE
        length = min(self.size, end * CHUNK_SIZE) - offset
        while length > 0:
            data = os.pread(self.fd, length, offset)
            if not data:
                raise OSError(f"{self.path} is shorter than {self.size} bytes")
            digest.update(data)
            offset, length = offset + len(data), length - len(data)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def load_state(path: Path, sha256: str, size: int, total: int) -> set[int]:
    """The chunks a previous pull of this file verified; none when there is no usable state."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != _STATE_FORMAT or data.get("sha256") != sha256:
            return set()
        if data.get("size") != size:
            return set()  # another manifest's size: nothing on disk can be trusted
        return FetchPlan.from_state(str(data.get("verified", "")), total)
    except (OSError, ValueError, AttributeError, PlanError):
        return set()


def save_state(path: Path, sha256: str, plan: FetchPlan, manifest_root: bytes) -> None:
    body = {
        "format": _STATE_FORMAT,
        "sha256": sha256,
        "size": plan.size,
        "manifest_root": manifest_root.hex(),
        "verified": plan.to_state(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def place(part: Path, cache_dir: Path, name: str, sha256: str) -> Path:
    """Move the verified *part* into *cache_dir* as `<name>.gguf`, never replacing a different
    file: when that name is taken by another file, `<name>-<sha256[:12]>.gguf`; when it already
    holds this very file, that one is kept. Returns the model's path."""
    cache = Sha256Cache(cache_dir)
    stem = file_name(name).removesuffix(".gguf")
    for candidate in (f"{stem}.gguf", f"{stem}-{sha256[:12]}.gguf"):
        target = cache_dir / candidate
        try:
            os.link(part, target)  # atomic, and refuses to replace an existing file
        except FileExistsError:
            if cache.lookup(target) == sha256 or sha256_file(target) == sha256:
                part.unlink(missing_ok=True)
                return target
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if target.exists():
                continue
            os.replace(part, target)  # no hard links here: a rename after the check
            cache.remember(target, sha256)
            return target
        part.unlink(missing_ok=True)
        cache.remember(target, sha256)
        return target
    raise PullError(
        f"{cache_dir} already holds other files named {stem}.gguf and {stem}-{sha256[:12]}.gguf"
    )


def find_in_cache(cache_dir: Path, wanted: str) -> Path | None:
    """A model already in the cache: `<wanted>.gguf` for a name; for a sha256, a `.gguf` file
    whose remembered sha256 is it (nothing is hashed here)."""
    wanted_l = wanted.lower()
    if len(wanted_l) == 64 and all(c in "0123456789abcdef" for c in wanted_l):
        cache = Sha256Cache(cache_dir)
        for path in sorted(cache_dir.glob("*.gguf")):
            if cache.lookup(path) == wanted_l:
                return path
        return None
    path = cache_dir / file_name(wanted)
    return path if path.is_file() else None
