"""Established sessions kept per peer and shared by concurrent requests, and how they are dialled.

A second request to the same node pays no handshake. One reader task per connection routes each
incoming message to its request by id; a connection with no request for `IDLE_CLOSE_S` closes.

Dialling a node: its record lists up to 8 addresses, any of which may be dead, filtered, or a
tarpit that accepts TCP and never answers. They are raced as happy eyeballs races a host's
addresses (RFC 8305): the next address is tried `ADDRESS_STAGGER_S` after the previous one (at
once when the previous one failed), the first to finish the Noise handshake wins and the others
are cancelled, and the whole dial (connect + handshake, all addresses) has `DIAL_DEADLINE_S`.
Rejected: trying addresses one after another with the session layer's own timeouts (5 s connect
+ 10 s handshake each: 8 tarpit addresses held a client 80 s+, issue #14), and dialling all at
once (8 handshakes per dial for every honest multi-homed node). `staggered_race` is the same race
the client runs across providers (p2p/client/provider_race.py).

A node behind a NAT also names relays in its record (p2p/reach/): they join the race after its
own addresses, so a node that is reachable directly is dialled directly, and one that is not
costs one stagger per dead address before its first relay is tried. A relayed session is an
ordinary end-to-end Noise session over a spliced stream, kept and reused like any other.

A relayed session is then upgraded when a hole punch works (p2p/reach/hole_punch.py): the
direct session takes the relayed one's place for new requests, requests already on the relayed
one finish there, and it stays as the fallback (used again if the direct one breaks) until it
idles out. Each session records its `path` (direct / relayed / hole-punched / local). The first
request on a fresh relayed session waits for its punch (punch_gate.py: the dial itself does not,
so the race over providers sees the session up at once), so a one-shot `ask` goes direct on its
first request: up to `PUNCH_WAIT_LIKELY_S` when p2p/reach/punch_odds.py predicts the punch
works (from what the relay saw and what earlier punches to that peer did), briefly otherwise;
the wait ends at once when the punch ends, and `punch_wait` reports it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Generic, TypeVar

import attrs
import trio

from crypto.identity import Identity
from p2p.dht.records import RelayHint
from p2p.protocol import wire
from p2p.protocol.requests_client import RequestClient
from p2p.reach.hole_punch import PunchAttempt
from p2p.reach.punch_odds import (
    LIKELY_WAIT_S,
    PunchHistory,
    RelaySeen,
    listed_hosts,
    predict,
    wait_bound,
)
from p2p.reach.punch_rules import DIRECT, HOLE_PUNCHED, LOCAL, RELAYED
from p2p.reach.relay_client import RelayedDial, open_relayed
from p2p.session.local import Connection, local_pair
from p2p.session.punch_gate import PunchGate, PunchWait
from p2p.session.secure import SessionError, connect

IDLE_CLOSE_S = 60.0
# RFC 8305 section 5's recommended Connection Attempt Delay: long enough for one handshake on a
# fast path to win before a second is started, short enough that a dead address costs little.
ADDRESS_STAGGER_S = 0.25
# Connect + handshake to one node, all its addresses together. A Noise XX handshake is one and a
# half round trips (< 1 s even between continents over a lossy link, with one SYN retransmit
# at 1 s); 3 s leaves room for that and bounds what a node that never answers can cost.
DIAL_DEADLINE_S = 3.0
# Through a relay the dial is longer by the relay's round trip to the volunteer and the
# volunteer's connect back to the relay (relay_client.STATUS_WAIT_S bounds that part).
RELAYED_DIAL_EXTRA_S = 3.0
# A fresh relayed session waits for its hole punch before its first request goes out, so a
# one-shot `ask` gets the direct path too. Predicted to work (p2p/reach/punch_odds.py): up to
# PUNCH_WAIT_LIKELY_S (a working punch lands about one round trip after the relayed handshake,
# 12 ms in a quiet lab, up to a SYN retransmit later under load). Otherwise this many
# relayed-dial times, at most PUNCH_WAIT_MAX_S: a punch that cannot work costs only that.
PUNCH_WAIT_DIALS = 2.0
PUNCH_WAIT_MAX_S = 0.25
PUNCH_WAIT_LIKELY_S = LIKELY_WAIT_S

T = TypeVar("T")

Inbox = trio.MemoryReceiveChannel[wire.Message | SessionError]


class MultiplexedSession:
    """The trio loop around `RequestClient`: one reader task routes each answer to the inbox of
    its request; the request rules (ids, finals, cancels, what to ignore) are the machine's."""

    def __init__(self, conn: Connection, path: str = DIRECT) -> None:
        self.conn = conn
        self.path = path  # how it was reached: p2p/reach/punch_rules.py's PATHS
        self.closed = False
        # a fresh relayed session's wait for its punch, taken by its first requests
        self.gate: PunchGate[MultiplexedSession] | None = None
        self.requests = RequestClient()
        self._routes: dict[int, trio.MemorySendChannel[wire.Message | SessionError]] = {}

    @property
    def peer_id(self) -> str:
        return self.conn.remote_peer_id

    async def run(self, idle_close_s: float = IDLE_CLOSE_S) -> None:
        """Route messages until the peer closes, the connection breaks, or it idles out."""
        reason = "node closed the connection"
        try:
            heard = trio.current_time()
            while True:
                # One scope for many messages (as in client/token_stream.py's receive_answer):
                # when it fires, the session closes only if nothing arrived for idle_close_s and
                # no request is open.
                with trio.CancelScope(deadline=heard + idle_close_s):
                    while True:
                        msg = await self.conn.receive()
                        if msg is None:
                            return
                        heard = trio.current_time()
                        await self._route(msg)
                if trio.current_time() >= heard + idle_close_s:
                    if not self._routes:
                        reason = "idle"
                        return
                    heard = trio.current_time()  # a request is open: wait another period
        except SessionError as exc:
            reason = str(exc)
        finally:
            self.closed = True
            for route in self._routes.values():
                route.send_nowait(SessionError(reason))
            with trio.CancelScope(shield=True):
                await self.conn.aclose()

    async def _route(self, msg: wire.Received) -> None:
        event = self.requests.receive(msg)
        if event is not None:
            route = self._routes.get(event.id)
            if route is not None:
                route.send_nowait(event)
        for out in self.requests.take_outgoing():
            await self.conn.send(out)

    @asynccontextmanager
    async def request(self, msg: wire.Request) -> AsyncIterator[tuple[int, Inbox]]:
        """Send *msg* under a fresh id; yield (id, inbox). Leaving early sends `cancel`. The
        first requests of a fresh relayed session wait for its punch (`gate`) and go on the
        punched session when it came up in time."""
        if self.closed:
            raise SessionError("session closed")
        if self.gate is not None:
            direct = await self.gate.wait()
            if self.gate is not None and self.gate.passed:
                self.gate = None
            if direct is not None and not direct.closed:
                async with direct.request(msg) as on_direct:
                    yield on_direct
                return
        opened = self.requests.start(msg)
        rid = opened.id
        send, receive = trio.open_memory_channel[wire.Message | SessionError](math.inf)
        self._routes[rid] = send
        try:
            await self.conn.send(opened)
            yield rid, receive
        finally:
            self._routes.pop(rid, None)
            cancel = self.requests.close(rid)
            if cancel is not None and not self.closed:
                with trio.CancelScope(shield=True), trio.move_on_after(1), suppress(SessionError):
                    await self.conn.send(cancel)


@attrs.define
class RaceOutcome(Generic[T]):
    """How a staggered race ended: the winner (index and value) if any, why each failed
    attempt failed, and how long each attempt that was cancelled unfinished had run (attempts
    never started are in none of these)."""

    winner: int | None = None
    value: T | None = None
    failures: dict[int, SessionError] = attrs.field(factory=dict)
    unfinished: dict[int, float] = attrs.field(factory=dict)
    timed_out: bool = False


async def staggered_race(
    attempts: Sequence[Callable[[], Awaitable[T]]],
    stagger_s: float,
    deadline_s: float,
    discard: Callable[[T], Awaitable[None]],
) -> RaceOutcome[T]:
    """Start *attempts* in order, each `stagger_s` after the previous one or as soon as it
    failed; the first to return wins and the rest are cancelled. An attempt that still returns
    after the winner (it finished before its cancellation was delivered) goes to *discard*
    (close it, or leave it where it is kept), so the race yields exactly one result. Attempts
    fail by raising `SessionError`; anything else is a bug and propagates. Everything ends
    within *deadline_s*, so at most deadline_s / stagger_s + 1 attempts are ever started."""
    out: RaceOutcome[T] = RaceOutcome()
    started: dict[int, float] = {}

    async def run(i: int, attempt: Callable[[], Awaitable[T]], ended: trio.Event) -> None:
        try:
            value = await attempt()
        except SessionError as exc:
            out.failures[i] = exc
            return
        finally:
            ended.set()
        if out.winner is None:
            out.winner, out.value = i, value
            nursery.cancel_scope.cancel()
        else:
            with trio.CancelScope(shield=True):
                await discard(value)

    with trio.move_on_after(deadline_s) as deadline:
        async with trio.open_nursery() as nursery:
            for i, attempt in enumerate(attempts):
                if out.winner is not None:
                    break  # it won while we waited: its cancellation has not landed here yet
                ended = trio.Event()
                started[i] = trio.current_time()
                nursery.start_soon(run, i, attempt, ended)
                with trio.move_on_after(stagger_s):
                    await ended.wait()
    out.timed_out = deadline.cancelled_caught
    now = trio.current_time()
    for i, t in started.items():
        if i != out.winner and i not in out.failures:
            out.unfinished[i] = now - t
    return out


async def _close(conn: Connection) -> None:
    await conn.aclose()


class SessionPool:
    def __init__(
        self,
        identity: Identity,
        nursery: trio.Nursery,
        *,
        psk: bytes | None = None,
        local: Callable[[Connection], Awaitable[None]] | None = None,
        hole_punch: bool = True,
    ) -> None:
        """`local`: the node's own connection handler, when this pool belongs to a node (its
        `--api` gateway); requests the ranking sends to the node itself then stay in-process.
        `hole_punch` False: relayed dials ask for no punch (a plain CONNECT)."""
        self._hole_punch = hole_punch
        self._history = PunchHistory()  # how earlier punches to each peer went
        self._waits: dict[str, PunchWait] = {}
        self._identity = identity
        self._local = local
        self._psk = psk
        self._nursery = nursery
        self._sessions: dict[str, MultiplexedSession] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.handshakes = 0  # how many new sessions were opened (reuse is visible in tests)
        self._fallback: dict[str, MultiplexedSession] = {}  # relayed, after a punch replaced it
        self._punches: dict[str, trio.Event] = {}  # set when a peer's last punch ended
        self.punched = 0  # relayed sessions upgraded to direct ones
        self._served: dict[str, str] = {}  # peer -> path of the session `get` last returned

    async def get(
        self,
        peer_id: str,
        addresses: str | Sequence[str],
        relays: Sequence[RelayHint] = (),
    ) -> MultiplexedSession:
        """The session to *peer_id*, reused or dialled at *addresses* (its record's, in order),
        then through *relays* (its record's relay hints).

        Raises `SessionError` when no address finished the handshake within `DIAL_DEADLINE_S`
        (plus `RELAYED_DIAL_EXTRA_S` when there are relays).
        """
        if isinstance(addresses, str):
            addresses = (addresses,)
        lock = self._locks.setdefault(peer_id, trio.Lock())
        async with lock:
            session = self._sessions.get(peer_id)
            if session is not None and not session.closed:
                self._served[peer_id] = session.path
                return session
            fallback = self._fallback.pop(peer_id, None)
            if fallback is not None and not fallback.closed:  # the punched session broke
                self._sessions[peer_id] = fallback
                self._served[peer_id] = fallback.path
                return fallback
            relayed_dial: RelayedDial | None = None
            dial_s = 0.0
            if self._local is not None and peer_id == self._identity.peer_id:
                conn, node_side = local_pair(peer_id)
                self._nursery.start_soon(self._serve_local, node_side)
                session = MultiplexedSession(conn, LOCAL)
            else:
                started = trio.current_time()
                dialled, relayed_dial = await self._dial(peer_id, addresses, relays)
                dial_s = trio.current_time() - started
                relayed = getattr(dialled, "via_relay", None) is not None
                session = MultiplexedSession(dialled, RELAYED if relayed else DIRECT)
                self.handshakes += 1
            self._sessions[peer_id] = session
            self._served[peer_id] = session.path
            self._nursery.start_soon(session.run)
            if relayed_dial is not None and relayed_dial.attempt is not None:
                seen = relayed_dial.seen or RelaySeen("", "", "")
                seen = attrs.evolve(seen, listed_hosts=listed_hosts(addresses))
                self._punches[peer_id] = trio.Event()
                self._gate(peer_id, session, seen, dial_s)
                self._nursery.start_soon(
                    self._upgrade, peer_id, session, relayed_dial.attempt, seen
                )
            return session

    def _gate(
        self, peer_id: str, session: MultiplexedSession, seen: RelaySeen, dial_s: float
    ) -> None:
        """Make the first requests on a fresh relayed *session* wait for its punch: long when
        it is expected to work, briefly otherwise, never past the punch's end."""
        now = trio.current_time()
        odds = predict(seen, earlier=self._history.earlier(peer_id, seen, now))
        short = min(PUNCH_WAIT_DIALS * dial_s, PUNCH_WAIT_MAX_S)
        bound = wait_bound(odds, short, PUNCH_WAIT_LIKELY_S)
        if bound <= 0:
            return  # no wait: the first request goes on the relayed session

        def passed(waited: float, direct: MultiplexedSession | None) -> None:
            punched = direct is not None and not direct.closed
            self._waits[peer_id] = PunchWait(odds.likely, odds.reason, bound, waited, punched)
            if punched and self._served.get(peer_id) == session.path:
                self._served[peer_id] = HOLE_PUNCHED  # the request went on the punched one

        session.gate = PunchGate(self._punches[peer_id], now + bound, passed)

    async def _upgrade(
        self, peer_id: str, relayed: MultiplexedSession, attempt: PunchAttempt, seen: RelaySeen
    ) -> None:
        """A direct session the punch brings takes *relayed*'s place (p2p/reach/hole_punch.py)."""
        done = self._punches[peer_id]
        try:
            conn = await attempt.outcome()
            self._history.note(peer_id, seen, conn is not None, trio.current_time())
            if conn is None:
                return
            if self._sessions.get(peer_id) is not relayed or relayed.closed:
                await conn.aclose()  # dropped or replaced meanwhile: not ours to install
                return
            direct = MultiplexedSession(conn, HOLE_PUNCHED)
            self._sessions[peer_id] = direct
            if relayed.gate is not None:
                relayed.gate.replacement = direct  # its waiting first request goes here
            self._fallback[peer_id] = relayed
            self.punched += 1
            self._nursery.start_soon(direct.run)
        finally:
            done.set()

    def punch_finished(self, peer_id: str) -> trio.Event | None:
        """Set once the hole punch started by the last relayed dial to *peer_id* ended (either
        way); None when none was started."""
        return self._punches.get(peer_id)

    def punch_wait(self, peer_id: str) -> PunchWait | None:
        """How the first request on the last fresh relayed session to *peer_id* waited for its
        punch; None before one did (or when no punch was started, or no wait was set)."""
        return self._waits.get(peer_id)

    def served_path(self, peer_id: str) -> str | None:
        """The path of the session the last `get` for *peer_id* returned: how the requests
        sent on it went (a punch may have upgraded the peer's session since)."""
        return self._served.get(peer_id)

    def path_of(self, peer_id: str) -> str | None:
        """How the session new requests to *peer_id* get was reached; None without one."""
        session = self._sessions.get(peer_id)
        return session.path if session is not None and not session.closed else None

    async def _relayed(
        self, relay: RelayHint, peer_id: str, punches: dict[int, RelayedDial]
    ) -> Connection:
        dial = await open_relayed(
            relay,
            peer_id,
            self._identity,
            psk=self._psk,
            punch_in=self._nursery if self._hole_punch else None,
        )
        if dial.attempt is not None:
            punches[id(dial.conn)] = dial
        return dial.conn

    async def _dial(
        self, peer_id: str, addresses: Sequence[str], relays: Sequence[RelayHint]
    ) -> tuple[Connection, RelayedDial | None]:
        unique = list(dict.fromkeys(addresses))
        attempts: list[Callable[[], Awaitable[Connection]]] = [
            partial(connect, a, self._identity, peer_id, psk=self._psk) for a in unique
        ]
        punches: dict[int, RelayedDial] = {}  # with a punch, by id() of the relayed connection
        attempts += [partial(self._relayed, r, peer_id, punches) for r in dict.fromkeys(relays)]
        deadline = DIAL_DEADLINE_S + (RELAYED_DIAL_EXTRA_S if relays else 0.0)
        try:
            race = await staggered_race(attempts, ADDRESS_STAGGER_S, deadline, _close)
        except BaseException:  # cancelled: nobody will take a punch's session
            for lost in punches.values():
                if lost.attempt is not None:
                    lost.attempt.cancel()
            raise
        kept = punches.pop(id(race.value), None) if race.value is not None else None
        for lost in punches.values():  # their relayed sessions were discarded
            if lost.attempt is not None:
                lost.attempt.cancel()
        if race.value is not None:
            return race.value, kept
        unique += [f"relay {r.peer_id[:12]}" for r in dict.fromkeys(relays)]
        if not unique:
            raise SessionError(f"{peer_id[:12]} publishes no address")
        # the first direct address's failure and the last ones: a relay's refusal alone would
        # hide why the node's own address did not answer
        shown = sorted(race.failures)
        shown = shown[:1] + shown[1:][-2:]
        failed = "; ".join(str(race.failures[i]) for i in shown)
        if race.timed_out:
            raise SessionError(
                f"no handshake with {peer_id[:12]} at any of {len(unique)} address(es) within "
                f"{deadline:g} s" + (f" ({failed})" if failed else "")
            )
        raise SessionError(failed)

    async def _serve_local(self, conn: Connection) -> None:
        assert self._local is not None
        try:
            await self._local(conn)
        finally:
            await conn.aclose()

    def drop(self, peer_id: str) -> None:
        """Forget a session that misbehaved, so the next request dials again."""
        self._sessions.pop(peer_id, None)
        self._fallback.pop(peer_id, None)
