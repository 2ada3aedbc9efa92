"""Pulling a GGUF from real nodes on 127.0.0.1: from one peer; from three with one that corrupts
every chunk and one killed mid-transfer; resume after an interruption; and what a corrupted
chunk leaves on disk (nothing). The tiny GGUF is ~6 MB: 12 chunks of 512 KiB."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import trio

from inference.sha256_cache import Sha256Cache, sha256_file
from p2p.client.network import open_client
from p2p.errors import ErrorCode
from p2p.protocol.share_wire import CHUNK_SIZE, chunk_count, chunk_length
from p2p.share.fetcher import pull
from p2p.share.pull_files import PartFile, PullError, load_state, partial_paths
from p2p.share.pull_progress import PullProgress
from tests.p2p.share.live_share import Seeder, bootstrap_of, seeders

NAME = "tiny-llama"
TIMEOUT_S = 90


def corrupt(_index: int, data: bytes) -> bytes:
    """Every byte changed: no position of a corrupted chunk equals the original's."""
    return bytes((b + 1) % 256 for b in data)


def foreign_bytes(part: Path, original: bytes) -> int:
    """Bytes of the partial file that are neither unwritten (0) nor the original's."""
    here = np.frombuffer(part.read_bytes(), dtype=np.uint8)
    there = np.frombuffer(original, dtype=np.uint8)
    return int(np.count_nonzero((here != 0) & (here != there)))


async def test_pull_from_one_peer_lands_the_verified_file_in_the_cache(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    sha = sha256_file(tiny_gguf)
    seen: list[PullProgress] = []
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            result = await pull(client, NAME, cache, on_progress=seen.append)
            again = await pull(client, sha, cache)
    assert result.path == cache / f"{NAME}.gguf"
    assert result.path.read_bytes() == tiny_gguf.read_bytes()
    assert result.sha256 == sha and result.size == tiny_gguf.stat().st_size
    assert result.fetched_bytes == result.size and result.resumed_bytes == 0
    assert [p.peer_id for p in result.peers] == [nodes[0].ready.peer_id]
    assert result.peers[0].chunks == chunk_count(result.size)
    assert Sha256Cache(cache).lookup(result.path) == sha  # a node serving it hashes nothing
    assert list((cache / "partial").iterdir()) == []  # no partial file, no state file left
    done = [p.verified_bytes for p in seen]
    assert done == sorted(done) and done[-1] == result.size
    assert again.already_present and again.path == result.path


async def test_three_peers_one_corrupting_one_killed_midway_give_the_right_file(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    original = tiny_gguf.read_bytes()
    sha = sha256_file(tiny_gguf)
    part, _state = partial_paths(cache, sha)
    served_by_doomed = trio.Event()
    foreign: list[int] = []

    def doomed(_index: int, data: bytes) -> bytes:
        served_by_doomed.set()  # its first chunk goes out; then the node dies
        return data

    def check_disk(_p: PullProgress) -> None:
        foreign.append(foreign_bytes(part, original))

    specs = [Seeder(tiny_gguf), Seeder(tiny_gguf, tamper=corrupt), Seeder(tiny_gguf, doomed)]
    with trio.fail_after(TIMEOUT_S):
        async with seeders(tmp_path, specs) as nodes, trio.open_nursery() as nursery:

            async def kill_when_it_served() -> None:
                await served_by_doomed.wait()
                nodes[2].kill()

            nursery.start_soon(kill_when_it_served)
            async with open_client(bootstrap_of(nodes[0])) as client:
                result = await pull(client, NAME, cache, on_progress=check_disk, depth=2)
    assert result.path.read_bytes() == original
    by_peer = {p.peer_id: p for p in result.peers}
    honest, liar, dead = (by_peer[n.ready.peer_id] for n in nodes)
    assert "hash" in liar.dropped and liar.chunks == 0
    assert result.strikes >= 2
    assert dead.dropped  # its session broke; what it held went to the others
    assert honest.chunks + dead.chunks == chunk_count(len(original))
    assert foreign and set(foreign) == {0}  # no corrupted byte was ever on disk


async def test_a_peer_that_only_corrupts_leaves_nothing_on_disk(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    part, _state = partial_paths(cache, sha256_file(tiny_gguf))
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf, tamper=corrupt)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            with pytest.raises(PullError) as failed:
                await pull(client, NAME, cache)
    assert failed.value.code is ErrorCode.UNAVAILABLE
    assert "failed their hash" in str(failed.value)
    assert part.read_bytes() == bytes(tiny_gguf.stat().st_size)  # not one byte written
    assert not (cache / f"{NAME}.gguf").exists()


async def test_an_interrupted_pull_resumes_and_refetches_a_chunk_damaged_since(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    original = tiny_gguf.read_bytes()
    sha = sha256_file(tiny_gguf)
    part, state = partial_paths(cache, sha)
    total = chunk_count(len(original))
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            with trio.CancelScope() as interrupted:

                def stop_at_three(p: PullProgress) -> None:
                    if p.verified_bytes >= 3 * CHUNK_SIZE:
                        interrupted.cancel()  # as Ctrl-C would, mid-transfer

                await pull(client, NAME, cache, on_progress=stop_at_three, depth=1)
            assert interrupted.cancelled_caught
            kept = load_state(state, sha, len(original), total)
            assert 3 <= len(kept) < total
            damaged = min(kept)
            with open(part, "r+b") as f:  # the disk lost a chunk the state names
                f.seek(damaged * CHUNK_SIZE)
                f.write(b"\xff" * 64)
            result = await pull(client, NAME, cache)
    resumed = sum(chunk_length(len(original), i) for i in kept - {damaged})
    assert result.resumed_bytes == resumed
    assert result.fetched_bytes == len(original) - resumed
    assert result.path.read_bytes() == original
    assert not state.exists() and not part.exists()


async def test_a_node_that_shares_nothing_is_named_in_the_error(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf, share=False)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            with pytest.raises(PullError) as failed:
                await pull(client, NAME, tmp_path / "cache")
    assert failed.value.code is ErrorCode.UNAVAILABLE
    assert "sent its manifest" in str(failed.value) and "unknown_model" in str(failed.value)
    assert nodes[0].ready.peer_id[:12] in str(failed.value)


async def test_a_second_pull_of_the_same_file_and_a_full_disk_are_refused_up_front(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    size = tiny_gguf.stat().st_size
    part, _state = partial_paths(cache, sha256_file(tiny_gguf))
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            other = PartFile(part, size)  # another pull holds the partial file
            try:
                with pytest.raises(PullError, match="another pull of this file is under way"):
                    await pull(client, NAME, cache)
            finally:
                other.close()
            free = shutil.disk_usage(cache)._replace(free=size // 2)
            monkeypatch.setattr(shutil, "disk_usage", lambda _path: free)
            part.unlink()
            with pytest.raises(PullError, match=r"disk full: tiny-llama needs 5\.8 MB"):
                await pull(client, NAME, cache)
    assert not (cache / f"{NAME}.gguf").exists()
