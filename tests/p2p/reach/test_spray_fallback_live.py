"""A port spray that does not bring a session falls back to the ordinary punch
(p2p/reach/hole_punch.py `spray_or_punch`), over real TCP on loopback: each side's budget
decides for that side alone, so a spray refused on both sides, or on one side while the other
sprays, still ends in one direct session that both sides agree on. No NAT here: the tickets
carry the ports a relay would have reported for a symmetric NAT facing a port-keeping one."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from crypto.identity import Identity
from p2p.reach.hole_punch import PunchTicket, spray_or_punch
from p2p.reach.port_spray import Role, SprayBudget
from p2p.reach.punch_rules import PunchPlan
from p2p.session.secure import SecureConnection
from tests.p2p.reach.test_port_spray_live import _handshake

TIMEOUT_S = 30.0
VOLUNTEER_HOST, CLIENT_HOST = "127.0.9.12", "127.0.9.13"
PLAN = PunchPlan(window_s=3.0)


@contextmanager
def _relay_port(host: str) -> Iterator[int]:
    """A port held the way a relay connection holds it (SO_REUSEPORT), for the punch to bind."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, 0))
    try:
        yield int(holder.getsockname()[1])
    finally:
        holder.close()


def _spent() -> SprayBudget:
    budget = SprayBudget(per_hour=1)
    assert budget.begin("anyone", trio.current_time())
    budget.end()
    return budget


def _tickets(client_port: int, volunteer_port: int) -> tuple[PunchTicket, PunchTicket]:
    """The client behind a symmetric NAT (the relay saw another port: the opener), the
    volunteer behind a port-keeping one (the sprayer)."""
    client = PunchTicket(
        CLIENT_HOST,
        client_port,
        f"{VOLUNTEER_HOST}:{volunteer_port}",
        you=f"{CLIENT_HOST}:{client_port ^ 1}",
        peer_local_port=volunteer_port,
    )
    volunteer = PunchTicket(
        VOLUNTEER_HOST,
        volunteer_port,
        f"{CLIENT_HOST}:{client_port}",
        you=f"{VOLUNTEER_HOST}:{volunteer_port}",
        peer_local_port=client_port ^ 1,
    )
    assert client.spray_role() is Role.OPENER and volunteer.spray_role() is Role.SPRAYER
    return client, volunteer


async def _both(
    client_budget: SprayBudget, volunteer_budget: SprayBudget
) -> tuple[SecureConnection | None, SecureConnection | None, Identity, Identity]:
    a, b = Identity.generate(), Identity.generate()
    got: dict[str, SecureConnection | None] = {}
    with _relay_port(CLIENT_HOST) as cp, _relay_port(VOLUNTEER_HOST) as vp:
        client, volunteer = _tickets(cp, vp)
        async with trio.open_nursery() as nursery:

            async def side(name: str, ticket: PunchTicket, budget: SprayBudget, hs) -> None:  # type: ignore[no-untyped-def]
                got[name] = await spray_or_punch(ticket, ticket.spray_role(), budget, PLAN, hs)

            nursery.start_soon(side, "volunteer", volunteer, volunteer_budget, _handshake(b, None))
            nursery.start_soon(side, "client", client, client_budget, _handshake(a, b.peer_id))
    return got["client"], got["volunteer"], a, b


async def test_sprays_refused_on_both_sides_still_punch_the_ordinary_way() -> None:
    client_budget, volunteer_budget = _spent(), _spent()
    with trio.fail_after(TIMEOUT_S):
        client, volunteer, a, b = await _both(client_budget, volunteer_budget)
    assert client_budget.refused == 1 and volunteer_budget.refused == 1
    assert client is not None and volunteer is not None
    assert client.remote_peer_id == b.peer_id and volunteer.remote_peer_id == a.peer_id
    await client.aclose()
    await volunteer.aclose()


async def test_one_sides_refused_spray_meets_the_others_spray() -> None:
    # the opener's budget refuses: it punches the ordinary way, and the sprayer's listener
    # takes that connection while its own SYNs find nothing
    client_budget, volunteer_budget = _spent(), SprayBudget()
    with trio.fail_after(TIMEOUT_S):
        client, volunteer, a, b = await _both(client_budget, volunteer_budget)
    assert client_budget.refused == 1 and volunteer_budget.refused == 0
    assert client is not None and volunteer is not None
    assert client.remote_peer_id == b.peer_id and volunteer.remote_peer_id == a.peer_id
    assert not volunteer_budget.active  # the spray ended and gave its slot back
    await client.aclose()
    await volunteer.aclose()


async def test_no_spray_role_is_the_ordinary_punch_and_spends_no_spray() -> None:
    budget = SprayBudget()
    a, b = Identity.generate(), Identity.generate()
    got: dict[str, SecureConnection | None] = {}
    with (
        trio.fail_after(TIMEOUT_S),
        _relay_port(CLIENT_HOST) as cp,
        _relay_port(VOLUNTEER_HOST) as vp,
    ):
        client = PunchTicket(CLIENT_HOST, cp, f"{VOLUNTEER_HOST}:{vp}")
        volunteer = PunchTicket(VOLUNTEER_HOST, vp, f"{CLIENT_HOST}:{cp}")
        assert client.spray_role() is None
        async with trio.open_nursery() as nursery:

            async def side(name: str, ticket: PunchTicket, hs) -> None:  # type: ignore[no-untyped-def]
                got[name] = await spray_or_punch(ticket, None, budget, PLAN, hs)

            nursery.start_soon(side, "volunteer", volunteer, _handshake(b, None))
            nursery.start_soon(side, "client", client, _handshake(a, b.peer_id))
    assert got["client"] is not None and got["volunteer"] is not None
    assert budget.refused == 0 and budget.active is False
    await got["client"].aclose()
    await got["volunteer"].aclose()
