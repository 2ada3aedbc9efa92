"""Hole punching over real TCP on loopback: a relay, a volunteer holding a reservation, clients
dialling through it with CONNECT_PUNCH. Without a NAT on the way the volunteer's listener is
reached at once; tests/netns/test_hole_punch.py punches through real NATs.

What these check: each side learns the other's source address as the relay saw it; a punched
session takes new requests while one open on the relayed session finishes there, and the
relayed one is the fallback when the punched one breaks; a failed punch costs only its bounded
attempts while the relayed session keeps serving; a volunteer punches within its budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from crypto.identity import Identity
from p2p.dht.records import RelayHint
from p2p.host_port import parse_host_port
from p2p.node.connection import Reply, serve_connection
from p2p.protocol import wire
from p2p.reach.hole_punch import PunchResponder
from p2p.reach.punch_rules import HOLE_PUNCHED, RELAYED, PunchBudget, PunchPlan
from p2p.reach.relay_client import dial_relayed, dial_via_relay, hold_reservation
from p2p.reach.relay_protocol import TOKEN_BYTES, Circuit, encode_control
from p2p.reach.relay_service import ProbeInbox, ReachService
from p2p.reach.relay_table import RelayTable
from p2p.session import pool as pool_module
from p2p.session.pool import MultiplexedSession, SessionPool
from p2p.session.secure import SecureConnection, serve_sessions

TIMEOUT_S = 20.0
VOLUNTEER_HOST = "127.0.7.2"
CLIENT_HOST = "127.0.7.3"


class RecordingResponder(PunchResponder):
    """The volunteer's real responder; the test also keeps the addresses circuits named."""

    def __init__(self, budget: PunchBudget | None = None) -> None:
        super().__init__(budget or PunchBudget(), PunchPlan(window_s=1.0))
        self.asked: list[str] = []

    def may_punch(self, remote: str, relay_host: str) -> bool:
        self.asked.append(remote)
        return super().may_punch(remote, relay_host)


class SilentResponder(RecordingResponder):
    """A volunteer that punches but whose budget is spent: it answers ACCEPT_SPRAY (so the
    client expects a punch) and never connects back."""

    def may_punch(self, remote: str, relay_host: str) -> bool:
        self.asked.append(remote)
        return False


HELD = trio.Event()  # a request with the prompt "hold" is answered once this is set


async def answer(msg: wire.Generate | wire.Score, reply: Reply) -> None:
    if isinstance(msg, wire.Generate) and msg.prompt == "hold":
        await HELD.wait()
    await reply.send(wire.Done(msg.id, "length", 1, 1, 0.0, 1.0))


async def serve(conn: SecureConnection, _relay: RelayHint) -> None:
    await serve_connection(conn, answer)


async def _unused(conn: SecureConnection) -> None:
    await conn.aclose()


@asynccontextmanager
async def relay_with_volunteer(
    responder: PunchResponder | None, services: list[ReachService] | None = None
) -> AsyncIterator[tuple[RelayHint, Identity]]:
    identity, volunteer = Identity.generate(), Identity.generate()
    service = ReachService(identity, RelayTable(), probes=ProbeInbox())
    if services is not None:
        services.append(service)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(serve_sessions, identity, "127.0.7.1", 0, _unused, preamble=service.route)
        )
        hint = RelayHint(identity.peer_id, f"127.0.7.1:{listeners[0].socket.getsockname()[1]}")
        reserved = trio.Event()
        nursery.start_soon(
            partial(
                hold_reservation,
                hint,
                volunteer,
                serve,
                local_address=VOLUNTEER_HOST,
                on_reserved=lambda _ttl: reserved.set(),
                punch=responder,
            )
        )
        await reserved.wait()
        yield hint, volunteer
        nursery.cancel_scope.cancel()


async def test_both_sides_learn_the_address_the_relay_saw_for_the_other() -> None:
    responder = RecordingResponder()
    with trio.fail_after(TIMEOUT_S):
        async with relay_with_volunteer(responder) as (hint, volunteer):
            async with trio.open_nursery() as punches:
                conn, attempt = await dial_relayed(
                    hint,
                    volunteer.peer_id,
                    Identity.generate(),
                    local_address=CLIENT_HOST,
                    punch_in=punches,
                )
                assert attempt is not None
                attempt.cancel()  # only the addresses matter here
            ticket = attempt.ticket
            assert ticket is not None
            assert parse_host_port(ticket.remote)[0] == VOLUNTEER_HOST  # V's ACCEPT connection
            assert ticket.local_host == CLIENT_HOST
            # V was told the client's source ip:port: the very port C will punch from
            assert responder.asked == [f"{CLIENT_HOST}:{ticket.local_port}"]
            await conn.send(wire.Generate(1, "m", "p"))
            assert isinstance(await conn.receive(), wire.Done)
            await conn.aclose()
            # a plain CONNECT (an older client) names no address: V never punches for it
            plain = await dial_via_relay(hint, volunteer.peer_id, Identity.generate())
            await plain.aclose()
            assert len(responder.asked) == 1


async def _served(session: MultiplexedSession, prompt: str = "p") -> bool:
    async with session.request(wire.Generate(0, "m", prompt)) as (_rid, inbox):
        return isinstance(await inbox.receive(), wire.Done)


async def test_a_first_dial_waits_briefly_for_its_punch(monkeypatch: pytest.MonkeyPatch) -> None:
    # a wait long enough for any punch: the first request goes on the punched session
    monkeypatch.setattr(pool_module, "PUNCH_WAIT_DIALS", 1e6)
    monkeypatch.setattr(pool_module, "PUNCH_WAIT_MAX_S", TIMEOUT_S / 2)
    responder = RecordingResponder()
    with trio.fail_after(TIMEOUT_S):
        async with relay_with_volunteer(responder) as (hint, volunteer), trio.open_nursery() as n:
            pool = SessionPool(Identity.generate(), n)
            session = await pool.get(volunteer.peer_id, (), (hint,))
            # the dial hands out the relayed session at once; its first request waits
            assert await _served(session)
            assert pool.punched == 1
            assert pool.served_path(volunteer.peer_id) == HOLE_PUNCHED
            n.cancel_scope.cancel()


async def test_a_punched_session_takes_new_requests_and_the_relayed_one_is_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "PUNCH_WAIT_MAX_S", 0.0)  # hand out the relayed one first
    monkeypatch.setattr(pool_module, "PUNCH_WAIT_LIKELY_S", 0.0)  # (no NAT: predicted to work)
    responder = RecordingResponder()
    with trio.fail_after(TIMEOUT_S):
        async with relay_with_volunteer(responder) as (hint, volunteer), trio.open_nursery() as n:
            pool = SessionPool(Identity.generate(), n)
            peer = volunteer.peer_id
            relayed = await pool.get(peer, (), (hint,))
            assert relayed.path == RELAYED
            async with relayed.request(wire.Generate(0, "m", "hold")) as (_rid, held):
                finished = pool.punch_finished(peer)
                assert finished is not None
                await finished.wait()
                assert pool.punched == 1 and pool.path_of(peer) == HOLE_PUNCHED
                direct = await pool.get(peer, (), (hint,))
                assert direct is not relayed and direct.path == HOLE_PUNCHED
                remote = getattr(direct.conn, "remote_address", None)
                assert remote is not None and remote[0] == VOLUNTEER_HOST  # not the relay's
                assert await _served(direct)
                HELD.set()  # the request on the relayed session finishes where it is
                assert isinstance(await held.receive(), wire.Done)
            assert responder.punched == 1 and pool.handshakes == 1
            await direct.conn.aclose()  # the direct path breaks: the relayed one takes over
            while not direct.closed:
                await trio.testing.wait_all_tasks_blocked()
            assert await pool.get(peer, (), (hint,)) is relayed
            assert pool.path_of(peer) == RELAYED and await _served(relayed)
            n.cancel_scope.cancel()


async def test_a_failed_punch_costs_its_attempts_and_the_relayed_session_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "PUNCH_WAIT_MAX_S", 0.0)  # time the whole punch below
    monkeypatch.setattr(pool_module, "PUNCH_WAIT_LIKELY_S", 0.0)
    with trio.fail_after(TIMEOUT_S):
        # A spent responder: nobody connects back, so every try of the client is reset.
        async with (
            relay_with_volunteer(SilentResponder()) as (hint, volunteer),
            trio.open_nursery() as n,
        ):
            pool = SessionPool(Identity.generate(), n)
            session = await pool.get(volunteer.peer_id, (), (hint,))
            assert pool.path_of(volunteer.peer_id) == RELAYED
            finished = pool.punch_finished(volunteer.peer_id)
            assert finished is not None
            started = trio.current_time()
            await finished.wait()
            assert trio.current_time() - started < PunchPlan().window_s + 1.0
            assert pool.punched == 0 and pool.path_of(volunteer.peer_id) == RELAYED
            assert await pool.get(volunteer.peer_id, (), (hint,)) is session
            assert await _served(session)
            assert pool.handshakes == 1
            n.cancel_scope.cancel()


async def test_a_volunteer_punches_within_its_budget() -> None:
    responder = RecordingResponder(PunchBudget(per_minute=1))
    with trio.fail_after(TIMEOUT_S):
        async with relay_with_volunteer(responder) as (hint, volunteer):
            async with trio.open_nursery() as punches:
                for _ in range(3):
                    conn, attempt = await dial_relayed(
                        hint, volunteer.peer_id, Identity.generate(), punch_in=punches
                    )
                    assert attempt is not None
                    attempt.cancel()
                    await conn.aclose()
            assert len(responder.asked) == 3
            assert responder.budget.refused == 2  # one punch a minute: the others not tried


async def test_a_volunteer_punches_only_for_a_circuit_the_relay_let_it_accept() -> None:
    responder = RecordingResponder()
    services: list[ReachService] = []
    with trio.fail_after(TIMEOUT_S):
        async with relay_with_volunteer(responder, services) as (hint, volunteer):
            # A circuit message naming an address, with a token the relay never issued: the
            # volunteer's ACCEPT is refused, and it must not punch for it.
            control = services[0]._controls[volunteer.peer_id]
            bogus = Circuit(bytes(TOKEN_BYTES), f"{CLIENT_HOST}:4000")
            await control.send_bytes(encode_control(bogus))
            async with trio.open_nursery() as punches:
                conn, attempt = await dial_relayed(
                    hint, volunteer.peer_id, Identity.generate(), punch_in=punches
                )
                assert attempt is not None and attempt.ticket is not None
                attempt.cancel()
                await conn.aclose()
            # the real circuit came after the bogus one: a volunteer that punched on the
            # message alone would have asked for the bogus address first
            assert responder.asked == [f"127.0.0.1:{attempt.ticket.local_port}"]
