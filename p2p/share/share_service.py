"""The serving side of model sharing: a node answers `FetchManifest` and `FetchChunk` for the
model files it serves, and for nothing else.

Bounds, as for every network input:
- Only the files of the node's own record, by sha256; anything else is `unknown_model`.
- Per-peer concurrency: each share request holds one of the peer's places in the node's
  `AdmissionControl` (16 with generation requests together), but takes no request-rate token:
  a transfer is hundreds of requests a second, paced by bytes instead.
- Bytes: one token bucket for the whole node (`rate`, `--share-rate`) and one per peer
  (`peer_rate`, half of it by default, so one identity never takes all the upload and a second
  fetcher finds room at once). Over the rate a chunk *waits* for its bytes (a reservation in
  the buckets, first come first served) rather than being refused: a fetcher keeps a few chunks
  in flight per peer, so waiting paces it to the cap exactly, where refusals would cost it
  round trips and retries. A chunk that would wait longer than `max_wait_s` is refused with
  `rate_limited` (and its reservation returned), so no request waits unboundedly and a peer
  asking for far more than its share is told to go elsewhere.
- Reads are `os.pread` on a descriptor opened once per file, in worker threads (at most
  `READ_THREADS` at once), and each chunk is checked against the manifest the first time it is
  sent: a file rewritten after the node started (its size or mtime changed) is refused
  (`internal`), never sent.
- A draining (or paused) node refuses with the code its `refusal` callable gives.

Manifests are computed (or read from the model cache, p2p/share/manifest.py) in the background
once the node serves; a fetcher that asks before its file's manifest is ready waits up to
`MANIFEST_WAIT_S`, then gets `busy`.

Test hook: `tamper(index, data) -> data`, applied after the self-check, makes this node send
corrupted chunks on purpose (the fetcher's tests pass it through `NodeConfig.share_tamper`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import attrs
import trio

from inference.model_cache import model_cache_dir
from inference.model_file import ModelInfo
from p2p.bounded_lru import BoundedLRU
from p2p.errors import ErrorCode
from p2p.node.config import NodeConfig
from p2p.node.models import ServedModel
from p2p.node.pause import PauseState
from p2p.protocol import wire
from p2p.protocol.admission import AdmissionControl
from p2p.protocol.share_wire import CHUNK_SIZE, HASH_LEN, chunk_digest, chunk_length
from p2p.share.counters import ShareCounters
from p2p.share.manifest import Manifest, ManifestCache
from p2p.token_bucket import TokenBucket

log = logging.getLogger(__name__)
# A whole file shared is served work: it goes in the volunteer's request log, shown by default.
request_log = logging.getLogger("p2p.node.requests")

# Reads that must not wait for the disk (Linux >= 4.14); 0 where the flag does not exist.
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
READ_THREADS = 4  # chunk reads at once; the node's other threads keep theirs
MANIFEST_WAIT_S = 10.0
DEFAULT_MAX_WAIT_S = 5.0
PEER_FRACTION = 0.5  # of the node's rate, one peer's share
BURST_S = 0.25  # bucket depth in seconds of its rate (at least one chunk)
MAX_TRACKED_PEERS = 1024  # per-peer buckets remembered (a forgotten peer starts full)
MAX_TRANSFERS = 256  # (peer, file) pairs followed for the "fetched the whole file" log line

Tamper = Callable[[int, bytes], bytes]
Refusal = Callable[[], tuple[ErrorCode, str] | None]


class ShareRefused(Exception):
    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@attrs.define
class SharedFile:
    info: ModelInfo
    ready: trio.Event = attrs.field(factory=trio.Event)
    manifest: Manifest | None = None
    fd: int | None = None
    error: str | None = None  # why it cannot be shared (unreadable, changed on disk)
    # The file's (size, mtime_ns) when its manifest was made, and the chunks checked against
    # the manifest since: each is hashed the first time it is sent, not every time.
    identity: tuple[int, int] | None = None
    verified: bytearray = attrs.field(factory=bytearray)


@attrs.define
class _Transfer:
    """What one peer has fetched of one file, for the info line once it has all of it."""

    started: float
    seen: bytearray
    chunks: int = 0
    sent: int = 0


def _burst(rate: float) -> float:
    return max(rate * BURST_S, float(CHUNK_SIZE))


def _bucket(rate: float | None) -> TokenBucket | None:
    return None if rate is None else TokenBucket(rate, _burst(rate))


class ShareService:
    """Serve the chunks of *files* to peers. `await nursery.start(service.run)` opens and
    prepares them and closes them when cancelled; `service.serve` is `Node.serve_share`."""

    def __init__(
        self,
        files: Sequence[ModelInfo],
        *,
        admission: AdmissionControl,
        counters: ShareCounters,
        refusal: Refusal = lambda: None,
        enabled: bool = True,
        rate: float | None = None,
        peer_rate: float | None = None,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        manifests: ManifestCache | None = None,
        tamper: Tamper | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        """*rate* and *peer_rate* are bytes a second (None: no cap; *peer_rate* defaults to
        `PEER_FRACTION` of *rate*)."""
        self.enabled = enabled
        self._files = {f.sha256: SharedFile(f) for f in files} if enabled else {}
        self._admission = admission
        self.counters = counters
        self._refusal = refusal
        if peer_rate is None and rate is not None:
            peer_rate = rate * PEER_FRACTION
        self._global = _bucket(rate)
        self._peer_rate = peer_rate
        self._peers: BoundedLRU[str, TokenBucket] = BoundedLRU(MAX_TRACKED_PEERS)
        self.max_wait_s = max_wait_s
        self._manifests = manifests
        self._tamper = tamper
        self._clock = clock
        self._reads = trio.CapacityLimiter(READ_THREADS)
        self._transfers: BoundedLRU[tuple[str, str], _Transfer] = BoundedLRU(MAX_TRANSFERS)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Prepare every file (one at a time: hashing is disk- and CPU-bound), then hold the
        descriptors open until cancelled."""
        task_status.started()
        try:
            for shared in self._files.values():
                await self._prepare(shared)
            await trio.sleep_forever()
        finally:
            for shared in self._files.values():
                if shared.fd is not None:
                    os.close(shared.fd)
                    shared.fd = None

    async def _prepare(self, shared: SharedFile) -> None:
        name = shared.info.name
        try:
            shared.fd = os.open(shared.info.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            shared.identity = _identity(shared.fd)
            cache = self._manifests or ManifestCache(model_cache_dir())
            started = trio.current_time()
            computed = cache.computed
            # Abandoned on cancel: a node stopping does not wait out a 40 GB hash.
            manifest = await trio.to_thread.run_sync(
                cache.manifest, Path(shared.info.path), abandon_on_cancel=True
            )
            if cache.computed > computed:
                seconds = trio.current_time() - started
                log.info(
                    "hashed %s for sharing: %d chunks in %.1f s",
                    name,
                    manifest.total_chunks,
                    seconds,
                )
            if manifest.sha256 != shared.info.sha256 or _identity(shared.fd) != shared.identity:
                shared.error = "the file changed on disk since the node started"
            else:
                shared.verified = bytearray(manifest.total_chunks)
                shared.manifest = manifest
        except OSError as e:
            shared.error = f"unreadable: {e.strerror or e}"
        except ValueError as e:  # a manifest that does not fit its file: never shared
            shared.error = f"no manifest: {e}"
        finally:
            shared.ready.set()
        if shared.error is not None:
            log.warning("not sharing %s: %s", name, shared.error)

    async def serve(self, msg: wire.FetchManifest | wire.FetchChunk, reply: Reply) -> None:
        """Answer one share request with its page or chunk, or one `Error`."""
        try:
            await self._serve(msg, reply)
        except ShareRefused as refused:
            self.counters.refused += 1
            log.debug("share %s from %s refused: %s", msg.sha256[:12], reply.peer_id, refused.text)
            await reply.fail(refused.code, refused.text)

    async def _serve(self, msg: wire.FetchManifest | wire.FetchChunk, reply: Reply) -> None:
        if not self.enabled:
            raise ShareRefused(ErrorCode.UNKNOWN_MODEL, "this node does not share model files")
        refusal = self._refusal()
        if refusal is not None:
            raise ShareRefused(*refusal)
        shared = self._files.get(msg.sha256)
        if shared is None:
            raise ShareRefused(ErrorCode.UNKNOWN_MODEL, f"{msg.sha256[:16]} is not shared here")
        peer = reply.peer_id
        if self._admission.try_hold(peer) is not None:
            raise ShareRefused(ErrorCode.BUSY, "too many requests from you at once")
        try:
            manifest = await self._manifest(shared)
            if isinstance(msg, wire.FetchManifest):
                await self._send_page(msg, manifest, reply)
            else:
                await self._send_chunk(msg, shared, manifest, reply)
        finally:
            self._admission.release(peer)

    async def _manifest(self, shared: SharedFile) -> Manifest:
        with trio.move_on_after(MANIFEST_WAIT_S):
            await shared.ready.wait()
        if not shared.ready.is_set():
            raise ShareRefused(ErrorCode.BUSY, "this file's manifest is still being computed")
        if shared.manifest is None:
            raise ShareRefused(ErrorCode.INTERNAL, f"not sharing this file: {shared.error}")
        return shared.manifest

    async def _send_page(self, msg: wire.FetchManifest, manifest: Manifest, reply: Reply) -> None:
        if msg.first >= manifest.total_chunks:
            raise ShareRefused(ErrorCode.BAD_REQUEST, "first is past the file's last chunk")
        hashes = manifest.page(msg.first)
        await self._pace(reply.peer_id, len(hashes) * HASH_LEN)
        await reply.send(wire.ManifestPage(msg.id, msg.sha256, manifest.size, msg.first, hashes))
        self.counters.manifests_sent += 1

    async def _send_chunk(
        self, msg: wire.FetchChunk, shared: SharedFile, manifest: Manifest, reply: Reply
    ) -> None:
        if msg.index >= manifest.total_chunks:
            raise ShareRefused(ErrorCode.BAD_REQUEST, "index is past the file's last chunk")
        length = chunk_length(manifest.size, msg.index)
        await self._pace(reply.peer_id, length)
        data = _read_cached(shared, msg.index, length)
        if data is None:  # not checked yet, or not in the page cache: a worker thread
            data = await trio.to_thread.run_sync(
                _read_checked, shared, manifest, msg.index, length, limiter=self._reads
            )
        if data is None:
            raise ShareRefused(ErrorCode.INTERNAL, "the file changed on disk or is unreadable here")
        if self._tamper is not None:
            data = self._tamper(msg.index, data)
        await reply.send(wire.Chunk(msg.id, msg.sha256, msg.index, data))
        self.counters.chunks_sent += 1
        self.counters.bytes_sent += len(data)
        self._note(reply.peer_id, shared, manifest, msg.index, len(data))

    async def _pace(self, peer: str, cost: int) -> None:
        """Reserve *cost* bytes in the node's and the peer's buckets and wait until they are
        covered; refuse (returning the reservation) when that is more than `max_wait_s` away."""
        buckets = [b for b in (self._global, self._peer_bucket(peer)) if b is not None]
        if not buckets:
            return
        now = self._clock()
        wait = 0.0
        for b in buckets:
            b.refill(now)
            b.tokens -= cost  # may go negative: a debt later reservations queue behind
            wait = max(wait, -b.tokens / b.rate if b.tokens < 0 else 0.0)
        if wait > self.max_wait_s:
            _refund(buckets, cost)
            raise ShareRefused(ErrorCode.RATE_LIMITED, "this node is sharing at its rate cap")
        if wait <= 0:
            return
        try:
            await trio.sleep_until(now + wait)
        except trio.Cancelled:
            _refund(buckets, cost)
            raise

    def _peer_bucket(self, peer: str) -> TokenBucket | None:
        rate = self._peer_rate
        if rate is None:
            return None
        return self._peers.get_or_create(peer, lambda: TokenBucket(rate, _burst(rate)))

    def _note(self, peer: str, shared: SharedFile, manifest: Manifest, index: int, n: int) -> None:
        log.debug("sent chunk %d of %s to %s", index, shared.info.name, peer)
        key = (peer, shared.info.sha256)
        total = manifest.total_chunks
        t = self._transfers.get_or_create(
            key, lambda: _Transfer(self._clock(), bytearray(math.ceil(total / 8)))
        )
        byte, bit = divmod(index, 8)
        if t.seen[byte] & (1 << bit):
            return
        t.seen[byte] |= 1 << bit
        t.chunks += 1
        t.sent += n
        if t.chunks == total:
            self._transfers.pop(key)
            seconds = max(self._clock() - t.started, 1e-6)
            request_log.info(
                "shared %s with %s: %.1f MB in %.1f s (%.1f MB/s)",
                shared.info.name,
                peer[:12],
                t.sent / 1e6,
                seconds,
                t.sent / 1e6 / seconds,
            )


def _refund(buckets: list[TokenBucket], cost: int) -> None:
    for b in buckets:
        b.tokens = min(b.burst, b.tokens + cost)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns


def _read_cached(shared: SharedFile, index: int, length: int) -> bytes | None:
    """A chunk checked before, read in the event loop only if the page cache holds all of it
    (RWF_NOWAIT: the read fails rather than wait for the disk); else None. A thread hand-off
    per chunk cost more CPU than the read itself (~0.1 ms per 512 KiB from the page cache)."""
    if shared.fd is None or not _NOWAIT or index >= len(shared.verified):
        return None
    if not shared.verified[index]:
        return None
    buf = bytearray(length)
    try:
        if _identity(shared.fd) != shared.identity:
            return None
        got = os.preadv(shared.fd, [buf], index * CHUNK_SIZE, _NOWAIT)
    except OSError:  # EAGAIN: on the disk, not in memory; or unsupported here
        return None
    return bytes(buf) if got == length else None


def _read_checked(shared: SharedFile, manifest: Manifest, index: int, length: int) -> bytes | None:
    """The chunk as on disk, or None if it no longer matches the manifest (worker thread).

    A chunk is hashed the first time it is sent; later sends trust it while the file's size and
    mtime are those its manifest was made from (a rewrite changes them, and is refused): at
    ~2 ms per MB on a CPU without SHA extensions, hashing every send was a third of the
    sender's work. The fetcher checks every chunk anyway; this check only keeps an honest node
    from sending a chunk its disk has lost."""
    if shared.fd is None:
        return None
    try:
        if _identity(shared.fd) != shared.identity:
            return None
        data = os.pread(shared.fd, length, index * CHUNK_SIZE)
    except OSError:  # closed as the node stops, or the disk failed: not sent either way
        return None
    if len(data) != length:
        return None
    if not shared.verified[index]:
        if chunk_digest(data) != manifest.chunk_hash(index):
            return None
        shared.verified[index] = 1
    return data


class Reply(Protocol):
    """What `serve` needs of p2p/node/connection.py's `Reply`."""

    @property
    def peer_id(self) -> str: ...

    async def send(self, msg: wire.Answer) -> None: ...

    async def fail(self, code: ErrorCode, text: str) -> None: ...


class SharingNode(Protocol):
    """What `node_share_service` reads of p2p/node/runtime.py's `Node`."""

    config: NodeConfig
    served: list[ServedModel]
    admission: AdmissionControl
    share_counters: ShareCounters
    draining: bool
    pause: PauseState


def node_share_service(node: SharingNode) -> ShareService:
    """The service a node runs with its settings (`--share-rate`, `--no-share`): the files it
    serves, refused while it drains or is paused (a paused node's owner wants the machine,
    upload included)."""

    def refusal() -> tuple[ErrorCode, str] | None:
        if node.draining:
            return ErrorCode.SHUTTING_DOWN, "node is shutting down"
        if node.pause.paused:
            return ErrorCode.PAUSED, node.pause.refusal_text()
        return None

    config = node.config
    return ShareService(
        [m.info for m in node.served],
        admission=node.admission,
        counters=node.share_counters,
        refusal=refusal,
        enabled=config.share,
        rate=config.share_rate * 1e6 if config.share_rate > 0 else None,
        tamper=config.share_tamper,
    )
