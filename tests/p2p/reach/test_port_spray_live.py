"""The port spray over real TCP on loopback: the relay's spray lines (a real `ReachService`, a
volunteer and a client speaking CONNECT_SPRAY / ACCEPT_SPRAY by hand), and `spray_punch` itself
(no NAT here: the opener's SYNs reach the sprayer's listener; the sprayer's reach a listener on
the peer's host at one of the ports it picked). tests/netns/test_port_spray.py sprays through
real NATs."""

from __future__ import annotations

import os
import random
import socket
from functools import partial

import trio
import trio.testing

from crypto.identity import Identity, public_key_from_peer_id
from p2p.host_port import format_host_port
from p2p.reach import hole_punch
from p2p.reach.hole_punch import PunchTicket, open_reusable_tcp
from p2p.reach.port_spray import Role, SprayBudget, SprayPlan
from p2p.reach.relay_client import read_observed, read_status
from p2p.reach.relay_protocol import (
    Circuit,
    Kind,
    Preamble,
    Reserve,
    Reserved,
    decode_control,
    encode_control,
    spray_preamble,
)
from p2p.reach.relay_service import ProbeInbox, ReachService
from p2p.reach.relay_table import RelayTable
from p2p.reach.spray import spray_punch
from p2p.session.secure import (
    SecureConnection,
    SessionError,
    connect,
    secure_stream,
    serve_sessions,
)

TIMEOUT_S = 20.0
RELAY_HOST, VOLUNTEER_HOST, CLIENT_HOST = "127.0.9.1", "127.0.9.2", "127.0.9.3"
QUICK = SprayPlan(opener_sockets=40, sprayer_ports=64, wave_sockets=32, wave_s=0.2, lead_s=0.05)


def _local(stream: trio.SocketStream) -> tuple[str, int]:
    name = stream.socket.getsockname()
    return str(name[0]), int(name[1])


async def _unused(conn: SecureConnection) -> None:
    await conn.aclose()


async def test_the_relay_tells_each_side_both_addresses_and_the_peers_local_port() -> None:
    relay_id, volunteer, client = Identity.generate(), Identity.generate(), Identity.generate()
    service = ReachService(relay_id, RelayTable(), probes=ProbeInbox())
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_sessions, relay_id, RELAY_HOST, 0, _unused, preamble=service.route)
            )
            relay = f"{RELAY_HOST}:{listeners[0].socket.getsockname()[1]}"
            control = await connect(
                relay,
                volunteer,
                relay_id.peer_id,
                local_address=VOLUNTEER_HOST,
                preamble=Preamble(Kind.CONTROL).encode(),
            )
            await control.send_bytes(encode_control(Reserve()))
            assert isinstance(decode_control(await control.receive_bytes() or b""), Reserved)

            client_stream = await open_reusable_tcp(relay, local_address=CLIENT_HOST)
            client_port = _local(client_stream)[1]
            key = public_key_from_peer_id(volunteer.peer_id)
            await client_stream.send_all(
                spray_preamble(Kind.CONNECT_SPRAY, key, client_port).encode()
            )
            circuit = decode_control(await control.receive_bytes() or b"")
            assert isinstance(circuit, Circuit)
            client_seen = format_host_port(CLIENT_HOST, client_port)
            assert (circuit.peer, circuit.peer_port) == (client_seen, client_port)

            accept = await open_reusable_tcp(relay, local_address=VOLUNTEER_HOST)
            accept_port = _local(accept)[1]
            await accept.send_all(
                spray_preamble(Kind.ACCEPT_SPRAY, circuit.token, accept_port).encode()
            )
            leftover = await read_status(accept, 5, "accept")
            mine, leftover = await read_observed(accept, leftover, 5)
            accept_seen = format_host_port(VOLUNTEER_HOST, accept_port)
            assert (mine.peer, mine.you, mine.peer_port) == (client_seen, accept_seen, client_port)

            rest = await read_status(client_stream, 5, "connect")
            theirs, rest = await read_observed(client_stream, rest, 5)
            assert (theirs.peer, theirs.you, theirs.peer_port) == (
                accept_seen,
                client_seen,
                accept_port,
            )
            # the splice after the lines: the end-to-end handshake goes through
            async with trio.open_nursery() as ends:
                ends.start_soon(partial(secure_stream, accept, volunteer, expected_peer_id=None))
                conn = await secure_stream(
                    client_stream, client, expected_peer_id=volunteer.peer_id, initial=rest
                )
            assert conn.remote_peer_id == volunteer.peer_id
            await conn.aclose()
            await control.aclose()
            nursery.cancel_scope.cancel()


def _handshake(identity: Identity, expected: str | None):  # type: ignore[no-untyped-def]
    async def run(stream: trio.SocketStream) -> SecureConnection | None:
        try:
            return await secure_stream(stream, identity, expected_peer_id=expected)
        except SessionError:
            return None

    return run


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_an_opener_and_a_sprayer_meet_and_close_every_other_socket() -> None:
    a, b = Identity.generate(), Identity.generate()
    # the sprayer's "relay connection" port: a socket bound there, as the relay connection is
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((VOLUNTEER_HOST, 0))
    port = holder.getsockname()[1]
    before = _open_fds()
    got: dict[str, SecureConnection | None] = {}
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:

            async def side(name: str, coro) -> None:  # type: ignore[no-untyped-def]
                got[name] = await coro

            nursery.start_soon(
                side,
                "sprayer",
                spray_punch(
                    Role.SPRAYER,
                    VOLUNTEER_HOST,
                    port,
                    f"{CLIENT_HOST}:40000",
                    _handshake(b, None),
                    QUICK,
                    room=999,
                ),
            )
            # the sprayer listens before the opener's SYNs arrive (no NAT delays them here)
            await trio.testing.wait_all_tasks_blocked()
            peer = f"{VOLUNTEER_HOST}:{port}"
            nursery.start_soon(
                side,
                "opener",
                spray_punch(
                    Role.OPENER, CLIENT_HOST, 0, peer, _handshake(a, b.peer_id), QUICK, room=999
                ),
            )

    opener, sprayer = got["opener"], got["sprayer"]
    assert opener is not None and sprayer is not None
    assert opener.remote_peer_id == b.peer_id and sprayer.remote_peer_id == a.peer_id
    assert _open_fds() == before + 2  # the two ends of the one session; every other one closed
    await opener.aclose()
    await sprayer.aclose()
    holder.close()


async def test_the_sprayer_aims_at_the_peers_host_only_from_its_relay_port() -> None:
    plan = SprayPlan(sprayer_ports=32, wave_sockets=32, wave_s=0.5, lead_s=0.0)
    first = plan.ports(random.Random(7))[0]  # the rng the spray gets: its first target port
    peer_host, other_host = "127.0.9.4", "127.0.9.5"
    target = trio.socket.socket()
    await target.bind((peer_host, first))
    target.listen(4)
    bystander = trio.socket.socket()  # the same port on another host: must see nothing
    await bystander.bind((other_host, first))
    bystander.listen(4)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((VOLUNTEER_HOST, 0))
    port = holder.getsockname()[1]
    peer = Identity.generate()
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                sock, source = await target.accept()
                assert source == (VOLUNTEER_HOST, port)  # from the relay connection's port
                stream = trio.SocketStream(sock)
                conn = await secure_stream(stream, peer, expected_peer_id=None)
                await conn.aclose()

            nursery.start_soon(answer)
            conn = await spray_punch(
                Role.SPRAYER,
                VOLUNTEER_HOST,
                port,
                f"{peer_host}:5000",
                _handshake(Identity.generate(), peer.peer_id),
                plan,
                rng=random.Random(7),
                room=999,
            )
    assert conn is not None and conn.remote_peer_id == peer.peer_id
    await conn.aclose()
    with trio.move_on_after(0.2) as idle:
        await bystander.accept()
    assert idle.cancelled_caught
    for sock in (target, bystander):
        sock.close()
    holder.close()


async def test_no_spray_without_the_descriptors_for_it() -> None:
    before = _open_fds()
    with trio.fail_after(TIMEOUT_S):
        conn = await spray_punch(
            Role.OPENER,
            CLIENT_HOST,
            0,
            f"{VOLUNTEER_HOST}:9",
            _handshake(Identity.generate(), None),
            QUICK,
            room=20,
        )
    assert conn is None and _open_fds() == before


async def test_a_spray_over_the_budget_opens_no_socket() -> None:
    budget = SprayBudget(per_hour=1)
    assert budget.begin(CLIENT_HOST, trio.current_time())
    budget.end()
    ticket = PunchTicket(
        VOLUNTEER_HOST, 40000, f"{CLIENT_HOST}:5000", f"{VOLUNTEER_HOST}:40000", 6000
    )
    assert ticket.spray_role() is Role.SPRAYER
    before = _open_fds()
    with trio.fail_after(TIMEOUT_S):
        got = await hole_punch._sprayed(
            ticket, Role.SPRAYER, budget, _handshake(Identity.generate(), None)
        )
    assert got is None and budget.refused == 1 and _open_fds() == before


async def test_the_sprayer_sends_its_first_syn_to_the_observed_address_before_the_lead() -> None:
    # the one SYN an address-filtering NAT needs to let the opener in: at once, not after the
    # lead (here 10 s, longer than the test waits), from the relay connection's port
    plan = SprayPlan(sprayer_ports=32, wave_sockets=32, wave_s=0.5, lead_s=10.0)
    peer_host = "127.0.9.6"
    target = trio.socket.socket()
    await target.bind((peer_host, 0))
    target.listen(4)
    observed = f"{peer_host}:{target.getsockname()[1]}"
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((VOLUNTEER_HOST, 0))
    port = holder.getsockname()[1]
    peer = Identity.generate()
    with trio.fail_after(5.0):
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                sock, source = await target.accept()
                assert source == (VOLUNTEER_HOST, port)
                conn = await secure_stream(trio.SocketStream(sock), peer, expected_peer_id=None)
                await conn.aclose()

            nursery.start_soon(answer)
            conn = await spray_punch(
                Role.SPRAYER,
                VOLUNTEER_HOST,
                port,
                observed,
                _handshake(Identity.generate(), peer.peer_id),
                plan,
                room=999,
            )
    assert conn is not None and conn.remote_peer_id == peer.peer_id
    await conn.aclose()
    target.close()
    holder.close()
