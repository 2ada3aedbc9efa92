"""Relays end to end on loopback: real nodes (`run_node`, the tiny GGUF), real TCP, real Noise.

Two relays R1, R2 (reachable: they learn `direct` from each other's dial-back) and volunteers
behind a "NAT": each binds one loopback address but dials from, and advertises, another where
nothing listens, so every dial-back fails and so does every direct dial of its record's address,
as behind a home router. They learn `relayed`, reserve at the relays, and clients reach them only
through a relay. R1 takes two reservations at most, so the third volunteer is refused there
(`relay_full`) and reserves at R2 alone.

What the relays forward is captured by instrumenting their splice (`ReachService.forward_hook`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from crypto.identity import Identity
from inference.model_file import inspect_gguf
from p2p.client.failover import generate
from p2p.client.network import open_client
from p2p.dht.records import RelayHint, node_key
from p2p.errors import ErrorCode
from p2p.host_port import parse_host_port
from p2p.node import runtime
from p2p.node.config import NodeConfig, NodeReady
from p2p.protocol import wire
from p2p.reach import node_tasks
from p2p.reach.node_tasks import ReachContext
from p2p.reach.relay_client import dial_via_relay, hold_reservation
from p2p.reach.relay_service import ReachService
from p2p.reach.relay_table import RelayRefused
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError

TEST_TIMEOUT_S = 150.0
SECRET = "the-secret-prompt-4711 about zebras"


@attrs.define
class Net:
    services: dict[str, ReachService] = attrs.Factory(dict)  # by peer id
    contexts: dict[str, ReachContext] = attrs.Factory(dict)
    scopes: dict[str, trio.CancelScope] = attrs.Factory(dict)
    ready: dict[str, NodeReady] = attrs.Factory(dict)  # by name
    started: dict[str, trio.Event] = attrs.Factory(dict)  # by peer id: its reach task runs

    def event(self, peer_id: str) -> trio.Event:
        return self.started.setdefault(peer_id, trio.Event())

    async def state(self, name: str) -> Any:
        await self.event(self.peer(name)).wait()
        return self.contexts[self.peer(name)].state

    def peer(self, name: str) -> str:
        return self.ready[name].peer_id

    def hint(self, name: str) -> RelayHint:
        return RelayHint(self.peer(name), self.ready[name].session_address)


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> Net:
    """Hands of the test on each node's relay service and reach state (by wrapping the two
    factories the runtime calls)."""
    out = Net()
    make_service, keep = node_tasks.reach_service, node_tasks.keep_reachability

    def service(identity: Identity, *args: Any) -> ReachService:
        out.services[identity.peer_id] = made = make_service(identity, *args)
        return made

    async def reachability(ctx: ReachContext) -> None:
        # The "NAT" here (a source address where nothing listens) filters nothing a hole punch
        # sends, so the volunteers answer none: these requests must go through the relays
        # (tests/netns/test_hole_punch.py punches through real NATs).
        ctx.punch = None
        out.contexts[ctx.identity.peer_id] = ctx
        out.event(ctx.identity.peer_id).set()
        await keep(ctx)

    monkeypatch.setattr("p2p.node.runtime.reach_service", service)
    monkeypatch.setattr("p2p.node.runtime.keep_reachability", reachability)
    return out


async def _node_in_scope(
    config: NodeConfig, scope: trio.CancelScope, task_status: trio.TaskStatus[NodeReady]
) -> None:
    with scope:
        await runtime.run_node(config, task_status=task_status)


async def start(
    nursery: trio.Nursery, net: Net, name: str, base: Path, model: Path, host: str, **kw: Any
) -> NodeReady:
    config = NodeConfig(
        data_dir=base / name,
        models=(inspect_gguf(model),),
        host=host,
        dht_port=0,
        port=0,
        n_threads=1,
        benchmark=False,
        port_mapping=False,
        reach_retry_s=0.3,
        **kw,
    )
    scope = trio.CancelScope()
    ready: NodeReady = await nursery.start(_node_in_scope, config, scope)
    net.scopes[name], net.ready[name] = scope, ready
    return ready


async def until(check: Callable[[], bool], net: Net, name: str) -> None:
    """Wait, check by check of *name*'s reachability task, until *check* holds."""
    state = await net.state(name)
    for _ in range(200):
        if check():
            return
        with trio.move_on_after(0.5):  # a relay change or a check, whichever comes first
            async with trio.open_nursery() as n:
                n.start_soon(_first_of, n, state.wait_checked)
                n.start_soon(_first_of, n, state.wait_changed)
    raise AssertionError(f"{name}: condition never held")


async def _first_of(nursery: trio.Nursery, wait: Callable[[], Any]) -> None:
    await wait()
    nursery.cancel_scope.cancel()


async def until_published(client: Any, peer_id: str, relays: int) -> None:
    """Until the DHT holds a record of *peer_id* naming *relays* relays (bounded lookups)."""
    for _ in range(100):
        records = await client.dht.find_records(node_key(peer_id))
        if records and len(records[0].relays) == relays:
            return
        await trio.sleep(0.1)  # a lookup, not synchronisation: the node publishes on its own
    raise AssertionError(f"{peer_id[:12]}'s record never named {relays} relays")


def behind_nat(i: int) -> dict[str, Any]:
    """Bind 127.0.3.i, but dial from and advertise 127.0.4.i, where nothing listens."""
    return {"source_host": f"127.0.4.{i}", "advertise_host": f"127.0.4.{i}"}


async def test_relayed_volunteers_are_served_through_relays_that_learn_nothing(
    tiny_gguf: Path, make_tiny_gguf: Callable[..., Path], tmp_path: Path, net: Net
) -> None:
    other = make_tiny_gguf(tmp_path / "relay-model.gguf", seed=1)  # relays serve another file
    model = inspect_gguf(tiny_gguf).sha256
    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            r1 = await start(
                nursery, net, "r1", tmp_path, other, "127.0.1.1", relay_max_reservations=2
            )
            boot = (parse_host_port(r1.dht_address),)
            await start(nursery, net, "r2", tmp_path, other, "127.0.2.1", bootstrap=boot)
            # dial-back: a reachable node learns `direct`
            for name in ("r1", "r2"):
                state = await net.state(name)
                await until(lambda s=state: s.reach == "direct", net, name)  # type: ignore[misc]
            for i, name in ((1, "v1"), (2, "v2")):
                await start(
                    nursery,
                    net,
                    name,
                    tmp_path,
                    tiny_gguf,
                    f"127.0.3.{i}",
                    bootstrap=boot,
                    **behind_nat(i),
                )
                state = await net.state(name)
                await until(lambda s=state: len(s.relays) == 2, net, name)  # type: ignore[misc]
                assert state.reach == "relayed"  # an unreachable node learns `relayed`
            # R1 is at its bound: the third volunteer is refused there and reserves at R2
            await start(
                nursery,
                net,
                "v3",
                tmp_path,
                tiny_gguf,
                "127.0.3.3",
                bootstrap=boot,
                **behind_nat(3),
            )
            v3 = await net.state("v3")
            r1_service = net.services[net.peer("r1")]
            await until(
                lambda: r1_service.table.refused_full >= 1 and len(v3.relays) == 1, net, "v3"
            )
            assert v3.relays == (net.hint("r2"),)
            with pytest.raises(RelayRefused) as full:
                await hold_reservation(net.hint("r1"), Identity.generate(), _no_session)
            assert full.value.code is ErrorCode.RELAY_FULL
            net.scopes["v3"].cancel()  # the ask below is between v1, v2 and the relays

            captured: dict[str, list[bytes]] = {"r1": [], "r2": []}
            for name in ("r1", "r2"):
                net.services[net.peer(name)].forward_hook = partial(_capture, captured[name])

            async with open_client(boot) as client:
                for name in ("v1", "v2"):
                    await until_published(client, net.peer(name), relays=2)
                text: list[str] = []
                request = wire.Generate(id=1, model=model, prompt=SECRET, max_tokens=24)
                done = await generate(client, model, request, text.append)
                answer = "".join(text)
                assert done.completion_tokens == 24 and len(answer) >= 8
                served = client.pool._sessions[done_peer(client)].conn
                assert getattr(served, "via_relay", None) in (net.peer("r1"), net.peer("r2"))
                forwarded = b"".join(captured["r1"] + captured["r2"])
                assert len(forwarded) > 1000  # the whole exchange went through a relay
                for secret in (SECRET, answer, SECRET[:12], answer[:8]):
                    assert secret.encode() not in forwarded

                await _tampering_breaks_the_session(net, client.pool._identity)
                await _relay_killed_mid_stream(net, client, model)
            nursery.cancel_scope.cancel()


def done_peer(client: Any) -> str:
    (peer,) = [p for p, s in client.pool._sessions.items() if not s.closed]
    return str(peer)


def _capture(into: list[bytes], _way: str, data: bytes) -> bytes:
    into.append(data)
    return data


async def _no_session(*_args: Any) -> None:
    raise AssertionError("no circuit expected")


async def _tampering_breaks_the_session(net: Net, identity: Identity) -> None:
    """R1 flips one bit of what V1 sends once the handshake is over: the client's session fails
    its authentication instead of delivering a changed answer."""
    chunks = {"v>c": 0}

    def flip(way: str, data: bytes) -> bytes:
        if way != "v>c":
            return data
        chunks["v>c"] += 1
        if chunks["v>c"] < 2:  # the responder's handshake message passes
            return data
        return data[:-1] + bytes((data[-1] ^ 0x01,))

    r1 = net.services[net.peer("r1")]
    r1.forward_hook = flip
    conn = await dial_via_relay(net.hint("r1"), net.peer("v1"), identity)
    session = MultiplexedSession(conn)
    model = net.ready["v1"].models[0].sha256
    answers: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        async with session.request(
            wire.Generate(id=0, model=model, prompt=SECRET, max_tokens=16)
        ) as (_rid, inbox):
            async for answer in inbox:
                answers.append(answer)
                if isinstance(answer, (SessionError, wire.Done, wire.Error)):
                    break
        nursery.cancel_scope.cancel()
    r1.forward_hook = None
    assert isinstance(answers[-1], SessionError), answers[-1]
    assert "bad frame" in str(answers[-1])
    assert not any(isinstance(a, (wire.Token, wire.Done)) for a in answers)


async def _relay_killed_mid_stream(net: Net, client: Any, model: str) -> None:
    """The relay carrying the stream dies after the first tokens: failover finishes the request
    on the other volunteer, through the other relay."""
    for peer in list(client.pool._sessions):
        client.pool.drop(peer)
    started = trio.Event()
    text: list[str] = []
    providers: list[str] = []

    def on_text(chunk: str) -> None:
        text.append(chunk)
        started.set()

    async def kill_the_carrier() -> None:
        await started.wait()
        carrier = getattr(client.pool._sessions[providers[0]].conn, "via_relay", None)
        name = next(n for n in ("r1", "r2") if net.peer(n) == carrier)
        net.scopes[name].cancel()
        killed.append(name)

    killed: list[str] = []
    request = wire.Generate(id=2, model=model, prompt="count", max_tokens=300, ignore_eos=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_the_carrier)
        done = await generate(
            client, model, request, on_text, lambda p: providers.append(p.record.peer_id)
        )
    assert killed and len(providers) == 2 and providers[0] != providers[1]
    survivor = getattr(client.pool._sessions[providers[1]].conn, "via_relay", None)
    assert survivor is not None and survivor != net.peer(killed[0])
    assert done.completion_tokens > 0 and len(text) > 1
