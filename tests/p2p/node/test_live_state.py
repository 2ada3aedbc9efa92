"""Live state of a real node (issue #18): stopped via its shutdown event, it is gone from lookups
and `list_nodes` as soon as `run_node` returns (a signed withdrawal, sent before in-flight
requests drain); killed without a word, it is gone once its TTL (60 s) has passed; its load is
republished soon after it changes. Real UDP DHT nodes on 127.0.0.1; an observer's clock is moved
instead of waiting out a TTL; the republish timing is tested with trio's MockClock."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from crypto.identity import Identity
from inference.model_file import inspect_gguf
from p2p.client.network import Client, list_nodes, lookup_key, open_client
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import (
    DEFAULT_TTL_S,
    CapabilityRecord,
    LoadEntry,
    directory_key,
    sign_record,
)
from p2p.node.load_refresh import LoadChanges, Why, publish_forever, wait_for_republish
from p2p.node.runtime import Node, NodeConfig, NodeReady, _drain, run_node
from p2p.session.pool import SessionPool
from tests.test_end_to_end import NodeProcess, run

LOCAL = "127.0.0.1"
TIMEOUT_S = 120


class OffsetClock:
    """The wall clock, moved forward by `offset` (the observer's view of time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _on_store(dht: Dht, accepted: trio.Event, wanted: Callable[[CapabilityRecord], bool]) -> None:
    """Set *accepted* once *dht* has stored a record for which *wanted* holds (the DHT's
    datagrams are handled on trio's thread, so the event is set from there)."""
    protocol = dht.protocol
    rpc_store = protocol.rpc_store

    def watched(sender: object, nodeid: object, key: object, value: object) -> bool:
        stored = rpc_store(sender, nodeid, key, value)  # type: ignore[arg-type]
        slot = dht.store.slots.get(key, {}) if isinstance(key, bytes) else {}
        if stored and any(wanted(s.record) for s in slot.values()):
            accepted.set()
        return stored

    protocol.rpc_store = watched  # type: ignore[method-assign,assignment]


async def test_a_stopped_node_is_gone_at_once_and_a_killed_one_within_the_ttl(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    clock = OffsetClock()
    model = inspect_gguf(tiny_gguf)
    with trio.fail_after(TIMEOUT_S):
        async with (
            open_dht(Identity.generate(), LOCAL, 0, rpc_timeout=0.5, clock=clock) as observer,
            trio.open_nursery() as nursery,
        ):
            boot = ((LOCAL, observer.port),)
            client = Client(
                observer, Identity.generate(), SessionPool(Identity.generate(), nursery)
            )

            def config(name: str) -> NodeConfig:
                return NodeConfig(
                    data_dir=tmp_path / name, models=(model,), dht_port=0, port=0, n_threads=1,
                    benchmark=False, bootstrap=boot,
                )  # fmt: skip

            # stopped: Ctrl-C / SIGTERM set the shutdown event
            shutdown = trio.Event()
            async with trio.open_nursery() as stopping:
                ready: NodeReady = await stopping.start(
                    partial(run_node, config("a"), shutdown=shutdown)
                )
                assert [r.peer_id for r in await list_nodes(client)] == [ready.peer_id]
                shutdown.set()
            # run_node has returned: no TTL waited out
            assert await list_nodes(client) == []
            assert (await client.find_records(lookup_key(model.name), fresh=True))[0] == []
            (gone,) = await list_nodes(client, withdrawn=True)  # kept for the dashboard
            assert gone.peer_id == ready.peer_id and gone.withdrawn and gone.load.free_slots == 0
            async with open_client(boot) as fresh:  # what `gpunet peers` runs
                assert await list_nodes(fresh) == []

            # killed: cancelled without a drain, as by SIGKILL
            with trio.CancelScope() as killed:
                async with trio.open_nursery() as running:
                    b: NodeReady = await running.start(run_node, config("b"))
                    assert [r.peer_id for r in await list_nodes(client)] == [b.peer_id]
                    killed.cancel()
            found = await observer.find_records(directory_key())
            assert [(r.peer_id, r.withdrawn) for r in found] == [(b.peer_id, False)]  # lingers
            assert abs(found[0].expires_at - found[0].issued_at - 60) < 1e-6 and DEFAULT_TTL_S == 60
            clock.offset = DEFAULT_TTL_S + 1  # a minute later, as the observer sees it
            assert await observer.find_records(directory_key(), withdrawn=True) == []
            assert (await client.find_records(lookup_key(model.sha256), fresh=True))[0] == []
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_gpunet_node_processes_stopped_by_sigterm_and_killed_by_sigkill(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """The same through the CLI's signal handling: `gpunet node` processes on 127.0.0.1."""
    clock = OffsetClock()
    with trio.fail_after(TIMEOUT_S):
        async with open_dht(
            Identity.generate(), LOCAL, 0, rpc_timeout=0.5, clock=clock
        ) as observer:
            args = ["--model", str(tiny_gguf), "--bootstrap", f"{LOCAL}:{observer.port}"]
            nodes: list[NodeProcess] = []
            try:
                for name in ("a", "b"):  # blocking waits in threads: the observer must answer
                    nodes.append(await trio.to_thread.run_sync(NodeProcess, args, tmp_path / name))
                a, b = (n.ready["peer_id"] for n in nodes)

                async def listed() -> list[str]:
                    return sorted(r.peer_id for r in await observer.find_records(directory_key()))

                assert await listed() == sorted([a, b])
                assert await trio.to_thread.run_sync(nodes[0].stop, signal.SIGTERM) == 0
                assert await listed() == [b]  # the process has exited: gone at once
                boot = f"{LOCAL}:{observer.port}"
                peers = partial(
                    run, "peers", "--json", "--bootstrap", boot, data_dir=tmp_path / "c"
                )
                shown = json.loads((await trio.to_thread.run_sync(peers)).stdout)
                assert [r["peer_id"] for r in shown] == [b]
                nodes[1].proc.kill()  # SIGKILL: no goodbye
                await trio.to_thread.run_sync(nodes[1].proc.wait)
                assert await listed() == [b]  # lingers, until its TTL has passed
                clock.offset = DEFAULT_TTL_S + 1
                assert await listed() == []
            finally:
                for n in nodes:
                    if n.proc.poll() is None:
                        n.proc.kill()
                        n.proc.wait()


async def test_the_withdrawal_goes_out_before_in_flight_requests_drain(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with open_dht(Identity.generate(), LOCAL, 0, rpc_timeout=0.5) as observer:
            node = Node(NodeConfig(data_dir=tmp_path, models=()), Identity.generate())
            async with open_dht(node.identity, LOCAL, 0, rpc_timeout=0.5) as dht:
                await dht.bootstrap([(LOCAL, observer.port)])
                address = "127.0.0.1:9"
                await dht.publish(sign_record(node.build_record(address), node.identity))
                assert len(await observer.find_records(directory_key())) == 1
                withdrawn = trio.Event()
                _on_store(observer, withdrawn, lambda r: r.withdrawn)
                node.active_requests = 1  # a request in flight
                drained = trio.Event()

                async def drain() -> None:
                    await _drain(node, dht, address, trio.CancelScope())
                    drained.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain)
                    await withdrawn.wait()
                    assert not drained.is_set()  # still waiting for the request
                    assert await observer.find_records(directory_key()) == []
                    node.active_requests = 0  # the request ends
                    node._request_ended.set()
                    await drained.wait()


async def test_a_load_change_is_republished_within_seconds(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with open_dht(Identity.generate(), LOCAL, 0, rpc_timeout=0.5) as observer:
            # TTL 600 s: no periodic republish (every 200 s) during the test
            node = Node(NodeConfig(data_dir=tmp_path, models=(), ttl_s=600), Identity.generate())
            async with open_dht(node.identity, LOCAL, 0, rpc_timeout=0.5) as dht:
                await dht.bootstrap([(LOCAL, observer.port)])
                address = "127.0.0.1:9"
                first = node.build_record(address)
                await dht.publish(sign_record(first, node.identity))
                busy = trio.Event()
                _on_store(observer, busy, lambda r: r.load.active_requests == 2)
                async with trio.open_nursery() as nursery:
                    publish = partial(publish_forever, published=first.load, min_gap_s=0.2)
                    nursery.start_soon(publish, node, dht, address)
                    node.active_requests = 2
                    node.load_changes.bump()
                    await busy.wait()
                    nursery.cancel_scope.cancel()
                (found,) = await observer.find_records(directory_key())
                assert found.load.active_requests == 2 and found.seq > first.seq


async def test_republish_waits_for_the_interval_a_reach_change_or_a_debounced_load_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    published = LoadEntry(active_requests=0, free_slots=4)
    now = [published]
    changes = LoadChanges()
    reach = trio.Event()

    async def wait() -> tuple[Why, float]:
        started = trio.current_time()
        why = await wait_for_republish(
            interval_s=20, reach_changed=reach.wait, changes=changes,
            load_now=lambda: now[0], published=published, min_gap_s=5,
        )  # fmt: skip
        return why, trio.current_time() - started

    async def later(delay: float, load: LoadEntry) -> None:
        await trio.sleep(delay)
        now[0] = load
        changes.bump()

    busy = LoadEntry(active_requests=1, free_slots=3)
    assert await wait() == (Why.INTERVAL, 20)  # nothing changed
    async with trio.open_nursery() as nursery:
        nursery.start_soon(later, 1, busy)  # a change soon after the last publish: debounced
        assert await wait() == (Why.LOAD, 5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(later, 7, busy)  # a change later: published at once
        now[0] = published
        assert await wait() == (Why.LOAD, 7)
    now[0] = published
    async with trio.open_nursery() as nursery:
        nursery.start_soon(later, 1, busy)
        nursery.start_soon(later, 3, published)  # came and went within the gap: no publish
        assert await wait() == (Why.INTERVAL, 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(later, 1, busy)
        nursery.start_soon(lambda: trio.sleep(2))
        reach.set()  # a new address: at once, whatever the load does
        assert await wait() == (Why.REACH, 0)
