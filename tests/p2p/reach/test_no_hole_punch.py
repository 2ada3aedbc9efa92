"""`hole_punch` off (`gpunet node --no-hole-punch`), on loopback: a pool that may not punch dials
its relayed sessions with a plain CONNECT, so the volunteer is never asked to punch and the
session stays relayed; a volunteer without a punch responder answers a plain ACCEPT, which
tells a punching client that no punch is coming (no wait for one); a node's reach tasks then
hold no punch responder. Through real NATs: tests/netns/test_hole_punch.py."""

from __future__ import annotations

from pathlib import Path

import trio

from crypto.identity import Identity
from p2p.dht.node import open_dht
from p2p.dht.records import RelayHint
from p2p.node.config import NodeConfig
from p2p.reach.node_tasks import reach_context, reach_service
from p2p.reach.punch_rules import RELAYED
from p2p.reach.relay_service import ProbeInbox
from p2p.reach.state import ReachState
from p2p.session.pool import SessionPool
from p2p.session.secure import SecureConnection
from tests.p2p.reach.test_hole_punch_live import (
    TIMEOUT_S,
    RecordingResponder,
    _served,
    relay_with_volunteer,
)


async def test_a_pool_without_hole_punch_never_asks_for_one() -> None:
    responder = RecordingResponder()
    with trio.fail_after(TIMEOUT_S):
        async with relay_with_volunteer(responder) as (hint, volunteer), trio.open_nursery() as n:
            pool = SessionPool(Identity.generate(), n, hole_punch=False)
            session = await pool.get(volunteer.peer_id, (), (hint,))
            assert session.path == RELAYED and pool.punch_finished(volunteer.peer_id) is None
            assert await _served(session)
            assert await pool.get(volunteer.peer_id, (), (hint,)) is session
            # the relay named no client address: the volunteer was not even asked
            assert responder.asked == [] and responder.punched == 0 and pool.punched == 0
            n.cancel_scope.cancel()


async def test_a_volunteer_without_hole_punch_costs_the_first_request_no_wait() -> None:
    # The volunteer answers a plain ACCEPT (no responder), so the client's observed line has no
    # port: no punch is coming, none is started, and nothing waits for one.
    with trio.fail_after(TIMEOUT_S):
        async with relay_with_volunteer(None) as (hint, volunteer), trio.open_nursery() as n:
            pool = SessionPool(Identity.generate(), n)  # a pool that would punch
            session = await pool.get(volunteer.peer_id, (), (hint,))
            assert session.path == RELAYED and session.gate is None
            assert pool.punch_finished(volunteer.peer_id) is None
            assert await _served(session)
            assert pool.punch_wait(volunteer.peer_id) is None and pool.punched == 0
            n.cancel_scope.cancel()


async def test_a_node_without_hole_punch_holds_no_punch_responder(tmp_path: Path) -> None:
    identity = Identity.generate()
    with trio.fail_after(TIMEOUT_S):
        async with open_dht(identity, "127.0.7.9", 0) as dht:
            for hole_punch in (True, False):
                config = NodeConfig(tmp_path, (), host="127.0.7.9", hole_punch=hole_punch)
                probes = ProbeInbox()
                service = reach_service(identity, config, dht, probes)
                context = reach_context(
                    identity, config, ReachState(), probes, dht, service, _unused_circuit, 1
                )
                assert (context.punch is not None) is hole_punch


async def _unused_circuit(conn: SecureConnection, _relay: RelayHint) -> None:
    await conn.aclose()
