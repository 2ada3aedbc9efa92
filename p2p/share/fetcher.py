"""`pull`: fetch a GGUF from the peers that serve it, into the model cache.

1. The file and its providers, then the manifest most of them agree on (p2p/share/file_choice.py).
2. Resume: the partial file's chunks that the state file names are re-hashed; those that still
   match count as fetched (p2p/share/pull_files.py).
3. Every usable provider gets `depth` `FetchChunk`s in flight over its pooled session, chosen by
   the sans-IO plan (p2p/share/fetch_plan.py): faster peers take more chunks, a chunk that fails
   its hash is asked of another peer and costs its sender a strike, a peer whose session breaks
   is dropped and its chunks go back to the pool. Each chunk is hashed and written in a worker
   thread (os.pwrite at its offset) only when it matches the manifest; the same thread call
   feeds the whole file's sha256 in order, read back from the disk.
4. The whole file's sha256 is checked against the one the records name; then the file is linked
   into the cache under its name (never over another file) and its sha256 and manifest
   remembered, so the node that serves it does not hash it again. Providers that lied about the
   manifest are remembered too, and asked last next time (p2p/share/suspects.py).

Every wait has a deadline: dialling, each manifest page, each chunk (`CHUNK_TIMEOUT_S`); the
state file is saved about every second and when the pull ends in any way (Ctrl-C included).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from inference.sha256_cache import Sha256Cache, sha256_file
from p2p.client.network import Client
from p2p.dht.records import CapabilityRecord
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.protocol.share_wire import chunk_count
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError
from p2p.share.fetch_plan import DEFAULT_DEPTH, FetchPlan
from p2p.share.file_choice import (
    FileChoice,
    agreed_manifest,
    ask,
    choose_file,
    open_session,
)
from p2p.share.file_choice import Manifest as OfferedManifest
from p2p.share.manifest import Manifest, ManifestCache
from p2p.share.pull_files import (
    PartFile,
    PullError,
    disk_error,
    find_in_cache,
    load_state,
    partial_paths,
    place,
    save_state,
)
from p2p.share.pull_progress import (
    PeerShare,
    ProgressCallback,
    PullProgress,
    PullResult,
    no_progress,
)
from p2p.share.suspects import PROCESS_SUSPECTS, SuspectPeers

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK_TIMEOUT_S = 30.0  # one 512 KiB chunk: a peer this slow is dropped after MAX_FAILURES
MAX_PEERS = 8
SAVE_EVERY_S = 1.0
RETRY_BASE_S = 0.25  # after an error answer, times the peer's failures in a row
RETRY_MAX_S = 2.0
# Answers after which a peer is asked again (after a pause); any other error drops it.
RETRY_CODES = frozenset(
    {ErrorCode.BUSY, ErrorCode.RATE_LIMITED, ErrorCode.TIMEOUT, ErrorCode.INTERNAL}
)


async def pull(
    client: Client,
    wanted: str,
    cache_dir: Path,
    *,
    on_progress: ProgressCallback = no_progress,
    depth: int = DEFAULT_DEPTH,
    max_peers: int = MAX_PEERS,
    use_cache: bool = True,
    suspects: SuspectPeers = PROCESS_SUSPECTS,
) -> PullResult:
    """Fetch the model *wanted* (a name or a sha256) into *cache_dir*; `PullError` with a code
    and a one-line message when it cannot (`UNKNOWN_MODEL`: nobody serves it; `UNAVAILABLE`:
    every provider failed; `INTERNAL`: the assembled file is not the one named). *suspects*:
    the peers earlier pulls caught lying, asked last (p2p/share/suspects.py)."""
    if use_cache:
        present = await trio.to_thread.run_sync(find_in_cache, cache_dir, wanted)
        if present is not None:
            return present_result(present, wanted)
    choice = await choose_file(client, wanted)
    return await pull_file(
        client,
        choice,
        cache_dir,
        on_progress=on_progress,
        depth=depth,
        max_peers=max_peers,
        suspects=suspects,
    )


async def pull_file(
    client: Client,
    choice: FileChoice,
    cache_dir: Path,
    *,
    on_progress: ProgressCallback = no_progress,
    depth: int = DEFAULT_DEPTH,
    max_peers: int = MAX_PEERS,
    suspects: SuspectPeers = PROCESS_SUSPECTS,
) -> PullResult:
    """`pull` of the file *choice* names, from its providers."""
    started = trio.current_time()
    manifest, usable, problems = await agreed_manifest(client, choice, suspects)
    part_path, state_path = partial_paths(cache_dir, choice.sha256)
    transfer = _Transfer(client, choice, manifest, part_path, state_path, on_progress, depth)
    await transfer.run(usable[:max_peers], problems)
    try:
        digest = transfer.whole_sha256
        if digest is None:  # hashed in order while fetching, unless that fell behind
            digest = str(await trio.to_thread.run_sync(sha256_file, part_path))
        if digest != choice.sha256:
            for peer in manifest.senders:
                suspects.note(peer, "its manifest made a pull fail at the whole-file check")
            part_path.unlink(missing_ok=True)
            state_path.unlink(missing_ok=True)
            raise PullError(
                f"the file assembled from the providers' manifest has sha256 {digest[:12]}, not "
                f"{choice.sha256[:12]}: the providers that sent the manifest lie; nothing was kept",
                ErrorCode.INTERNAL,
            )
        path = await trio.to_thread.run_sync(
            place, part_path, cache_dir, choice.name, choice.sha256
        )
        # Every chunk hash is known and checked: the node that serves the file need not hash it.
        checked = Manifest(choice.sha256, manifest.size, b"".join(manifest.hashes))
        await trio.to_thread.run_sync(ManifestCache(cache_dir).remember, path, checked)
    except OSError as exc:
        raise disk_error(exc, cache_dir) from None
    state_path.unlink(missing_ok=True)
    plan = transfer.plan
    assert plan is not None
    return PullResult(
        path=path,
        sha256=choice.sha256,
        name=choice.name,
        size=manifest.size,
        fetched_bytes=transfer.fetched_bytes,
        resumed_bytes=transfer.resumed_bytes,
        seconds=trio.current_time() - started,
        peers=tuple(PeerShare(p, s.chunks, s.dropped) for p, s in plan.peers.items()),
        strikes=plan.strikes_total,
        other_files=choice.others,
    )


def present_result(path: Path, wanted: str) -> PullResult:
    """The result of a pull that found *path* in the cache: nothing fetched."""
    sha = Sha256Cache(path.parent).lookup(path) or (wanted.lower() if len(wanted) == 64 else "")
    return PullResult(
        path=path,
        sha256=sha,
        name=path.stem,
        size=path.stat().st_size,
        fetched_bytes=0,
        resumed_bytes=0,
        seconds=0.0,
        already_present=True,
    )


class _Transfer:
    """One pull's chunk transfer: the plan, the partial file, one task per in-flight slot."""

    def __init__(
        self,
        client: Client,
        choice: FileChoice,
        manifest: OfferedManifest,
        part_path: Path,
        state_path: Path,
        on_progress: ProgressCallback,
        depth: int,
    ) -> None:
        self.client = client
        self.choice = choice
        self.manifest = manifest
        self.part_path = part_path
        self.state_path = state_path
        self.on_progress = on_progress
        self.depth = depth
        self.plan: FetchPlan | None = None
        self.part: PartFile | None = None
        self.fetched_bytes = 0
        self.resumed_bytes = 0
        self._changed = trio.Event()
        self._fatal: PullError | None = None
        self._scope = trio.CancelScope()
        self._saved_at = 0.0
        self._problems: list[str] = []

    async def run(self, providers: list[CapabilityRecord], problems: list[str]) -> None:
        self._problems = list(problems)
        try:
            await trio.to_thread.run_sync(self._open)
        except OSError as exc:
            raise disk_error(exc, self.part_path) from None
        assert self.part is not None and self.plan is not None
        plan = self.plan
        try:
            for r in providers:
                plan.add_peer(r.peer_id, self.depth)
            self._report()
            if not plan.done and not providers:
                raise PullError(
                    "no provider may be asked for chunks: " + "; ".join(self._problems[-3:]),
                    ErrorCode.UNAVAILABLE,
                )
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope  # a disk error ends the transfer
                for r in providers if not plan.done else ():  # all resumed: no sessions
                    nursery.start_soon(self._peer, r)
            if self._fatal is not None:
                raise self._fatal
            if not plan.done:
                raise PullError(
                    f"every provider of {self.choice.name} failed with "
                    f"{plan.total - len(plan.verified)} of {plan.total} chunks to go: "
                    + "; ".join(self._problems[-3:])
                    + " (pull again to resume)",
                    ErrorCode.UNAVAILABLE,
                )
            started = trio.current_time()
            await trio.to_thread.run_sync(self.part.sync)
            log.debug("fsync of %s: %.2f s", self.part_path.name, trio.current_time() - started)
        except OSError as exc:
            raise disk_error(exc, self.part_path) from None
        finally:
            with trio.CancelScope(shield=True):
                self._save()
                self.part.close()

    @property
    def whole_sha256(self) -> str | None:
        """The file's sha256 once every chunk was hashed in order (PartFile.advance); else
        None."""
        return None if self.part is None else self.part.whole_sha256

    def _open(self) -> None:
        size = self.manifest.size
        folder = self.part_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        existing = self.part_path.stat().st_size if self.part_path.exists() else 0
        free = shutil.disk_usage(folder).free
        if free + existing < size:
            raise PullError(
                f"disk full: {self.choice.name} needs {size / 1e6:.1f} MB and "
                f"{folder} has {(free + existing) / 1e6:.1f} MB free; free some space",
                ErrorCode.INTERNAL,
            )
        self.part = PartFile(self.part_path, size)
        total = chunk_count(size)
        claimed = load_state(self.state_path, self.choice.sha256, size, total)
        plan = FetchPlan(size, self.manifest.hashes)
        self.plan = FetchPlan(size, self.manifest.hashes, self.part.recheck(plan, claimed))
        self.resumed_bytes = self.plan.verified_bytes
        self.part.mark_written(self.plan.verified)

    async def _peer(self, record: CapabilityRecord) -> None:
        assert self.plan is not None
        peer = record.peer_id
        try:
            session = await open_session(self.client, record)
        except SessionError as exc:
            self._drop(peer, str(exc))
            return
        async with trio.open_nursery() as nursery:
            for _ in range(self.depth):
                nursery.start_soon(self._slot, peer, session)

    async def _slot(self, peer: str, session: MultiplexedSession) -> None:
        plan = self.plan
        assert plan is not None
        while not plan.done and plan.usable(peer):
            index = plan.next_chunk(peer)
            if index is None:
                if plan.stuck():
                    self._notify()
                    return
                changed = self._changed
                with trio.move_on_after(CHUNK_TIMEOUT_S):
                    await changed.wait()
                continue
            try:
                answer = await ask(
                    session, wire.FetchChunk(0, self.choice.sha256, index), CHUNK_TIMEOUT_S
                )
            except SessionError as exc:
                self._drop(peer, f"session broke: {exc}")
                return
            await self._answer(peer, index, answer)
            self._notify()

    async def _answer(self, peer: str, index: int, answer: wire.Message | str) -> None:
        plan, part = self.plan, self.part
        assert plan is not None and part is not None
        if isinstance(answer, str | wire.Error):
            why = answer if isinstance(answer, str) else f"{answer.code.value}: {answer.message}"
            if isinstance(answer, wire.Error) and answer.code not in RETRY_CODES:
                plan.failed(peer, index, why)
                self._drop(peer, why)  # it will not share it: unknown, --no-share, stopping
                return
            if plan.failed(peer, index, why):
                self._problems.append(f"{peer[:12]}: {why:.200}")
                return
            self._notify()  # its chunk is back in the pool for the others
            # busy, rate-limited or slow: this slot waits a little before asking it again
            await trio.sleep(min(RETRY_MAX_S, RETRY_BASE_S * plan.peers[peer].failures))
            return
        if not isinstance(answer, wire.Chunk) or answer.index != index:
            plan.received(peer, index, False)  # an answer that is not the chunk: a strike
            return
        if answer.sha256 != self.choice.sha256:
            plan.received(peer, index, False)
            return
        ok = False
        if plan.is_wanted(index):
            expected, length = plan.expected(index)
            written = await self._disk(part.check_and_write, index, answer.data, expected, length)
            if written is None:
                return  # the disk failed: the transfer is being cancelled
            ok = written
        verdict = plan.received(peer, index, ok)
        if verdict.dropped:
            self._problems.append(f"{peer[:12]}: {plan.peers[peer].dropped}")
        if verdict.accepted:
            self.fetched_bytes += len(answer.data)
            self._report()
            if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                self._save()

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T | None:
        """*fn* in a worker thread; on a disk error (full, gone) None, and the transfer ends
        with that error (`run` raises it once every task has stopped)."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            if self._fatal is None:
                self._fatal = disk_error(exc, self.part_path)
            self._scope.cancel()
            return None

    def _drop(self, peer: str, why: str) -> None:
        assert self.plan is not None
        self.plan.drop_peer(peer, why)
        self._problems.append(f"{peer[:12]}: {why:.200}")
        self.client.pool.drop(peer)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _report(self) -> None:
        plan = self.plan
        assert plan is not None
        self.on_progress(
            PullProgress(
                total_bytes=plan.size,
                verified_bytes=plan.verified_bytes,
                resumed_bytes=self.resumed_bytes,
                peers=len(plan.usable_peers()),
                strikes=plan.strikes_total,
            )
        )

    def _save(self) -> None:
        if self.plan is None:
            return
        self._saved_at = time.monotonic()
        with contextlib.suppress(OSError):  # a lost state costs a re-hash, not the pull
            save_state(self.state_path, self.choice.sha256, self.plan, self.manifest.root)
            log.debug("state saved: %d of %d chunks", len(self.plan.verified), self.plan.total)
