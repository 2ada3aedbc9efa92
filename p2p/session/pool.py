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
from p2p.protocol import wire
from p2p.protocol.requests_client import RequestClient
from p2p.session.local import Connection, local_pair
from p2p.session.secure import SessionError, connect

IDLE_CLOSE_S = 60.0
# RFC 8305 section 5's recommended Connection Attempt Delay: long enough for one handshake on a
# fast path to win before a second is started, short enough that a dead address costs little.
ADDRESS_STAGGER_S = 0.25
# Connect + handshake to one node, all its addresses together. A Noise XX handshake is one and a
# half round trips (< 1 s even between continents over a lossy link, with one SYN retransmit
# at 1 s); 3 s leaves room for that and bounds what a node that never answers can cost.
DIAL_DEADLINE_S = 3.0

T = TypeVar("T")

Inbox = trio.MemoryReceiveChannel[wire.Message | SessionError]


class MultiplexedSession:
    """The trio loop around `RequestClient`: one reader task routes each answer to the inbox of
    its request; the request rules (ids, finals, cancels, what to ignore) are the machine's."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.closed = False
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
    async def request(self, msg: wire.Generate) -> AsyncIterator[tuple[int, Inbox]]:
        """Send *msg* under a fresh id; yield (id, inbox). Leaving early sends `cancel`."""
        if self.closed:
            raise SessionError("session closed")
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
    ) -> None:
        """`local`: the node's own connection handler, when this pool belongs to a node (its
        `--api` gateway); requests the ranking sends to the node itself then stay in-process."""
        self._identity = identity
        self._local = local
        self._psk = psk
        self._nursery = nursery
        self._sessions: dict[str, MultiplexedSession] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.handshakes = 0  # how many new sessions were opened (reuse is visible in tests)

    async def get(self, peer_id: str, addresses: str | Sequence[str]) -> MultiplexedSession:
        """The session to *peer_id*, reused or dialled at *addresses* (its record's, in order).

        Raises `SessionError` when no address finished the handshake within `DIAL_DEADLINE_S`.
        """
        if isinstance(addresses, str):
            addresses = (addresses,)
        lock = self._locks.setdefault(peer_id, trio.Lock())
        async with lock:
            session = self._sessions.get(peer_id)
            if session is not None and not session.closed:
                return session
            if self._local is not None and peer_id == self._identity.peer_id:
                conn, node_side = local_pair(peer_id)
                self._nursery.start_soon(self._serve_local, node_side)
                session = MultiplexedSession(conn)
            else:
                session = MultiplexedSession(await self._dial(peer_id, addresses))
                self.handshakes += 1
            self._sessions[peer_id] = session
            self._nursery.start_soon(session.run)
            return session

    async def _dial(self, peer_id: str, addresses: Sequence[str]) -> Connection:
        unique = list(dict.fromkeys(addresses))
        attempts = [partial(connect, a, self._identity, peer_id, psk=self._psk) for a in unique]
        race = await staggered_race(attempts, ADDRESS_STAGGER_S, DIAL_DEADLINE_S, _close)
        if race.value is not None:
            return race.value
        if not unique:
            raise SessionError(f"{peer_id[:12]} publishes no address")
        failed = "; ".join(str(race.failures[i]) for i in sorted(race.failures)[-2:])
        if race.timed_out:
            raise SessionError(
                f"no handshake with {peer_id[:12]} at any of {len(unique)} address(es) within "
                f"{DIAL_DEADLINE_S:g} s" + (f" ({failed})" if failed else "")
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
