"""Hole punching over TCP, in trio: upgrading a relayed session to a direct one (DCUtR's shape).

A client C holds a relayed session to a volunteer V through relay R (relay_client.py). Both
learned the other's *observed* address from R for the very connections they made to R (C from
the observed line after CONNECT_PUNCH's "ok", V from `Circuit.peer`). Each then connects to the
other's observed address from a socket bound (SO_REUSEADDR + SO_REUSEPORT) to the local address
and port of its own relay connection: a TCP simultaneous open. Behind NATs that keep the port
of an outgoing connection for a new destination (full cone, address- and port-restricted; Linux
MASQUERADE does) each side's SYN opens its own NAT for the other's, the SYNs meet, and the
connection comes up; behind one that picks a new port per destination (symmetric, MASQUERADE
--random-fully) the observed port is wrong and the punch fails. A failure costs the attempt
and a debug line: the relayed session simply stays.

Timing: both start at the circuit's "ok" (R sends both in the same moment; C punches while
its relayed handshake runs), so the SYNs leave about when each side hears from R. A router
that drops an unsolicited SYN (most home routers) lets either order work: the first SYN waits
in its socket until the other side's arrives. A router that answers one with a reset closes the
sender's mapping, so there the SYNs must cross in flight: both NATs must have sent before
either SYN arrives, which starting at "ok" gives when the difference between R's delays to C
and to V is below the delay between C and V (the triangle inequality of the paths). A connect
that was reset is retried after `PunchPlan.gap_s`, `tries` in all, within the window.

Both also listen on that port for the window, for any port of the other's observed host:
where V's own SYN was reset and no mapping of V's stands in the way (a full-cone NAT, no NAT at
all) C's SYN still gets in; a client with no NAT, a full-cone or an address-restricted one has
its first SYN reset by a port-restricted V's router (it arrives before V's SYN opened it) and
no socket left for V's SYN between its tries, which then found only a reset; and a symmetric
side's SYN comes from a port its NAT picked, not the observed one, which the listener still
takes where the other's NAT lets it in (the Noise handshake insists on the peer id, so whoever
else connects from that host only spoils this punch).
Measured over the lab's 30 pairs: tools/bench_direct_share.py, docs/benchmarks.md.

Rejected: a "punch now" message inside the end-to-end session (a round trip
more, and a message in the request protocol every node would have to know); V only listening
(behind a mapping its own SYN made, the listener's SYN-ACK carries a new sequence number, which
Linux conntrack on V's router takes for out of window and drops); a first SYN with a small TTL
that opens V's NAT but dies before C's router (the ICMP time-exceeded it earns aborts V's
connecting socket, and the SYN-ACK from any other socket is out of window again).

Between a symmetric NAT and a port-restricted one neither the connect nor the listener can
meet: when the relay's spray line says so (each side's observed port against its local one,
`port_spray.role_for`), the punch is a port spray instead (spray.py; its plan and bounds in
port_spray.py): the symmetric side opens many connections to the peer's observed address, the
other sprays SYNs at random ports of the peer's host, and a port both picked comes up. A spray
that does not bring a session (refused by its budget, too few descriptors, a miss) falls back to
the ordinary punch (`spray_or_punch`): the peer's own budget may have refused its part.

Roles on the new connection: C is the Noise initiator insisting on V's peer id; V the
responder, who also insists the peer is the one of the relayed session on that circuit.
The connection is used only when the handshake completes: `SessionPool` then sends new requests
over it and keeps the relayed session as the fallback until it idles out (p2p/session/pool.py).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from crypto.identity import Identity
from p2p.host_port import parse_host_port
from p2p.reach.port_spray import Role, SprayBudget, role_for
from p2p.reach.punch_rules import PunchBudget, PunchPlan, target_allowed
from p2p.reach.spray import Handshake, spray_punch
from p2p.reach.spray import bind_reusable as _bind_reusable
from p2p.session.observers import note_dial
from p2p.session.secure import (
    CONNECT_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    SecureConnection,
    SessionError,
    secure_stream,
)

log = logging.getLogger(__name__)

DEFAULT_PLAN = PunchPlan()
# A client's sprays, process-wide (a gateway's pool dials many volunteers): port_spray.py's bounds.
CLIENT_SPRAYS = SprayBudget()


@attrs.frozen
class PunchTicket:
    """What one side needs for its punch: its relay connection's local address and port, and
    the peer's observed address (`ip:port`, from the relay). For a port spray also this side's
    address as the relay saw it (`you`) and the peer's local port as the peer told the relay
    (`peer_local_port`; 0: not told, no spray)."""

    local_host: str
    local_port: int
    remote: str
    you: str = ""
    peer_local_port: int = 0

    def spray_role(self) -> Role | None:
        """This side's part in a port spray, or None (the ordinary punch)."""
        try:
            you_port = parse_host_port(self.you)[1] if self.you else 0
            remote_port = parse_host_port(self.remote)[1]
        except ValueError:
            return None
        if not you_port:
            return None
        return role_for(self.local_port, you_port, self.peer_local_port, remote_port)

    def role_here(self) -> Role | None:
        """`spray_role`, but a side without NAT (the relay saw its own address) sprays nothing:
        it has no filter, so the ordinary punch's listener takes the opener's connections, and a
        spray would only spend SYNs and the budget (measured: an unNATed client's spray at a
        symmetric volunteer busy with another's missed the first request's wait)."""
        role = self.spray_role()
        if role is Role.SPRAYER and self.you.rsplit(":", 1)[0].strip("[]") == self.local_host:
            return None
        return role


def ticket_for(
    stream: trio.SocketStream, remote: str, *, you: str = "", peer_local_port: int = 0
) -> PunchTicket:
    """The ticket for punching to *remote* from the local end of the relay connection *stream*
    (*you*, *peer_local_port*: from a spray line, relay_protocol.py's `Observed`)."""
    local = stream.socket.getsockname()
    return PunchTicket(str(local[0]), int(local[1]), remote, you, peer_local_port)


async def _sprayed(
    ticket: PunchTicket, role: Role, budget: SprayBudget, handshake: Handshake
) -> SecureConnection | None:
    """The port spray for *ticket* within *budget*; None when refused or nothing came up."""
    host = parse_host_port(ticket.remote)[0]
    if not budget.begin(host, trio.current_time()):
        log.debug("no spray to %s: over the spray budget", ticket.remote)
        return None
    try:
        return await spray_punch(
            role, ticket.local_host, ticket.local_port, ticket.remote, handshake
        )
    finally:
        budget.end()


async def _punched(
    ticket: PunchTicket, plan: PunchPlan, handshake: Handshake
) -> SecureConnection | None:
    """The ordinary punch (`punch_accept`) and the handshake on what it brings, or None."""
    stream = await punch_accept(ticket, plan)
    if stream is None:
        return None
    conn = await handshake(stream)
    if conn is None:
        await trio.aclose_forcefully(stream)
    return conn


async def spray_or_punch(
    ticket: PunchTicket,
    role: Role | None,
    budget: SprayBudget,
    plan: PunchPlan,
    handshake: Handshake,
) -> SecureConnection | None:
    """One side's punch for *ticket*: the port spray when *role* names one and *budget* allows
    it, and the ordinary punch whenever the spray does not bring a session (refused by the
    budget, too few descriptors, nothing came up) or *role* is None. The other side decides
    for itself (its own budget), so one side's spray may meet the other's ordinary punch:
    the sprayer's listener takes the peer's SYN wherever its NAT lets it in, as
    `punch_accept`'s does, and the opener's SYNs find `punch_accept`'s listener the same way.
    The two run one after the other, not at once: each side must settle on the same one
    connection (spray.py's opener keeps only its first), and two races on one port, each
    with its own winner, could leave the two sides holding different ones."""
    if role is not None:
        got = await _sprayed(ticket, role, budget, handshake)
        if got is not None:
            return got
        log.debug("no spray session to %s: the ordinary punch", ticket.remote)
    return await _punched(ticket, plan, handshake)


async def open_reusable_tcp(
    address: str,
    *,
    local_address: str | None = None,
    local_port: int = 0,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> trio.SocketStream:
    """A TCP connection to *address* from a socket bound with SO_REUSEADDR and SO_REUSEPORT
    (so a punch can bind the same local port while the relay connection lives), within
    *timeout_s*; SessionError otherwise."""
    try:
        host, port = parse_host_port(address)
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise SessionError(f"cannot connect to {address}: {exc}") from exc
    if not infos:
        raise SessionError(f"cannot connect to {address}: no address")
    note_dial(host)  # a punch's SYN opens an address-filtering NAT too (p2p/reach/strangers.py)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        _bind_reusable(sock, local_address, local_port)
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        with trio.fail_after(timeout_s):
            await trio.lowlevel.wait_writable(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException as exc:
        sock.close()
        if isinstance(exc, (OSError, trio.TooSlowError)):
            why = str(exc) or "timed out"
            raise SessionError(f"cannot connect to {address}: {why}") from exc
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def punch_connect(
    ticket: PunchTicket, plan: PunchPlan = DEFAULT_PLAN
) -> trio.SocketStream | None:
    """Either side's simultaneous open: connect from the ticket's local port to its remote,
    retrying after a reset, within the plan's window; None when no try got through (each
    failure at debug)."""
    started = trio.current_time()
    tried = 0
    while True:
        at = plan.next_try(tried, started, trio.current_time())
        if at is None:
            return None
        await trio.sleep_until(at)
        left = plan.deadline(started) - trio.current_time()
        if left <= 0:
            return None
        tried += 1
        try:
            return await open_reusable_tcp(
                ticket.remote,
                local_address=ticket.local_host,
                local_port=ticket.local_port,
                timeout_s=left,
            )
        except SessionError as exc:
            log.debug("punch try %d to %s failed: %s", tried, ticket.remote, exc)


async def punch_accept(
    ticket: PunchTicket, plan: PunchPlan = DEFAULT_PLAN
) -> trio.SocketStream | None:
    """Either side's punch: `punch_connect`, and a listener on the same port for the window
    that serves the peer's observed host only, from any port (a symmetric NAT sends the SYN
    from a port of its own; anyone else is closed unread); the first connection either
    brings, or None."""
    try:
        host, _port = parse_host_port(ticket.remote)
        raw = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    except (OSError, ValueError) as exc:
        log.debug("no punch to %s: %s", ticket.remote, exc)
        return None
    got: list[trio.SocketStream] = []
    try:
        _bind_reusable(raw, ticket.local_host, ticket.local_port)
        raw.listen(4)
        listener = trio.socket.from_stdlib_socket(raw)
    except OSError as exc:  # the connect alone still has its chance
        raw.close()
        log.debug("no punch listener on port %d: %s", ticket.local_port, exc)
        return await punch_connect(ticket, plan)
    try:
        with trio.move_on_after(plan.window_s):
            async with trio.open_nursery() as nursery:

                async def first(work: Callable[[], Awaitable[trio.SocketStream | None]]) -> None:
                    stream = await work()
                    if stream is not None and not got:
                        got.append(stream)
                        nursery.cancel_scope.cancel()
                    elif stream is not None:
                        await trio.aclose_forcefully(stream)

                nursery.start_soon(first, partial(_accept_from, listener, host))
                nursery.start_soon(first, partial(punch_connect, ticket, plan))
    finally:
        listener.close()
    return got[0] if got else None


async def _accept_from(listener: trio.socket.SocketType, expected_host: str) -> trio.SocketStream:
    while True:
        sock, peer = await listener.accept()
        if str(peer[0]) == expected_host:
            return trio.SocketStream(sock)
        sock.close()  # its SYN found the way in, but it is not the circuit's client


async def punch_initiator(
    ticket: PunchTicket,
    identity: Identity,
    peer_id: str,
    *,
    psk: bytes | None = None,
    plan: PunchPlan = DEFAULT_PLAN,
) -> SecureConnection | None:
    """The client's punch: a direct session to *peer_id* (Noise initiator, insisting on it), or
    None when the punch or its handshake failed."""

    async def handshake(stream: trio.SocketStream) -> SecureConnection | None:
        try:
            return await secure_stream(
                stream,
                identity,
                expected_peer_id=peer_id,
                psk=psk,
                label=f"{peer_id[:12]} (hole-punched, {ticket.remote})",
            )
        except SessionError as exc:
            log.debug("hole punched to %s, but: %s", ticket.remote, exc)
            return None

    conn = await spray_or_punch(ticket, ticket.role_here(), CLIENT_SPRAYS, plan, handshake)
    if conn is None:
        log.debug("no hole punched to %s at %s", peer_id[:12], ticket.remote)
    return conn


class PunchAttempt:
    """The client's punch for one relayed dial, started at the circuit's "ok" in the pool's
    nursery; `outcome()` is its session or None. `cancel()` when the relayed dial is not kept
    (a lost race, a failed handshake): a session it still brings is closed."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self._result: SecureConnection | None = None
        self._unwanted = False
        self.ticket: PunchTicket | None = None  # once started

    def start(
        self, ticket: PunchTicket, identity: Identity, peer_id: str, psk: bytes | None
    ) -> None:
        self.ticket = ticket
        self._nursery.start_soon(self._run, ticket, identity, peer_id, psk)

    async def _run(
        self, ticket: PunchTicket, identity: Identity, peer_id: str, psk: bytes | None
    ) -> None:
        try:
            with self._scope:
                self._result = await punch_initiator(ticket, identity, peer_id, psk=psk)
        finally:
            self._finished.set()
        if self._unwanted and self._result is not None:
            await self._result.aclose()
            self._result = None

    async def outcome(self) -> SecureConnection | None:
        await self._finished.wait()
        return self._result

    def cancel(self) -> None:
        self._unwanted = True
        self._scope.cancel()
        if self._finished.is_set() and self._result is not None:
            self._nursery.start_soon(self._result.aclose)
            self._result = None


class RelayedPeer:
    """The peer id of the relayed session on one circuit, once its handshake completes: the
    punched session must be the same peer's."""

    def __init__(self) -> None:
        self._known = trio.Event()
        self.peer_id: str | None = None

    def settle(self, peer_id: str | None) -> None:
        self.peer_id = peer_id
        self._known.set()

    async def wait(self) -> str | None:
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            await self._known.wait()
        return self.peer_id


PunchedHandler = Callable[[SecureConnection], Awaitable[None]]


@attrs.define
class PunchResponder:
    """A volunteer's side: answers punches for the circuits it accepts, within its budget."""

    budget: PunchBudget = attrs.Factory(PunchBudget)
    plan: PunchPlan = DEFAULT_PLAN
    sprays: SprayBudget = attrs.Factory(SprayBudget)
    punched: int = 0  # sessions that came up this way (logs, tests)

    def may_punch(self, remote: str, relay_host: str) -> bool:
        """Whether to punch to *remote* (a circuit's `peer`, as the relay at *relay_host*, the
        address of our connection to it, saw the client): an address that relay may name,
        within the budget."""
        try:
            host, _ = parse_host_port(remote)
        except ValueError:
            return False
        if not target_allowed(host, relay_host):
            log.debug("no punch to %s: the relay at %s may not name it", remote, relay_host)
            return False
        return self.budget.allow(host, trio.current_time())

    async def answer(
        self,
        ticket: PunchTicket,
        identity: Identity,
        relayed: RelayedPeer,
        serve: PunchedHandler,
        *,
        psk: bytes | None = None,
    ) -> None:
        """Punch to the client of one accepted circuit; serve the session if one comes up and
        its peer is the relayed session's. Every failure ends here, at debug (a bug, logged,
        too: it must not end the relayed session or the reservation)."""
        try:
            await self._answer(ticket, identity, relayed, serve, psk)
        except Exception:
            log.exception("hole punch to %s failed", ticket.remote)

    async def _answer(
        self,
        ticket: PunchTicket,
        identity: Identity,
        relayed: RelayedPeer,
        serve: PunchedHandler,
        psk: bytes | None,
    ) -> None:

        async def handshake(stream: trio.SocketStream) -> SecureConnection | None:
            try:
                conn = await secure_stream(
                    stream, identity, expected_peer_id=None, psk=psk, label=ticket.remote
                )
            except SessionError as exc:
                log.debug("hole punched to %s, but: %s", ticket.remote, exc)
                return None
            expected = await relayed.wait()
            if expected is None or conn.remote_peer_id != expected:
                log.debug("punched session from %s is not the relayed one's peer", ticket.remote)
                await conn.aclose()
                return None
            return conn

        got = await spray_or_punch(ticket, ticket.role_here(), self.sprays, self.plan, handshake)
        if got is None:
            log.debug("no hole punched to a client at %s", ticket.remote)
            return
        conn = got
        self.punched += 1
        log.debug("hole punched: %s at %s", conn.remote_peer_id[:12], ticket.remote)
        try:
            await serve(conn)
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
