"""What a pull leaves behind for later: the pulled file's manifest in the model cache (a node that
serves the file hashes nothing), and the peers it caught lying, asked last by the next pull (in
the process, and for a day in a file). Real nodes on 127.0.0.1 and the tiny GGUF; the liar is
test_pull_liars.py's (a real node's request handling over a real Noise session)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import trio

from p2p.client.network import open_client
from p2p.errors import ErrorCode
from p2p.share import file_choice
from p2p.share.fetcher import pull, pull_file
from p2p.share.manifest import ManifestCache, compute_manifest
from p2p.share.pull_files import PullError
from p2p.share.suspects import SUSPECT_FOR_S, SuspectPeers
from tests.p2p.share.live_share import Seeder, bootstrap_of, seeders
from tests.p2p.share.test_pull_liars import honest_choice, lying_peer

NAME = "tiny-llama"
TIMEOUT_S = 90


async def test_a_pulled_file_s_manifest_is_remembered_so_serving_it_hashes_nothing(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            result = await pull(client, NAME, cache)
    manifests = ManifestCache(cache)  # what the node serving the pulled file will open
    remembered = manifests.lookup(result.path)
    assert remembered == compute_manifest(result.path)
    assert manifests.manifest(result.path) == remembered and manifests.computed == 0


def test_remember_refuses_a_manifest_of_another_size(tiny_gguf: Path, tmp_path: Path) -> None:
    manifest = compute_manifest(tiny_gguf)
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny_gguf.read_bytes()[:-1])
    with pytest.raises(ValueError, match="bytes"):
        ManifestCache(tmp_path / "cache").remember(other, manifest)
    assert ManifestCache(tmp_path / "cache").lookup(other) is None


async def test_a_peer_that_made_a_pull_fail_is_asked_last_by_the_next_pull(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One manifest vote per pull: whoever is asked first decides, so the order is what counts.
    monkeypatch.setattr(file_choice, "MANIFEST_PEERS", 1)
    cache = tmp_path / "cache"
    suspects = SuspectPeers(tmp_path / "data" / "suspect-peers.json")
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf), Seeder(tiny_gguf)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            choice = await honest_choice(client)
            async with lying_peer(tmp_path, tiny_gguf, choice.providers[0]) as liar:
                liar_first = attrs.evolve(choice, providers=(liar.record, *choice.providers))
                with pytest.raises(PullError) as failed:
                    await pull_file(client, liar_first, cache, suspects=suspects)
                assert failed.value.code is ErrorCode.INTERNAL
                assert suspects.is_suspect(liar.record.peer_id)
                asked_before = len(liar.asked)
                result = await pull_file(client, liar_first, cache, suspects=suspects)
                # the next process reads the same file: the liar stays behind the others
                later = SuspectPeers(suspects.path)
                order = later.order(liar_first.providers, lambda r: r.peer_id)
    assert result.path.read_bytes() == tiny_gguf.read_bytes()
    assert "FetchManifest" not in liar.asked[asked_before:]
    assert order[-1].peer_id == liar.record.peer_id
    assert not any(suspects.is_suspect(r.peer_id) for r in choice.providers)


async def test_a_peer_outvoted_on_the_manifest_is_remembered(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    suspects = SuspectPeers()
    with trio.fail_after(TIMEOUT_S):
        async with (
            seeders(tmp_path, [Seeder(tiny_gguf), Seeder(tiny_gguf)]) as nodes,
            open_client(bootstrap_of(nodes[0])) as client,
        ):
            choice = await honest_choice(client)
            async with lying_peer(tmp_path, tiny_gguf, choice.providers[0]) as liar:
                offered = attrs.evolve(choice, providers=(liar.record, *choice.providers))
                manifest, usable, _ = await file_choice.agreed_manifest(client, offered, suspects)
    assert "disagreed" in (suspects.reason(liar.record.peer_id) or "")
    assert set(manifest.senders) == {r.peer_id for r in choice.providers}
    assert liar.record.peer_id not in {r.peer_id for r in usable}


def test_suspects_expire_after_a_day_and_a_broken_file_counts_as_empty(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "suspect-peers.json"
    suspects = SuspectPeers(path, clock=lambda: now[0])
    suspects.note("liar", "lied")
    assert SuspectPeers(path, clock=lambda: now[0]).order(["a", "liar", "b"], str) == (
        "a",
        "b",
        "liar",
    )
    now[0] += SUSPECT_FOR_S + 1
    assert not SuspectPeers(path, clock=lambda: now[0]).is_suspect("liar")
    path.write_text("{not json")
    assert not SuspectPeers(path).is_suspect("liar")
    path.write_text(json.dumps({"x": "not a pair", "y": [1e18, 3]}))
    assert not SuspectPeers(path).is_suspect("x") and not SuspectPeers(path).is_suspect("y")
