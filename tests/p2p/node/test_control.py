"""The owner's control of a live node (real DHT, real sessions, the tiny GGUF): status from a
session with the node's own key, `forbidden` for any other key, pause (new requests refused
`paused`, the one in flight finishes, the record shows no free slot) and resume."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio

from crypto.identity import Identity
from inference.model_file import inspect_gguf
from p2p.cli.node_control import RunningNode, send_control
from p2p.client.network import Client, lookup_key, open_client
from p2p.errors import ErrorCode
from p2p.node.models import load_models
from p2p.node.runtime import Node, NodeConfig, NodeReady, run_node
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession

TIMEOUT_S = 120


async def final(session: MultiplexedSession, msg: wire.Request) -> wire.Message:
    async with session.request(msg) as (_rid, inbox):
        while True:
            answer = await inbox.receive()
            if not isinstance(answer, wire.Token):
                assert not isinstance(answer, Exception), answer
                return answer


async def free_slots_become(client: Client, key: str, wanted: int) -> None:
    """Until a fresh lookup (a real DHT round trip each, no cache) shows *wanted* free slots:
    the node republishes on its own after a pause or resume."""
    for _ in range(1000):
        (record,) = (await client.find_records(key, fresh=True))[0]
        if record.load.free_slots == wanted:
            return
    raise AssertionError(f"the record still shows {record.load.free_slots} free slots")


async def test_status_pause_resume_over_real_sessions(tmp_path: Path, tiny_gguf: Path) -> None:
    info = inspect_gguf(tiny_gguf)
    config = NodeConfig(
        data_dir=tmp_path / "node", models=(info,), dht_port=0, port=0, n_threads=1,
        benchmark=False,
    )  # fmt: skip
    config.data_dir.mkdir()
    owner = Identity.generate()
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            ready: NodeReady = await nursery.start(partial(run_node, config, identity=owner))
            me = RunningNode(config.data_dir, ready.peer_id, ready.session_address)

            state = await send_control(me, owner, "status")
            assert state["peer_id"] == owner.peer_id and not state["paused"]
            assert [m["name"] for m in state["models"]] == ["tiny-llama"]
            assert state["models"][0]["context"] == 512 and state["models"][0]["slots"] == 4
            assert state["session_address"] == ready.session_address
            assert state["requests"] == 0

            host, _, port = ready.dht_address.rpartition(":")
            async with open_client(((host, int(port)),)) as client:
                (record,) = (await client.find_records(lookup_key(info.sha256)))[0]
                session = await client.pool.get(record.peer_id, record.addresses)
                # a stranger may neither look nor pause
                for op in ("status", "pause"):
                    refused = await final(session, wire.Control(0, op))
                    assert isinstance(refused, wire.Error) and refused.code is ErrorCode.FORBIDDEN

                long = wire.Generate(0, "tiny-llama", "once upon a time", 200, ignore_eos=True)
                async with session.request(long) as (_rid, inbox):
                    assert isinstance(await inbox.receive(), wire.Token)  # in flight now
                    paused = await send_control(me, owner, "pause")
                    assert paused["paused"] and paused["reasons"] == ["owner"]
                    assert paused["load"]["active_requests"] == 1
                    await free_slots_become(client, lookup_key(info.sha256), 0)
                    refused = await final(session, wire.Generate(0, "tiny-llama", "hi", 4))
                    assert isinstance(refused, wire.Error) and refused.code is ErrorCode.PAUSED
                    assert refused.message == "node is paused by its owner"
                    answer = await inbox.receive()
                    while isinstance(answer, wire.Token):
                        answer = await inbox.receive()
                    assert isinstance(answer, wire.Done) and answer.completion_tokens == 200

                resumed = await send_control(me, owner, "resume")
                assert not resumed["paused"]
                await free_slots_become(client, lookup_key(info.sha256), 4)
                done = await final(session, wire.Generate(0, "tiny-llama", "hi", 4))
                assert isinstance(done, wire.Done) and done.completion_tokens == 4

            state = await send_control(me, owner, "status")
            assert state["requests"] == 2 and state["outcomes"] == {"ok": 2}
            assert state["refusals"] == {"paused": 1, "forbidden": 2}
            assert state["tokens_generated"] == 204
            assert state["models"][0]["tokens_generated"] == 204
            assert state["ttft_s"]["samples"] == 2 and state["ttft_s"]["median"] >= 0
            assert state["shared"]["bytes_sent"] == 0
            nursery.cancel_scope.cancel()


async def test_a_paused_node_announces_no_free_slot(tmp_path: Path, tiny_gguf: Path) -> None:
    config = NodeConfig(data_dir=tmp_path, models=(inspect_gguf(tiny_gguf),), n_threads=1)
    node = Node(config, Identity.generate())
    node.served = await load_models(config, benchmark=False)
    try:
        assert node.build_record("127.0.0.1:1").load.free_slots == 4
        node.pause.set_owner(True)
        assert node.build_record("127.0.0.1:1").load.free_slots == 0
        node.pause.set_owner(False)
        assert node.build_record("127.0.0.1:1").load.free_slots == 4
    finally:
        for m in node.served:
            await m.worker.aclose()
