"""How long a fresh relayed session waits for its hole punch (p2p/session/pool.py with
p2p/reach/punch_odds.py, p2p/session/punch_gate.py), over real TCP on loopback: no NAT on the
way, so the punch is predicted to work and the first request waits for it up to the long
bound, going on the punched session as soon as it lands; a punch that failed to a peer makes
the next fresh dial's first request wait only briefly. tests/netns/test_punch_wait.py does
the same through real NATs.
"""

from __future__ import annotations

import pytest
import trio

from crypto.identity import Identity
from p2p.reach.punch_rules import HOLE_PUNCHED, RELAYED
from p2p.session import pool as pool_module
from p2p.session.pool import SessionPool
from tests.p2p.reach.test_hole_punch_live import (
    TIMEOUT_S,
    RecordingResponder,
    SilentResponder,
    _served,
    relay_with_volunteer,
)

# scheduling on a loaded machine: a wait that ended at its bound returns a little after it
SLACK_S = 1.0


async def test_a_punch_predicted_to_work_is_waited_for_until_it_lands() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            relay_with_volunteer(RecordingResponder()) as (hint, volunteer),
            trio.open_nursery() as n,
        ):
            pool = SessionPool(Identity.generate(), n)
            session = await pool.get(volunteer.peer_id, (), (hint,))
            # the dial hands out the relayed session at once (a race over providers sees it
            # up); the wait is its first request's
            assert session.path == RELAYED and pool.punch_wait(volunteer.peer_id) is None
            assert await _served(session)
            wait = pool.punch_wait(volunteer.peer_id)
            assert wait is not None and wait.likely, wait
            assert wait.reason == "no NAT on our side"
            assert wait.bound_s == pool_module.PUNCH_WAIT_LIKELY_S
            # the punch's end ended the wait, not the bound: the request went on the punched one
            assert wait.punched and wait.waited_s < wait.bound_s
            assert pool.served_path(volunteer.peer_id) == HOLE_PUNCHED
            assert pool.path_of(volunteer.peer_id) == HOLE_PUNCHED
            n.cancel_scope.cancel()


async def test_after_a_failed_punch_the_next_dial_waits_briefly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "PUNCH_WAIT_DIALS", 1e6)  # the short bound itself
    with trio.fail_after(TIMEOUT_S):
        # a spent responder: nobody connects back, so every try of the client's punch is reset
        async with (
            relay_with_volunteer(SilentResponder()) as (hint, volunteer),
            trio.open_nursery() as n,
        ):
            pool = SessionPool(Identity.generate(), n)
            peer = volunteer.peer_id
            first = await pool.get(peer, (), (hint,))
            assert first.path == RELAYED and await _served(first)
            wait = pool.punch_wait(peer)
            assert wait is not None and wait.likely and not wait.punched
            assert pool.served_path(peer) == RELAYED
            # it waited its whole bound (the punch had not ended), never longer
            assert wait.bound_s <= wait.waited_s < wait.bound_s + SLACK_S
            finished = pool.punch_finished(peer)
            assert finished is not None
            await finished.wait()
            pool.drop(peer)  # the next request dials afresh: a new relayed dial and punch
            second = await pool.get(peer, (), (hint,))
            assert second is not first and second.path == RELAYED and await _served(second)
            wait = pool.punch_wait(peer)
            assert wait is not None and not wait.likely, wait
            assert wait.reason == "the last punch to this peer failed"
            assert wait.bound_s == pool_module.PUNCH_WAIT_MAX_S
            assert wait.waited_s < wait.bound_s + SLACK_S
            n.cancel_scope.cancel()
