"""Both ends of a relayed circuit that are not the relay, in trio.

- A client dials a relayed volunteer: `dial_via_relay` opens TCP to the relay, asks for a circuit
  (CONNECT), and on "ok" runs the ordinary Noise XX initiator over the spliced stream, insisting
  on the volunteer's peer id. The result is a `SecureConnection` like any other, so the pool,
  the request layer and failover run over it unchanged. `open_relayed` (the pool's) asks with
  CONNECT_SPRAY (CONNECT_PUNCH plus its socket's local port, so a port spray can be arranged:
  port_spray.py) and also returns the hole punch it started (hole_punch.py) and the addresses
  the relay reported (`RelaySeen`: what punch_odds.py predicts the punch's chances from).
- A volunteer holds a reservation (`hold_reservation`): a CONTROL session to the relay, renewed
  every third of its lifetime; each `Circuit` token it hears is answered with a fresh TCP
  connection presenting the token (ACCEPT), over which it is the Noise responder. A circuit that
  names the client's observed address (`Circuit.peer`) is also answered with a hole punch from
  the ACCEPT connection's port, within the volunteer's `PunchResponder` budget; one that also
  names the client's local port (`Circuit.peer_port`) with ACCEPT_SPRAY and the volunteer's own,
  whose observed line says whether the punch is a port spray; a volunteer without one answers
  with a plain ACCEPT, whose two-field line tells the client that no punch is coming.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from crypto.identity import Identity, public_key_from_peer_id
from p2p.dht.records import RelayHint
from p2p.errors import ErrorCode
from p2p.host_port import format_host_port, parse_host_port
from p2p.reach.hole_punch import (
    PunchAttempt,
    PunchResponder,
    RelayedPeer,
    open_reusable_tcp,
    ticket_for,
)
from p2p.reach.punch_odds import RelaySeen
from p2p.reach.punch_rules import target_allowed
from p2p.reach.relay_protocol import (
    Circuit,
    Kind,
    Observed,
    ObservedReader,
    Preamble,
    Refused,
    RelayProtocolError,
    Reserve,
    Reserved,
    StatusReader,
    decode_control,
    encode_control,
    spray_preamble,
)
from p2p.reach.relay_table import PENDING_S, RelayRefused
from p2p.session.secure import (
    SecureConnection,
    SessionError,
    connect,
    secure_stream,
)

log = logging.getLogger(__name__)

# The relay answers CONNECT once the volunteer has come back with its token: one round trip
# relay->V plus a TCP connect V->relay; past its own pending deadline it answers no_reservation.
STATUS_WAIT_S = PENDING_S + 2.0
RESERVE_ANSWER_S = 10.0
MAX_CIRCUITS_AT_ONCE = 16  # circuits a volunteer answers concurrently per relay


class RelayDialError(SessionError):
    """A relay refused (or failed) a circuit; `code` says why (RELAY_FULL, NO_RESERVATION)."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


async def read_status(stream: trio.SocketStream, wait_s: float, what: str) -> bytes:
    """Read the relay's status line; returns the bytes after it. Raises RelayDialError."""
    reader = StatusReader()
    try:
        with trio.fail_after(wait_s):
            while not reader.done:
                data = await stream.receive_some(reader.needed)
                if not data:
                    raise RelayDialError(
                        f"{what}: the relay closed the connection", ErrorCode.UNAVAILABLE
                    )
                reader.feed(bytes(data))
    except (trio.TooSlowError, trio.BrokenResourceError, OSError, RelayProtocolError) as exc:
        raise RelayDialError(
            f"{what}: {exc or 'no answer in time'}", ErrorCode.UNAVAILABLE
        ) from exc
    if reader.code is not None:
        raise RelayDialError(f"{what}: refused ({reader.code.value})", reader.code)
    return reader.remaining


async def read_observed(
    stream: trio.SocketStream, leftover: bytes, wait_s: float
) -> tuple[Observed, bytes]:
    """After CONNECT_PUNCH's "ok": the observed line (the volunteer's address and ours, as the
    relay saw them) and the bytes after it. Raises RelayDialError."""
    reader = ObservedReader()
    try:
        with trio.fail_after(wait_s):
            observed = reader.feed(leftover)
            while observed is None:
                data = await stream.receive_some(reader.needed)
                if not data:
                    raise RelayDialError("the relay closed the connection", ErrorCode.UNAVAILABLE)
                observed = reader.feed(bytes(data))
    except (trio.TooSlowError, trio.BrokenResourceError, OSError, RelayProtocolError) as exc:
        raise RelayDialError(
            f"observed line: {exc or 'no answer in time'}", ErrorCode.UNAVAILABLE
        ) from exc
    return observed, reader.remaining


@attrs.frozen
class RelayedDial:
    """A relayed session, the hole punch started for it (None: none asked for, or the relay
    named an address we do not punch to) and the addresses the relay reported (None without a
    punch)."""

    conn: SecureConnection
    attempt: PunchAttempt | None = None
    seen: RelaySeen | None = None


async def dial_relayed(
    relay: RelayHint,
    target_peer_id: str,
    identity: Identity,
    *,
    psk: bytes | None = None,
    local_address: str | None = None,
    punch_in: trio.Nursery | None = None,
) -> tuple[SecureConnection, PunchAttempt | None]:
    """`open_relayed`'s session and punch, without the addresses."""
    dial = await open_relayed(
        relay, target_peer_id, identity, psk=psk, local_address=local_address, punch_in=punch_in
    )
    return dial.conn, dial.attempt


async def open_relayed(
    relay: RelayHint,
    target_peer_id: str,
    identity: Identity,
    *,
    psk: bytes | None = None,
    local_address: str | None = None,
    punch_in: trio.Nursery | None = None,
) -> RelayedDial:
    """A session to *target_peer_id* through *relay*, end to end encrypted. With *punch_in*
    (a nursery that outlives the dial) it asks for a hole punch too (CONNECT_PUNCH) and starts
    it there at the circuit's "ok", while the relayed handshake runs: the attempt comes back
    with the session (the caller cancels it if it does not keep the session), with what the
    relay saw. SessionError (or RelayDialError with the relay's code) when the session cannot
    be had."""
    what = f"{target_peer_id[:12]} via relay {relay.peer_id[:12]} at {relay.address}"
    try:
        key = public_key_from_peer_id(target_peer_id)
    except ValueError as exc:
        raise SessionError(f"{what}: not a peer id") from exc
    stream = await open_reusable_tcp(relay.address, local_address=local_address)
    attempt: PunchAttempt | None = None
    seen: RelaySeen | None = None
    try:
        if punch_in is not None:
            local_port = int(stream.socket.getsockname()[1])
            await stream.send_all(spray_preamble(Kind.CONNECT_SPRAY, key, local_port).encode())
        else:
            await stream.send_all(Preamble(Kind.CONNECT, key).encode())
        leftover = await read_status(stream, STATUS_WAIT_S, what)
        if punch_in is not None:
            observed, leftover = await read_observed(stream, leftover, STATUS_WAIT_S)
            seen = _seen(stream, observed)
            # No port in the line: the volunteer answered a plain ACCEPT, which this version
            # sends only without a punch responder (--no-hole-punch): no punch is coming, so
            # none is started and the first request does not wait for one (p2p/session/pool.py).
            punches = observed.peer_port != 0
            if punches and target_allowed(parse_host_port(observed.peer)[0], _peer_host(stream)):
                attempt = PunchAttempt(punch_in)
                ticket = ticket_for(
                    stream, observed.peer, you=observed.you, peer_local_port=observed.peer_port
                )
                attempt.start(ticket, identity, target_peer_id, psk)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    try:
        conn = await secure_stream(
            stream, identity, expected_peer_id=target_peer_id, psk=psk, initial=leftover, label=what
        )
    except BaseException:
        if attempt is not None:
            attempt.cancel()
        raise
    conn.via_relay = relay.peer_id
    return RelayedDial(conn, attempt, seen)


async def dial_via_relay(
    relay: RelayHint,
    target_peer_id: str,
    identity: Identity,
    *,
    psk: bytes | None = None,
    local_address: str | None = None,
) -> SecureConnection:
    """A session to *target_peer_id* through *relay* (a plain CONNECT: no hole punch)."""
    conn, _ = await dial_relayed(
        relay, target_peer_id, identity, psk=psk, local_address=local_address
    )
    return conn


# What a volunteer does with a session that arrived through a relay (serve it like any other).
CircuitHandler = Callable[[SecureConnection, RelayHint], Awaitable[None]]


async def hold_reservation(
    relay: RelayHint,
    identity: Identity,
    on_session: CircuitHandler,
    *,
    psk: bytes | None = None,
    local_address: str | None = None,
    on_reserved: Callable[[float], None] = lambda _ttl: None,
    punch: PunchResponder | None = None,
) -> None:
    """Reserve at *relay* and answer its circuits until the control session ends (raises
    SessionError or, when the relay lets go, RelayRefused) or the caller cancels.
    `on_reserved(ttl_s)` once reserved; a refusal raises `RelayRefused` with the relay's code
    before that. *punch*: answer the hole punches of circuits that ask for one (None: never)."""
    control = await connect(
        relay.address,
        identity,
        relay.peer_id,
        psk=psk,
        local_address=local_address,
        preamble=Preamble(Kind.CONTROL).encode(),
    )
    try:
        await control.send_bytes(encode_control(Reserve()))
        with trio.fail_after(RESERVE_ANSWER_S):
            answer = await _next_control(control)
        if isinstance(answer, Refused):
            raise RelayRefused(f"relay {relay.peer_id[:12]}: {answer.text}", answer.code)
        if not isinstance(answer, Reserved):
            raise SessionError(f"relay {relay.peer_id[:12]} answered {type(answer).__name__}")
        ttl = answer.ttl_s
        on_reserved(ttl)
        limiter = trio.CapacityLimiter(MAX_CIRCUITS_AT_ONCE)
        failure: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def guarded(work: Callable[[], Awaitable[None]]) -> None:
                # The first fault ends the reservation; kept out of the nursery's exception
                # group so the caller sees one SessionError or RelayRefused.
                try:
                    await work()
                except (SessionError, RelayRefused, RelayProtocolError) as exc:
                    failure.append(exc)
                nursery.cancel_scope.cancel()

            async def read_circuits() -> None:
                while True:
                    msg = await _next_control(control)
                    if isinstance(msg, Circuit):
                        if limiter.available_tokens:  # else the client's wait times out
                            nursery.start_soon(
                                _answer_circuit,
                                relay,
                                msg,
                                identity,
                                psk,
                                local_address,
                                on_session,
                                limiter,
                                punch,
                            )
                    elif isinstance(msg, Refused):  # a renewal refused: the relay let us go
                        raise RelayRefused(f"relay {relay.peer_id[:12]}: {msg.text}", msg.code)

            nursery.start_soon(guarded, partial(_renew, control, ttl))
            nursery.start_soon(guarded, read_circuits)
        if failure:
            raise failure[0]
        raise SessionError(f"reservation at relay {relay.peer_id[:12]} ended")
    except trio.TooSlowError as exc:
        raise SessionError(f"relay {relay.peer_id[:12]} did not answer the reservation") from exc
    except RelayProtocolError as exc:
        raise SessionError(f"relay {relay.peer_id[:12]}: {exc}") from exc
    finally:
        with trio.CancelScope(shield=True):
            await control.aclose()


async def _next_control(control: SecureConnection) -> object:
    data = await control.receive_bytes()
    if data is None:
        raise SessionError("the relay closed the control session")
    return decode_control(data)


async def _renew(control: SecureConnection, ttl: float) -> None:
    while True:
        await trio.sleep(ttl / 3)
        await control.send_bytes(encode_control(Reserve()))


async def _answer_circuit(
    relay: RelayHint,
    circuit: Circuit,
    identity: Identity,
    psk: bytes | None,
    local_address: str | None,
    on_session: CircuitHandler,
    limiter: trio.CapacityLimiter,
    punch: PunchResponder | None,
) -> None:
    # a port spray only where we punch at all: a client told our port would spray for nothing
    spray = punch is not None and bool(circuit.peer and circuit.peer_port)
    observed: Observed | None = None
    async with limiter:
        try:
            stream = await open_reusable_tcp(relay.address, local_address=local_address)
            try:
                if spray:
                    port = int(stream.socket.getsockname()[1])
                    preamble = spray_preamble(Kind.ACCEPT_SPRAY, circuit.token, port)
                else:
                    preamble = Preamble(Kind.ACCEPT, circuit.token)
                await stream.send_all(preamble.encode())
                leftover = await read_status(stream, STATUS_WAIT_S, "circuit")
                if spray:  # our own observed line: PEER (the client) YOU (us) PORT (its port)
                    observed, leftover = await read_observed(stream, leftover, STATUS_WAIT_S)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        except SessionError as exc:
            log.debug("circuit via %s failed: %s", relay.peer_id[:12], exc)
            return
        # The punch starts with the relayed handshake (both sides got "ok" at the same moment);
        # the nursery keeps the two sessions of one circuit together.
        relayed = RelayedPeer()
        async with trio.open_nursery() as nursery:
            relay_host = _peer_host(stream)
            if punch is not None and circuit.peer and punch.may_punch(circuit.peer, relay_host):
                ticket = ticket_for(stream, circuit.peer)
                if observed is not None and observed.peer == circuit.peer:
                    ticket = ticket_for(
                        stream, circuit.peer, you=observed.you, peer_local_port=observed.peer_port
                    )

                async def serve_punched(conn: SecureConnection) -> None:
                    await _serve(conn, relay, on_session)

                nursery.start_soon(
                    partial(punch.answer, ticket, identity, relayed, serve_punched, psk=psk)
                )
            try:
                conn = await secure_stream(
                    stream,
                    identity,
                    expected_peer_id=None,
                    psk=psk,
                    initial=leftover,
                    label=f"a client via relay {relay.peer_id[:12]}",
                )
            except SessionError as exc:
                relayed.settle(None)
                log.debug("circuit via %s failed: %s", relay.peer_id[:12], exc)
                return
            relayed.settle(conn.remote_peer_id)
            conn.via_relay = relay.peer_id
            await _serve(conn, relay, on_session)


def relay_seen(local: str, observed: Observed) -> RelaySeen:
    """What punch_odds.py needs of one observed line, with our socket's address *local*: the
    volunteer's mapping is known when it told the relay its local port (a spray line's third
    field): kept when that is the port the relay saw it at."""
    keeps: bool | None = None
    if observed.peer_port:
        keeps = parse_host_port(observed.peer)[1] == observed.peer_port
    return RelaySeen(local, observed.you, observed.peer, peer_keeps_port=keeps)


def _seen(stream: trio.SocketStream, observed: Observed) -> RelaySeen:
    return relay_seen(_local_address(stream), observed)


def _local_address(stream: trio.SocketStream) -> str:
    """Our end of a connection as `ip:port` ("" once the socket is gone)."""
    try:
        local = stream.socket.getsockname()
    except OSError:
        return ""
    return format_host_port(str(local[0]), int(local[1]))


def _peer_host(stream: trio.SocketStream) -> str:
    """The relay's address as our connection to it sees it ("" once the socket is gone)."""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return ""


async def _serve(conn: SecureConnection, relay: RelayHint, on_session: CircuitHandler) -> None:
    """One session of a circuit (relayed, or punched: `via_relay` None), closed at the end."""
    how = "relayed" if conn.via_relay else "hole-punched"
    try:
        await on_session(conn, relay)
    except SessionError as exc:  # one circuit's end is not the reservation's
        log.debug("%s session via %s ended: %s", how, relay.peer_id[:12], exc)
    except Exception:
        log.exception("%s session handler failed", how)
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()
