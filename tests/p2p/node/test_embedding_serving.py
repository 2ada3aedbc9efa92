"""A node serving `Embed` requests over a real session: the embedding model answers with its
vectors, and whatever a client sends that does not fit — an Embed to a generation model, another
width, a text longer than the context, an unknown model, a generation to the embedding model —
gets a code naming the problem while the node goes on. The record tells which model embeds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import trio

from inference.model_file import inspect_gguf
from p2p.client.embeddings import embed
from p2p.client.network import lookup_key, open_client
from p2p.errors import ErrorCode
from p2p.node.runtime import NodeConfig, NodeReady, run_node
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession

TIMEOUT_S = 120


async def ask(session: MultiplexedSession, msg: wire.Embed | wire.Generate) -> object:
    """The final answer of *msg* (tokens skipped)."""
    async with session.request(msg) as (_rid, inbox):
        while True:
            answer = await inbox.receive()
            if not isinstance(answer, wire.Token):
                return answer


async def test_embed_requests_and_refusals(
    tmp_path: Path, tiny_gguf: Path, make_tiny_gguf: Callable[..., Path]
) -> None:
    embed_path = make_tiny_gguf(tmp_path / "tiny-embed.gguf", pooling_type=1)
    text, emb = inspect_gguf(tiny_gguf), inspect_gguf(embed_path)
    config = NodeConfig(
        data_dir=tmp_path / "node", models=(text, emb), dht_port=0, port=0, n_threads=1,
        benchmark=False,
    )  # fmt: skip
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            ready: NodeReady = await nursery.start(run_node, config)
            host, _, port = ready.dht_address.rpartition(":")
            async with open_client(((host, int(port)),)) as client:
                (record,) = (await client.find_records(lookup_key(emb.sha256)))[0]
                entries = {m.name: m for m in record.models}
                assert entries["tiny-embed"].capabilities == ("embedding",)
                assert "embedding" not in entries[text.name].capabilities
                session = await client.pool.get(record.peer_id, record.addresses)

                good = await ask(session, wire.Embed(0, emb.sha256, ("hello", "world"), 256))
                assert isinstance(good, wire.Embeddings), good
                assert good.dimensions == 256 and len(good.vectors) == 2
                assert abs(float(np.linalg.norm(good.floats(0))) - 1) < 1e-5

                hostiles: list[tuple[wire.Embed | wire.Generate, ErrorCode, str]] = [
                    (wire.Embed(0, text.sha256, ("x",)), ErrorCode.BAD_REQUEST, "does not serve"),
                    (wire.Embed(0, emb.sha256, ("x",), 128), ErrorCode.BAD_REQUEST, "dimensions"),
                    (wire.Embed(0, emb.sha256, ("x " * 600,)), ErrorCode.TOO_LONG, "at most 512"),
                    (wire.Embed(0, "nothing", ("x",)), ErrorCode.UNKNOWN_MODEL, "not served"),
                    (
                        wire.Generate(0, emb.sha256, "hello", 4),
                        ErrorCode.BAD_REQUEST,
                        "embedding model",
                    ),
                ]
                for hostile, code, words in hostiles:
                    refused = await ask(session, hostile)
                    assert isinstance(refused, wire.Error), refused
                    assert refused.code is code and words in refused.message, refused

                again = await ask(session, wire.Embed(0, emb.sha256, ("hello", "world")))
                assert isinstance(again, wire.Embeddings) and again.vectors == good.vectors
                done = await ask(session, wire.Generate(0, text.sha256, "hello", 4))
                assert isinstance(done, wire.Done) and done.completion_tokens == 4
            nursery.cancel_scope.cancel()


async def test_a_busy_provider_passes_the_request_to_the_next(
    tmp_path: Path, make_tiny_gguf: Callable[..., Path]
) -> None:
    """Two nodes serve the embedding model; the one ranked first refuses everything as busy
    (max_requests 0), and the client's embed() moves on to the other, as generation does."""
    emb = inspect_gguf(make_tiny_gguf(tmp_path / "tiny-embed.gguf", pooling_type=1))

    def config(name: str, **more: object) -> NodeConfig:
        return NodeConfig(
            data_dir=tmp_path / name, models=(emb,), dht_port=0, port=0, n_threads=1,
            benchmark=False, **more,  # type: ignore[arg-type]
        )  # fmt: skip

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            good: NodeReady = await nursery.start(run_node, config("good"))
            host, _, port = good.dht_address.rpartition(":")
            bootstrap = ((host, int(port)),)
            busy: NodeReady = await nursery.start(
                run_node, config("busy", bootstrap=bootstrap, max_requests=0)
            )
            async with open_client(bootstrap) as client:
                client.ranker.record_failure(good.peer_id)  # the busy node now ranks first
                answer, provider = await embed(client, wire.Embed(0, "tiny-embed", ("hi",)))
                assert provider.record.peer_id == good.peer_id != busy.peer_id
                assert len(answer.vectors) == 1 and answer.dimensions == 256
                assert client.ranker.in_backoff(busy.peer_id)  # it was asked, and refused
            nursery.cancel_scope.cancel()
