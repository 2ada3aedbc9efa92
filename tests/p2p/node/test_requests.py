"""A node's request handling over real sessions on 127.0.0.1: reuse, multiplexing, cancellation,
admission and draining. The node runs in-process (no DHT needed) on the tiny GGUF."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from crypto.identity import Identity
from inference.model_file import inspect_gguf
from p2p.errors import ErrorCode
from p2p.node.models import load_models
from p2p.node.runtime import Node, NodeConfig
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession, SessionPool
from p2p.session.secure import serve_sessions


@asynccontextmanager
async def serving(tiny_gguf: Path, tmp_path: Path) -> AsyncIterator[tuple[Node, str]]:
    config = NodeConfig(data_dir=tmp_path, models=(inspect_gguf(tiny_gguf),))
    node = Node(config, Identity.generate())
    node.served = await load_models(config, benchmark=False)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                serve_sessions, node.identity, "127.0.0.1", 0, node.handle_connection
            )
            yield node, f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            nursery.cancel_scope.cancel()
    finally:
        for m in node.served:
            await m.worker.aclose()


async def collect(session: MultiplexedSession, request: wire.Generate) -> list[wire.Message]:
    out: list[wire.Message] = []
    async with session.request(request) as (_rid, inbox):
        while True:
            msg = await inbox.receive()
            out.append(msg)
            if isinstance(msg, (wire.Done, wire.Error)):
                return out


async def test_second_request_reuses_the_session_and_requests_multiplex(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    async with serving(tiny_gguf, tmp_path) as (node, address), trio.open_nursery() as nursery:
        pool = SessionPool(Identity.generate(), nursery)
        session = await pool.get(node.identity.peer_id, address)
        results: list[list[wire.Message]] = []

        async def one(i: int) -> None:
            s = await pool.get(node.identity.peer_id, address)
            results.append(await collect(s, wire.Generate(0, "tiny-llama", f"hi {i}", 8)))

        async with trio.open_nursery() as inner:
            for i in range(3):
                inner.start_soon(one, i)
        assert pool.handshakes == 1
        assert all(isinstance(r[-1], wire.Done) for r in results)
        assert all(r[-1].completion_tokens == 8 for r in results)  # type: ignore[union-attr]
        assert session is await pool.get(node.identity.peer_id, address)
        nursery.cancel_scope.cancel()


async def test_reproducible_request_over_the_wire_repeats_bit_for_bit_beside_other_traffic(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    def ids(messages: list[wire.Message]) -> list[int]:
        out = [t for m in messages if isinstance(m, wire.Token) for t in m.token_ids]
        done = messages[-1]
        assert isinstance(done, wire.Done)
        return out + list(done.token_ids)

    exact = wire.Generate(0, "tiny-llama", "once upon", 24, stop=("zzz",), reproducible=True)
    async with serving(tiny_gguf, tmp_path) as (node, address), trio.open_nursery() as nursery:
        session = await SessionPool(Identity.generate(), nursery).get(
            node.identity.peer_id, address
        )
        alone = await collect(session, exact)
        results: dict[str, list[wire.Message]] = {}

        async def one(name: str, request: wire.Generate) -> None:
            results[name] = await collect(session, request)

        async with trio.open_nursery() as inner:
            for i in range(3):
                inner.start_soon(one, f"other{i}", wire.Generate(0, "tiny-llama", f"x {i}", 24))
            inner.start_soon(one, "exact", exact)
        nursery.cancel_scope.cancel()
    done = alone[-1]
    assert isinstance(done, wire.Done) and done.completion_tokens == 24
    assert len(ids(alone)) == 24  # the chunks' ids and Done's held-back ids are every token
    assert ids(results["exact"]) == ids(alone)
    assert all(isinstance(r[-1], wire.Done) for r in results.values())


async def test_a_nodes_own_gateway_reaches_it_in_process(tiny_gguf: Path, tmp_path: Path) -> None:
    async with serving(tiny_gguf, tmp_path) as (node, address), trio.open_nursery() as nursery:
        pool = SessionPool(node.identity, nursery, local=node.handle_connection)
        session = await pool.get(node.identity.peer_id, address)
        results = await collect(session, wire.Generate(0, "tiny-llama", "hi", 8))
        assert isinstance(results[-1], wire.Done) and results[-1].completion_tokens == 8
        assert pool.handshakes == 0  # no Noise session, no socket
        # leaving a request early cancels it on the node, as over a real session
        async with session.request(wire.Generate(0, "tiny-llama", "hello", 400)) as (_r, inbox):
            assert isinstance(await inbox.receive(), wire.Token)
            assert node.active_requests == 1
        with trio.fail_after(10):
            await node.wait_idle()
        # another peer id still goes over the network
        other = await SessionPool(Identity.generate(), nursery, local=node.handle_connection).get(
            node.identity.peer_id, address
        )
        assert isinstance(
            (await collect(other, wire.Generate(0, "tiny-llama", "x", 2)))[-1], wire.Done
        )
        nursery.cancel_scope.cancel()


async def test_client_gone_stops_generation(tiny_gguf: Path, tmp_path: Path) -> None:
    async with serving(tiny_gguf, tmp_path) as (node, address), trio.open_nursery() as nursery:
        pool = SessionPool(Identity.generate(), nursery)
        session = await pool.get(node.identity.peer_id, address)
        async with session.request(wire.Generate(0, "tiny-llama", "hello", 400)) as (_r, inbox):
            assert isinstance(await inbox.receive(), wire.Token)
            assert node.active_requests == 1
        # leaving the block sent `cancel`; the node frees the request between two tokens
        with trio.fail_after(10):
            await node.wait_idle()
        # and a whole closed connection does the same
        session2 = await SessionPool(Identity.generate(), nursery).get(
            node.identity.peer_id, address
        )
        async with session2.request(wire.Generate(0, "tiny-llama", "hello", 400)) as (_r, inbox):
            assert isinstance(await inbox.receive(), wire.Token)
            await session2.conn.aclose()
        with trio.fail_after(10):
            await node.wait_idle()
        nursery.cancel_scope.cancel()


async def test_admission_and_draining_answer_at_once(tiny_gguf: Path, tmp_path: Path) -> None:
    async with serving(tiny_gguf, tmp_path) as (node, address), trio.open_nursery() as nursery:
        node.admission.per_peer_concurrency = 0
        session = await SessionPool(Identity.generate(), nursery).get(
            node.identity.peer_id, address
        )
        [answer] = await collect(session, wire.Generate(0, "tiny-llama", "hi", 4))
        assert isinstance(answer, wire.Error) and answer.code == ErrorCode.BUSY
        node.admission.per_peer_concurrency = 4
        node.draining = True
        [answer] = await collect(session, wire.Generate(0, "tiny-llama", "hi", 4))
        assert isinstance(answer, wire.Error) and answer.code == ErrorCode.SHUTTING_DOWN
        node.draining = False
        [answer] = await collect(session, wire.Generate(0, "no-such", "hi", 4))
        assert isinstance(answer, wire.Error) and answer.code == ErrorCode.UNKNOWN_MODEL
        nursery.cancel_scope.cancel()


def test_record_sequence_survives_a_restart_with_the_clock_set_back(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    import time
    from unittest import mock

    config = NodeConfig(data_dir=tmp_path, models=())
    ident = Identity.generate()
    first = Node(config, ident).build_record("127.0.0.1:1").seq
    with mock.patch("p2p.node.runtime.time.time", return_value=time.time() - 86400):
        again = Node(config, ident).build_record("127.0.0.1:1").seq  # a restarted node
    assert again > first
