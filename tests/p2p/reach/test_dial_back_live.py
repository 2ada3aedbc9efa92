"""The reachability tasks over real TCP on loopback, without models: real helpers (dial-back and
relay service on their own session ports), a node whose session port feeds the evidence
(`inbound_observer`) and whose dials are counted (`DIAL_OBSERVER`), its records found through a
directory function (the DHT is not what is tested here).

- Dial-backs come from helpers the node just talked to: "direct", but weak, so it also holds
  relays; a stranger's connection is strong proof, and the relays are let go.
- The first check waits for port mapping's first outcome and probes the mapped port; a mapping
  that comes later is re-checked at once and the helpers' limit lets it through.
- The network's first node, with nobody to ask, checks again as soon as the DHT knows a peer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio
import trio.testing

from crypto.identity import Identity
from p2p.dht.records import CapabilityRecord, RelayHint
from p2p.host_port import format_host_port
from p2p.reach.dial_back import DialBackHelper
from p2p.reach.node_tasks import ReachConfig, ReachContext, inbound_observer, keep_reachability
from p2p.reach.relay_service import ProbeInbox, ReachService
from p2p.reach.relay_table import RelayTable
from p2p.reach.state import ReachState
from p2p.reach.strangers import ContactedHosts
from p2p.session.observers import DIAL_OBSERVER
from p2p.session.secure import SecureConnection, serve_sessions
from tests.p2p.dht.test_records import make_record

TIMEOUT_S = 30.0
NODE_HOST = "127.0.7.1"


async def _unused(conn: SecureConnection, *_: object) -> None:
    await conn.aclose()


@attrs.define
class Helper:
    hint: RelayHint
    service: ReachService
    limiter_refused: Callable[[], int]

    def record(self) -> CapabilityRecord:
        identity = self.service.identity
        made = make_record(identity, now=time.time())
        return attrs.evolve(made, addresses=(self.hint.address,), reach="direct")


@asynccontextmanager
async def helper(host: str) -> AsyncIterator[Helper]:
    identity = Identity.generate()
    dial_back = DialBackHelper(local_address=host)  # probes leave from the host it listens on
    service = ReachService(identity, RelayTable(), probes=ProbeInbox(), dial_back=dial_back)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(serve_sessions, identity, host, 0, _unused, preamble=service.route)
        )
        port = listeners[0].socket.getsockname()[1]
        hint = RelayHint(identity.peer_id, format_host_port(host, port))
        yield Helper(hint, service, lambda: dial_back.limiter.refused)
        nursery.cancel_scope.cancel()


@attrs.define
class Node:
    ctx: ReachContext
    contacted: ContactedHosts
    port: int

    @property
    def state(self) -> ReachState:
        return self.ctx.state


@asynccontextmanager
async def node(
    directory: Callable[[], list[CapabilityRecord]], *, dead_port: bool = False, **kw: object
) -> AsyncIterator[Node]:
    """A node on NODE_HOST running its reach tasks; with *dead_port* it tells helpers a port
    where nothing listens (as behind a NAT), so only a mapped port can be reached."""
    identity = Identity.generate()
    state, probes, contacted = ReachState(), ProbeInbox(), ContactedHosts()
    service = ReachService(identity, RelayTable(), probes=probes)

    async def find_records(_key: str) -> list[CapabilityRecord]:
        return directory()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(
                serve_sessions,
                identity,
                NODE_HOST,
                0,
                _unused,
                preamble=service.route,
                on_accept=inbound_observer(state, contacted),
            )
        )
        port = listeners[0].socket.getsockname()[1]
        ctx = ReachContext(
            identity,
            state,
            probes,
            find_records,
            _unused,
            port=1 if dead_port else port,
            dht_port=1,
            config=ReachConfig(**kw),  # type: ignore[arg-type]
            local_address=NODE_HOST,
            punch=None,
        )
        yield Node(ctx, contacted, port)
        nursery.cancel_scope.cancel()


async def run_tasks(n: Node) -> None:
    DIAL_OBSERVER.set(n.contacted.sent)  # this task and the ones it starts: the node's dials
    await keep_reachability(n.ctx)


async def until(state: ReachState, check: Callable[[], bool]) -> None:
    for _ in range(1000):  # bounded by the test's deadline long before this
        if check():
            return
        await state.wait_changed()
    raise AssertionError("condition never held")


async def test_weak_proof_holds_relays_until_a_stranger_gets_in() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            helper("127.0.6.1") as h1,
            helper("127.0.6.2") as h2,
            node(lambda: [h1.record(), h2.record()], relay_linger_s=0.5) as n,
            trio.open_nursery() as ns,
        ):
            ns.start_soon(run_tasks, n)
            state = n.state
            await until(state, lambda: state.reach == "direct" and len(state.relays) == 2)
            assert state.weak and state.wants_relays and not state.strangers_reach
            # the helpers' probes came from hosts this node had dialled: no proof of more
            assert not n.contacted.is_stranger("127.0.6.1")
            assert state.local_host == NODE_HOST
            assert {r.peer_id for r in state.published_relays()} == {
                h1.hint.peer_id,
                h2.hint.peer_id,
            }
            # a host it never sent anything to connects: strangers get through; the record
            # names no relay from now on, and the reservations go after a while (clients that
            # read the older record may still dial them)
            stranger = await trio.open_tcp_stream(NODE_HOST, n.port, local_address="127.0.8.1")
            await until(state, lambda: state.strangers_reach)
            assert state.published_relays() == () and len(state.relays) == 2
            await until(state, lambda: state.relays == ())
            await stranger.aclose()
            assert state.strangers_reach and state.reach == "direct"
            ns.cancel_scope.cancel()


async def test_the_first_check_waits_for_port_mapping_and_probes_the_mapped_port() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            helper("127.0.6.3") as h1,
            node(lambda: [h1.record()], dead_port=True) as n,
            trio.open_nursery() as ns,
        ):
            n.ctx.await_mapping = True
            ns.start_soon(run_tasks, n)
            await trio.testing.wait_all_tasks_blocked()
            assert n.state.checks == 0  # waiting for the router's answer
            n.state.set_mapped(NODE_HOST, n.port)  # the router maps a port to the node
            await until(n.state, lambda: n.state.checks >= 1)
            assert n.state.reach == "mapped" and n.state.checks == 1
            ns.cancel_scope.cancel()


async def test_a_mapping_that_comes_later_is_rechecked_at_once_and_let_through() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            helper("127.0.6.4") as h1,
            node(lambda: [h1.record()], dead_port=True) as n,
            trio.open_nursery() as ns,
        ):
            ns.start_soon(run_tasks, n)
            await until(n.state, lambda: n.state.reach == "relayed")
            n.state.set_mapped(NODE_HOST, n.port)
            await until(n.state, lambda: n.state.reach == "mapped")
            assert n.state.checks == 2 and h1.limiter_refused() == 0
            ns.cancel_scope.cancel()


async def test_the_first_node_checks_again_once_the_dht_knows_a_peer() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with helper("127.0.6.5") as h1:
            records: list[CapabilityRecord] = []
            known = [0]
            # pauses of a minute while nobody answers: only the news of a peer can be quick
            cfg = {"first_retry_s": 60.0, "retry_s": 60.0, "peers_poll_s": 0.05}
            async with node(lambda: records, **cfg) as n, trio.open_nursery() as ns:
                n.ctx.peers_known = lambda: known[0]
                ns.start_soon(run_tasks, n)
                await trio.testing.wait_all_tasks_blocked()
                assert n.state.checks == 1 and n.state.reach == "unknown"  # nobody to ask
                records.append(h1.record())
                known[0] = 1  # the DHT's table grew: a peer joined
                await until(n.state, lambda: n.state.reach == "direct")
                assert n.state.checks == 2
                ns.cancel_scope.cancel()
