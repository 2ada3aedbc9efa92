"""A peer that lies about the manifest: outvoted, it is never asked for chunks; alone (or in the
majority) its chunks match its own manifest, but the whole file's sha256 does not match the one
the signed records name, and the pull keeps nothing.

The liar is a real node's request handling (`Node.handle_connection` over a real Noise
session) whose share handler answers with a consistent false manifest and false chunks; it is
offered to the fetcher beside the honest providers the DHT found."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from crypto.identity import Identity
from inference.sha256_cache import sha256_file
from p2p.client.network import Client, open_client
from p2p.dht.records import CapabilityRecord
from p2p.errors import ErrorCode
from p2p.node.connection import Reply
from p2p.node.runtime import Node, NodeConfig
from p2p.protocol import wire
from p2p.protocol.share_wire import CHUNK_SIZE, chunk_digest
from p2p.session.secure import serve_sessions
from p2p.share.fetcher import pull_file
from p2p.share.file_choice import FileChoice, agreed_manifest, choose_file
from p2p.share.pull_files import PullError, partial_paths
from tests.p2p.share.live_share import Seeder, bootstrap_of, seeders

NAME = "tiny-llama"
TIMEOUT_S = 90


@attrs.define
class Liar:
    record: CapabilityRecord
    asked: list[str]


@asynccontextmanager
async def lying_peer(base: Path, model: Path, like: CapabilityRecord) -> AsyncIterator[Liar]:
    """A peer serving a false version of *model* (every byte changed) under its sha256, with a
    manifest that matches the false bytes."""
    false = bytes((b + 1) % 256 for b in model.read_bytes())
    chunks = [false[i : i + CHUNK_SIZE] for i in range(0, len(false), CHUNK_SIZE)]
    hashes = tuple(chunk_digest(c) for c in chunks)
    node = Node(NodeConfig(data_dir=base / "liar", models=()), Identity.generate())
    asked: list[str] = []

    async def lie(msg: wire.FetchManifest | wire.FetchChunk, reply: Reply) -> None:
        asked.append(type(msg).__name__)
        if isinstance(msg, wire.FetchManifest):
            await reply.send(wire.ManifestPage(msg.id, msg.sha256, len(false), 0, hashes))
        else:
            await reply.send(wire.Chunk(msg.id, msg.sha256, msg.index, chunks[msg.index]))

    node.serve_share = lie
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            serve_sessions, node.identity, "127.0.0.1", 0, node.handle_connection
        )
        port = listeners[0].socket.getsockname()[1]
        record = attrs.evolve(
            like,
            peer_id=node.identity.peer_id,
            public_key=node.identity.public_key,
            addresses=(f"127.0.0.1:{port}",),
            relays=(),
        )
        yield Liar(record, asked)
        nursery.cancel_scope.cancel()


async def honest_choice(client: Client) -> FileChoice:
    choice = await choose_file(client, NAME)
    assert len(choice.providers) == 2
    return choice


async def test_a_liar_outvoted_on_the_manifest_is_never_asked_for_chunks(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf), Seeder(tiny_gguf)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            choice = await honest_choice(client)
            async with lying_peer(tmp_path, tiny_gguf, choice.providers[0]) as liar:
                # the liar is asked first: its manifest is one of the three votes
                offered = attrs.evolve(choice, providers=(liar.record, *choice.providers))
                manifest, usable, problems = await agreed_manifest(client, offered)
                assert liar.record.peer_id not in {r.peer_id for r in usable}
                assert any("disagrees" in p for p in problems)
                result = await pull_file(client, offered, cache)
    assert result.path.read_bytes() == tiny_gguf.read_bytes()
    assert manifest.size == tiny_gguf.stat().st_size
    assert "FetchChunk" not in liar.asked and "FetchManifest" in liar.asked
    assert liar.record.peer_id not in {p.peer_id for p in result.peers}


async def test_a_liar_alone_makes_the_pull_fail_at_the_whole_file_check_and_keep_nothing(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    part, state = partial_paths(cache, sha256_file(tiny_gguf))
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf), Seeder(tiny_gguf)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            choice = await honest_choice(client)
            async with lying_peer(tmp_path, tiny_gguf, choice.providers[0]) as liar:
                only_liar = attrs.evolve(choice, providers=(liar.record,))
                with pytest.raises(PullError) as failed:
                    await pull_file(client, only_liar, cache)
    assert failed.value.code is ErrorCode.INTERNAL
    assert "lie" in str(failed.value) and "nothing was kept" in str(failed.value)
    assert "FetchChunk" in liar.asked  # its chunks matched its manifest...
    assert not part.exists() and not state.exists()  # ...and were thrown away with the file
    assert list(cache.glob("*.gguf")) == []
