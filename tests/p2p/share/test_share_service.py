"""A node shares the model files it serves over real sessions on 127.0.0.1: the manifest is the
file's, every chunk hashes right and the chunks make the file; anything else, a node that does
not share, the per-peer concurrency it shares with requests, its paused state and its rate cap
are answered with the codes a fetcher acts on, and a chunk that does not match the manifest
(changed on disk) is never sent, unless a test asks a node to tamper on purpose."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from crypto.identity import Identity
from inference.model_file import ModelInfo, inspect_gguf
from p2p.client.network import lookup_key, open_client
from p2p.errors import ErrorCode
from p2p.node.runtime import Node, NodeConfig, NodeReady, run_node
from p2p.protocol import wire
from p2p.protocol.admission import AdmissionControl
from p2p.protocol.share_wire import CHUNK_SIZE, chunk_count, chunk_digest
from p2p.session.pool import MultiplexedSession, SessionPool
from p2p.session.secure import serve_sessions
from p2p.share.manifest import ManifestCache, compute_manifest
from p2p.share.share_service import ShareService

TIMEOUT_S = 120


async def ask(session: MultiplexedSession, msg: wire.Request) -> wire.Message:
    """The one final answer of a share request."""
    async with session.request(msg) as (_rid, inbox):
        answer = await inbox.receive()
    assert not isinstance(answer, Exception), answer
    return answer


async def fetch_all(session: MultiplexedSession, sha256: str, total: int) -> dict[int, Any]:
    """Every chunk, four requests in flight (as a fetcher keeps a few per peer)."""
    answers: dict[int, Any] = {}

    async def lane(indices: range) -> None:
        for i in indices:
            answers[i] = await ask(session, wire.FetchChunk(0, sha256, i))

    async with trio.open_nursery() as nursery:
        for k in range(4):
            nursery.start_soon(lane, range(k, total, 4))
    return answers


def assembled(answers: dict[int, Any]) -> bytes:
    assert all(isinstance(a, wire.Chunk) for a in answers.values()), answers
    return b"".join(answers[i].data for i in range(len(answers)))


async def test_a_node_shares_the_file_it_serves_and_nothing_else(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    info = inspect_gguf(tiny_gguf)
    config = NodeConfig(
        data_dir=tmp_path / "node", models=(info,), dht_port=0, port=0, n_threads=1,
        benchmark=False,
    )  # fmt: skip
    local = compute_manifest(tiny_gguf)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            ready: NodeReady = await nursery.start(run_node, config)
            host, _, port = ready.dht_address.rpartition(":")
            async with open_client(((host, int(port)),)) as client:
                # the sha256 a fetcher finds in the signed record is the one the node shares
                (record,) = (await client.find_records(lookup_key(info.sha256)))[0]
                session = await client.pool.get(record.peer_id, record.addresses)
                page = await ask(session, wire.FetchManifest(0, info.sha256))
                assert isinstance(page, wire.ManifestPage), page
                assert page.size == tiny_gguf.stat().st_size and page.first == 0
                assert page.hashes == local.page(0) and page.total_chunks == 12
                answers = await fetch_all(session, info.sha256, page.total_chunks)
                assert all(chunk_digest(answers[i].data) == page.hashes[i] for i in answers)
                data = assembled(answers)
                assert hashlib.sha256(data).hexdigest() == info.sha256
                assert len(answers[11].data) == len(data) - 11 * CHUNK_SIZE  # the short last one

                unknown = hashlib.sha256(b"some other model").hexdigest()
                hostile: list[tuple[wire.Request, ErrorCode, str]] = [
                    (wire.FetchManifest(0, unknown), ErrorCode.UNKNOWN_MODEL, "not shared here"),
                    (wire.FetchChunk(0, unknown, 0), ErrorCode.UNKNOWN_MODEL, "not shared here"),
                    (wire.FetchChunk(0, info.sha256, 12), ErrorCode.BAD_REQUEST, "last chunk"),
                    (wire.FetchManifest(0, info.sha256, 16384), ErrorCode.BAD_REQUEST, "last"),
                ]
                for msg, code, words in hostile:
                    refused = await ask(session, msg)
                    assert isinstance(refused, wire.Error), refused
                    assert refused.code is code and words in refused.message, refused
                # the node goes on serving: generation too
                done = await ask(session, wire.Generate(0, info.sha256, "hello", 2))
                assert not isinstance(done, wire.Error), done
            nursery.cancel_scope.cancel()


async def test_a_node_started_with_no_share_shares_nothing(tmp_path: Path, tiny_gguf: Path) -> None:
    info = inspect_gguf(tiny_gguf)
    config = NodeConfig(
        data_dir=tmp_path / "node", models=(info,), dht_port=0, port=0, n_threads=1,
        benchmark=False, share=False,
    )  # fmt: skip
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            ready: NodeReady = await nursery.start(run_node, config)
            pool = SessionPool(Identity.generate(), nursery)
            session = await pool.get(ready.peer_id, ready.session_address)
            for msg in (wire.FetchManifest(0, info.sha256), wire.FetchChunk(0, info.sha256, 0)):
                refused = await ask(session, msg)
                assert isinstance(refused, wire.Error), refused
                assert refused.code is ErrorCode.UNKNOWN_MODEL
                assert "does not share model files" in refused.message
            nursery.cancel_scope.cancel()


@attrs.define
class Sharing:
    node: Node
    service: ShareService
    client: Identity
    session: MultiplexedSession
    nursery: trio.Nursery
    address: str

    async def connect(self, identity: Identity) -> MultiplexedSession:
        """Another client's session to the node."""
        return await SessionPool(identity, self.nursery).get(
            self.node.identity.peer_id, self.address
        )


@asynccontextmanager
async def sharing(
    tmp_path: Path, files: list[ModelInfo], admission: AdmissionControl | None = None, **kw: Any
) -> AsyncIterator[Sharing]:
    """A node that serves no model but shares *files* (its share service as run_node sets it
    up), and one client session to it."""
    node = Node(NodeConfig(data_dir=tmp_path / "node", models=()), Identity.generate())
    if admission is not None:
        node.admission = admission
    service = ShareService(
        files,
        admission=node.admission,
        counters=node.share_counters,
        manifests=ManifestCache(tmp_path / "cache"),
        **kw,
    )
    node.serve_share = service.serve
    client = Identity.generate()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        listeners = await nursery.start(
            serve_sessions, node.identity, "127.0.0.1", 0, node.handle_connection
        )
        address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        session = await SessionPool(client, nursery).get(node.identity.peer_id, address)
        yield Sharing(node, service, client, session, nursery, address)
        nursery.cancel_scope.cancel()


async def test_the_rate_cap_holds_per_peer_and_for_the_node(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """Only lower bounds on the time taken: a loaded machine makes a transfer slower, never
    faster than its cap (bytes by time t <= bucket depth + rate * t)."""
    info = inspect_gguf(tiny_gguf)
    size, total = info.file_size, chunk_count(info.file_size)
    rate = 8e6  # one peer gets half: 4 MB/s, a bucket of 1 MB
    with trio.fail_after(TIMEOUT_S):
        async with sharing(tmp_path, [info], rate=rate) as s:
            started = trio.current_time()
            one = await fetch_all(s.session, info.sha256, total)
            alone = trio.current_time() - started
            assert hashlib.sha256(assembled(one)).hexdigest() == info.sha256
            assert alone >= (size - 1e6) / (rate / 2) * 0.999
            # three more peers at once: each could take its half, the node's rate holds them
            sessions = [await s.connect(Identity.generate()) for _ in range(3)]
            results: list[dict[int, Any]] = []

            async def fetch(session: MultiplexedSession) -> None:
                results.append(await fetch_all(session, info.sha256, total))

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for session in sessions:
                    nursery.start_soon(fetch, session)
            together = trio.current_time() - started
            assert all(assembled(r) == assembled(one) for r in results)
            assert together >= (3 * size - 2e6) / rate * 0.999
            assert s.node.share_counters.bytes_sent == 4 * size
            assert s.node.share_counters.chunks_sent == 4 * total
            assert s.node.share_counters.refused == 0


async def test_over_the_cap_a_chunk_is_refused_rather_than_queued_for_long(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """The buckets' clock stands still, so the reservations add up exactly: the peer's bucket
    (0.5 MB/s, 512 KiB deep) covers the first chunk at once, the second after ~1.05 s (within
    the 2 s bound), and would cover a third only after ~2.1 s: that one and the rest are
    refused at once with `rate_limited`, their reservations returned."""
    info = inspect_gguf(tiny_gguf)
    with trio.fail_after(TIMEOUT_S):
        async with sharing(
            tmp_path, [info], rate=1e6, peer_rate=0.5e6, max_wait_s=2.0, clock=lambda: 0.0
        ) as s:
            answers: list[wire.Message] = []

            async def one(i: int) -> None:
                answers.append(await ask(s.session, wire.FetchChunk(0, info.sha256, i)))

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
            served = [a for a in answers if isinstance(a, wire.Chunk)]
            refused = [a for a in answers if isinstance(a, wire.Error)]
            assert len(served) == 2 and len(refused) == 6
            assert all(a.code is ErrorCode.RATE_LIMITED for a in refused)
            assert s.node.share_counters.refused == 6
            assert s.node.share_counters.chunks_sent == 2
            # another peer has its own bucket, and the node's still has room for one chunk
            other = await s.connect(Identity.generate())
            assert isinstance(await ask(other, wire.FetchChunk(0, info.sha256, 0)), wire.Chunk)


async def test_a_changed_file_is_never_sent_and_the_tamper_hook_corrupts_on_purpose(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    path = tmp_path / "copy.gguf"
    shutil.copyfile(tiny_gguf, path)
    info = attrs.evolve(inspect_gguf(tiny_gguf), path=str(path))
    # a file whose content is not what the record names (replaced before the node started)
    stale = attrs.evolve(info, sha256=hashlib.sha256(b"what the record said").hexdigest())

    def tamper(index: int, data: bytes) -> bytes:
        return bytes([data[0] ^ 1]) + data[1:] if index == 1 else data

    with trio.fail_after(TIMEOUT_S):
        async with sharing(tmp_path, [info, stale], tamper=tamper) as s:
            page = await ask(s.session, wire.FetchManifest(0, info.sha256))
            assert isinstance(page, wire.ManifestPage)
            good = await ask(s.session, wire.FetchChunk(0, info.sha256, 0))
            bad = await ask(s.session, wire.FetchChunk(0, info.sha256, 1))
            assert isinstance(good, wire.Chunk) and chunk_digest(good.data) == page.hashes[0]
            assert isinstance(bad, wire.Chunk) and chunk_digest(bad.data) != page.hashes[1]
            # the file changes on disk while the node runs: its size or mtime moved, so no chunk
            # of it is sent any more (not even one checked before: the file is no longer the one
            # the record names)
            with open(path, "r+b") as f:
                f.seek(2 * CHUNK_SIZE + 100)
                f.write(b"\xff" * 16)
            os.utime(path, ns=(1, 1))  # a new mtime even where the clock's tick is coarse
            for index in (2, 3, 0):
                changed = await ask(s.session, wire.FetchChunk(0, info.sha256, index))
                assert isinstance(changed, wire.Error) and changed.code is ErrorCode.INTERNAL
                assert "changed on disk" in changed.message
            for msg in (wire.FetchManifest(0, stale.sha256), wire.FetchChunk(0, stale.sha256, 0)):
                refused = await ask(s.session, msg)
                assert isinstance(refused, wire.Error) and refused.code is ErrorCode.INTERNAL
                assert "changed on disk" in refused.message


async def test_shares_hold_the_peers_places_beside_requests_and_follow_the_nodes_state(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    info = inspect_gguf(tiny_gguf)
    state: list[tuple[ErrorCode, str]] = []
    admission = AdmissionControl(clock=time.monotonic, per_peer_concurrency=1)
    with trio.fail_after(TIMEOUT_S):
        async with sharing(
            tmp_path, [info], admission, refusal=lambda: state[0] if state else None
        ) as s:
            fetch = wire.FetchChunk(0, info.sha256, 0)
            assert isinstance(await ask(s.session, fetch), wire.Chunk)
            # one generation in flight from this peer takes its only place
            assert admission.try_admit(s.client.peer_id) is None
            busy = await ask(s.session, fetch)
            assert isinstance(busy, wire.Error) and busy.code is ErrorCode.BUSY
            admission.release(s.client.peer_id)
            # hundreds of chunk requests take no request-rate token (5/s, burst 20)
            for _ in range(25):
                assert isinstance(await ask(s.session, fetch), wire.Chunk)
            assert admission.try_admit(s.client.peer_id) is None  # requests still admitted
            admission.release(s.client.peer_id)
            state.append((ErrorCode.PAUSED, "node is paused by its owner"))
            paused = await ask(s.session, fetch)
            assert isinstance(paused, wire.Error) and paused.code is ErrorCode.PAUSED
    disabled_dir = tmp_path / "disabled"
    disabled_dir.mkdir()
    with trio.fail_after(TIMEOUT_S):
        async with sharing(disabled_dir, [info], enabled=False) as s:
            refused = await ask(s.session, wire.FetchManifest(0, info.sha256))
            assert isinstance(refused, wire.Error) and refused.code is ErrorCode.UNKNOWN_MODEL
            assert "does not share" in refused.message
