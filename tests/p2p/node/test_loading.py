"""Starting a node. Models llama.cpp refuses: the node serves the others and says why; out of
memory names the memory the model needed; the context published is the one the node runs. Real
llama.cpp on generated GGUFs. Joining: a bootstrap peer still starting is retried."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from crypto.identity import Identity
from inference.llama_lowlevel import LoadedModel, LoadFailed
from inference.model_file import inspect_gguf
from p2p.dht.node import open_dht
from p2p.node.models import default_threads, load_models, physical_cores, served_context
from p2p.node.runtime import Node, NodeConfig, NodeError, join
from p2p.protocol import wire
from p2p.session.local import local_pair

# The tiny model's KV cache per token: 2 layers x (K + V) x 2 KV heads x 64 dims x f16.
TINY_KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 2


@pytest.fixture
def foreign_arch(tmp_path: Path, make_tiny_gguf: Callable[..., Path]) -> Path:
    return make_tiny_gguf(tmp_path / "alien.gguf", architecture="gpunet-no-such-arch")


async def test_a_model_of_an_unknown_architecture_is_left_out_with_the_reason(
    tiny_gguf: Path, foreign_arch: Path, tmp_path: Path
) -> None:
    config = NodeConfig(
        data_dir=tmp_path, models=(inspect_gguf(foreign_arch), inspect_gguf(tiny_gguf))
    )
    lines: list[str] = []
    served = await load_models(config, benchmark=False, on_progress=lines.append)
    try:
        assert [m.info.name for m in served] == ["tiny-llama"]
        refusal = [line for line in lines if line.startswith("not serving alien")]
        assert len(refusal) == 1
        assert "cannot load the architecture 'gpunet-no-such-arch'" in refusal[0]
        node = Node(config, Identity.generate())
        node.served = served
        record = node.build_record("127.0.0.1:1")
        assert [m.name for m in record.models] == ["tiny-llama"]
    finally:
        for m in served:
            await m.worker.aclose()


async def test_no_loadable_model_is_a_node_error(foreign_arch: Path, tmp_path: Path) -> None:
    config = NodeConfig(data_dir=tmp_path, models=(inspect_gguf(foreign_arch),))
    with pytest.raises(NodeError, match=r"no model could be loaded: alien\.gguf: this llama\.cpp"):
        await load_models(config, benchmark=False)


def test_a_kv_cache_larger_than_memory_is_a_clear_out_of_memory_error(tiny_gguf: Path) -> None:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tokens = 1 << (4 * ram // TINY_KV_BYTES_PER_TOKEN).bit_length()  # over 4x RAM, a power of 2
    with pytest.raises(LoadFailed) as info:
        LoadedModel.load(tiny_gguf, n_ctx=tokens, n_seq=1, n_threads=1, n_gpu_layers=0)
    assert info.value.out_of_memory
    assert f"not enough memory for the KV cache of 1 sequences of {tokens} tokens" in str(
        info.value
    )


async def test_out_of_memory_names_what_the_model_needs(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference.batching import BatchingWorker

    async def refuse(self: BatchingWorker) -> None:
        raise LoadFailed("tiny-llama.gguf: not enough memory to load it", out_of_memory=True)

    monkeypatch.setattr(BatchingWorker, "start", refuse)
    config = NodeConfig(data_dir=tmp_path, models=(inspect_gguf(tiny_gguf),), slots=8)
    with pytest.raises(NodeError) as info:
        await load_models(config, benchmark=False)
    assert re.search(r"it needs about [1-9]\d* MiB", str(info.value))  # weights + KV + buffers
    assert "KV cache of 8 slots x 512 tokens: try fewer --slots" in str(info.value)


async def test_the_record_publishes_the_context_the_node_runs_and_requests_are_logged(
    tiny_gguf: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--ctx-size 256 on a model trained for 512: the record says 256 (it used to say what the
    GGUF was trained for), and a served request leaves one line in the request log."""
    config = NodeConfig(data_dir=tmp_path, models=(inspect_gguf(tiny_gguf),), n_ctx=256)
    node = Node(config, Identity.generate())
    node.served = await load_models(config, benchmark=False)
    try:
        assert node.served[0].n_ctx == 256
        [entry] = node.build_record("127.0.0.1:1").models
        assert entry.context_length == 256
        caplog.set_level(logging.INFO, logger="p2p.node.requests")
        client, node_side = local_pair(node.identity.peer_id)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.handle_connection, node_side)
                await client.send(wire.Generate(0, "tiny-llama", "hello", 5))
                while not isinstance(msg := await client.receive(), wire.Done):
                    assert not isinstance(msg, wire.Error | None), msg
                await client.aclose()  # the node's side ends, having logged the request
        [line] = [r.getMessage() for r in caplog.records if r.name == "p2p.node.requests"]
        assert line.startswith(f"served tiny-llama to {node.identity.peer_id[:12]}: ")
        assert "+ 5 tokens" in line and "tok/s" in line and line.endswith("ok (length)")
    finally:
        for m in node.served:
            await m.worker.aclose()


def test_the_context_is_capped_by_what_the_model_was_trained_for(tiny_gguf: Path) -> None:
    info = inspect_gguf(tiny_gguf)
    assert info.context_length == 512
    assert served_context(2048, info) == 512
    assert served_context(128, info) == 128
    assert served_context(4096, attrs.evolve(info, context_length=0)) == 4096


def test_threads_default_to_the_physical_cores() -> None:
    two_cores_four_threads = "".join(
        f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 2}\n\n" for i in range(4)
    )
    assert physical_cores(two_cores_four_threads) == 2
    assert physical_cores("processor\t: 0\n") == 0  # no topology given: the caller decides
    assert 1 <= default_threads() <= (os.cpu_count() or 1)


async def test_a_node_keeps_trying_a_bootstrap_peer_that_is_still_starting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real DHT nodes on 127.0.0.1: the bootstrap peer's port answers nobody at first, then a
    peer starts there after the joining node's first retry; the join then succeeds."""
    reserved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    retries: list[float] = []
    async with (
        open_dht(Identity.generate(), "127.0.0.1", 0, rpc_timeout=0.5) as joining,
        trio.open_nursery() as nursery,
    ):

        async def start_peer() -> None:
            async with open_dht(Identity.generate(), "127.0.0.1", port, rpc_timeout=0.5):
                await trio.sleep_forever()

        def on_retry(wait: float) -> None:
            retries.append(wait)
            if len(retries) == 1:
                reserved.close()
                nursery.start_soon(start_peer)

        with trio.fail_after(60):
            await join(joining, [("127.0.0.1", port)], timeout_s=120, on_retry=on_retry)
        with pytest.raises(NodeError, match="no bootstrap peer answered"), trio.fail_after(30):
            await join(joining, [("127.0.0.1", _free_udp_port())], timeout_s=0)
        nursery.cancel_scope.cancel()
    reserved.close()  # closed already, unless the first try failed the test
    assert retries[0] == 1.0  # the first wait of the backoff
    assert any("no bootstrap peer answered yet" in r.getMessage() for r in caplog.records)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
