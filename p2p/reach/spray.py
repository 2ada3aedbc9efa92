"""The port spray in trio: a hole punch between a symmetric NAT and a port-restricted one, by the
plan of `port_spray.py` (its docstring says why and how; `hole_punch.py` calls `spray_punch`).

The opener connects N times to the peer's observed address from fresh ports (its NAT maps each
to a random external port); the sprayer, after the plan's lead, connects from the port of its
relay connection (SO_REUSEADDR + SO_REUSEPORT, as the ordinary punch) to M random ports of the
peer's host in waves, and listens on that port for the peer's host meanwhile; it also sends one
SYN to the peer's observed address at once (an address-filtering NAT then lets the opener in).
Every connection that comes up is handed to `handshake` (the opener's first only, the sprayer's
up to `MAX_HANDSHAKES` at once); the first handshake that completes wins, everything else is
closed, and so is every socket at the end.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import socket
from collections.abc import Awaitable, Callable

import trio

from p2p.host_port import parse_host_port
from p2p.reach.port_spray import Role, SprayPlan
from p2p.session.observers import note_dial
from p2p.session.secure import HANDSHAKE_TIMEOUT_S, SecureConnection

log = logging.getLogger(__name__)

# Handshakes at once. The opener keeps only the first connection that came up (two hits in one
# wave happen: N * wave / range ~ 1 hit a wave at the defaults) and closes the others at once,
# so the sprayer's handshakes on those end at their EOF and the two sides agree on one.
MAX_HANDSHAKES = 16
Handshake = Callable[[trio.SocketStream], Awaitable[SecureConnection | None]]


def free_descriptors() -> int:
    """File descriptors this process may still open (the soft limit less those open now)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = soft // 2
    return max(0, soft - used)


def bind_reusable(sock: socket.socket, host: str | None, port: int) -> None:
    """Non-blocking, SO_REUSEADDR and SO_REUSEPORT (a punch binds the port of a live relay
    connection), bound to *host* (None: the wildcard) and *port*."""
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    wildcard = "::" if sock.family == socket.AF_INET6 else "0.0.0.0"
    sock.bind((host or wildcard, port))


class _Race:
    """Connections that came up, their handshakes, and the first one that completed."""

    def __init__(self, nursery: trio.Nursery, handshake: Handshake, keep_first: bool) -> None:
        self._nursery = nursery
        self._handshake = handshake
        self._keep_first = keep_first
        self.up = trio.Event()  # a TCP connection came up: no new waves
        self.running = 0
        self.ups = 0
        self.won: SecureConnection | None = None

    def offer(self, sock: trio.socket.SocketType) -> None:
        """A connected socket; owned here from now on."""
        self.ups += 1
        self.up.set()
        extra = self._keep_first and self.ups > 1
        if extra or self.won is not None or self.running >= MAX_HANDSHAKES:
            sock.close()
            return
        self.running += 1
        self._nursery.start_soon(self._run, trio.SocketStream(sock))

    async def _run(self, stream: trio.SocketStream) -> None:
        conn: SecureConnection | None = None
        try:
            conn = await self._handshake(stream)
        finally:
            self.running -= 1
            if conn is None:
                await trio.aclose_forcefully(stream)
        if conn is None:
            return
        if self.won is not None:
            with trio.CancelScope(shield=True):
                await conn.aclose()
            return
        self.won = conn
        self._nursery.cancel_scope.cancel()


async def _connected(sock: socket.socket, race: _Race, handed: set[socket.socket]) -> None:
    """Wait for *sock*'s connect; a socket that came up goes to the race."""
    await trio.lowlevel.wait_writable(sock)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
        handed.add(sock)
        race.offer(trio.socket.from_stdlib_socket(sock))


def _connect(family: int, local: tuple[str | None, int], target: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if local[1]:
            bind_reusable(sock, local[0], local[1])
        else:
            sock.setblocking(False)
            if local[0]:
                sock.bind((local[0], 0))
        sock.connect_ex(target)  # EINPROGRESS; a failure shows as SO_ERROR
    except OSError:
        sock.close()
        raise
    return sock


async def _hold(socks: list[socket.socket], race: _Race, wait_s: float, until_up: bool) -> None:
    """Watch *socks* for *wait_s* (or until a connection came up), then close those not handed
    to the race."""
    handed: set[socket.socket] = set()
    try:
        with trio.move_on_after(wait_s):
            async with trio.open_nursery() as watch:
                for sock in socks:
                    watch.start_soon(_connected, sock, race, handed)
                if until_up:
                    await race.up.wait()
                    watch.cancel_scope.cancel()
    finally:
        for sock in socks:
            if sock not in handed:
                sock.close()


async def _open(
    family: int, local_host: str, peer: tuple[str, int], count: int, plan: SprayPlan, race: _Race
) -> None:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(_connect(family, (local_host or None, 0), peer))
    except OSError as exc:  # out of descriptors or ports: the ones opened still count
        log.debug("spray: %d of %d connections opened: %s", len(socks), count, exc)
    await _hold(socks, race, plan.window_s, until_up=True)


async def _spray(
    family: int,
    local: tuple[str, int],
    peer: tuple[str, int],
    per_wave: int,
    plan: SprayPlan,
    rng: random.Random,
    race: _Race,
) -> None:
    peer_host = peer[0]
    async with trio.open_nursery() as first:
        # One SYN to the peer's observed address at once, as the ordinary punch sends: behind a
        # NAT that filters by host only (address-restricted) it lets the opener's SYNs in to
        # the listener from the start, instead of after the lead and their retransmission 1 s
        # later. Behind a port-restricted one it opens only that port, which nothing uses.
        try:
            first.start_soon(_hold, [_connect(family, local, peer)], race, plan.window_s, True)
        except OSError as exc:
            log.debug("spray: no first SYN to %s: %s", peer, exc)
        await _waves(family, local, peer_host, per_wave, plan, rng, race)


async def _waves(
    family: int,
    local: tuple[str, int],
    peer_host: str,
    per_wave: int,
    plan: SprayPlan,
    rng: random.Random,
    race: _Race,
) -> None:
    with trio.move_on_after(plan.lead_s):
        await race.up.wait()
    waves = plan.waves_of(plan.ports(rng), per_wave)
    for i, wave in enumerate(waves):
        if race.up.is_set():
            return
        socks = []
        try:
            for target in SprayPlan.targets(peer_host, wave):
                socks.append(_connect(family, local, target))
        except OSError as exc:
            log.debug("spray: wave %d cut at %d sockets: %s", i, len(socks), exc)
        last = i == len(waves) - 1
        await _hold(socks, race, plan.wave_s + (plan.settle_s if last else 0.0), until_up=True)


async def _listen(
    family: int, local: tuple[str, int], peer_host: str, window_s: float, race: _Race
) -> None:
    """The sprayer's listener: the peer's host from any port (where its own NAT lets the
    opener's SYNs in); anyone else is closed unread."""
    raw = socket.socket(family, socket.SOCK_STREAM)
    try:
        bind_reusable(raw, local[0] or None, local[1])
        raw.listen(8)
    except OSError as exc:
        raw.close()
        log.debug("spray: no listener on port %d: %s", local[1], exc)
        return
    listener = trio.socket.from_stdlib_socket(raw)
    try:
        with trio.move_on_after(window_s):
            while True:
                sock, addr = await listener.accept()
                if str(addr[0]) == peer_host:
                    race.offer(sock)
                else:
                    sock.close()
    finally:
        listener.close()


async def spray_punch(
    role: Role,
    local_host: str,
    local_port: int,
    remote: str,
    handshake: Handshake,
    plan: SprayPlan | None = None,
    *,
    rng: random.Random | None = None,
    room: int | None = None,
) -> SecureConnection | None:
    """One side's spray (`role`) between its relay connection's local address and port and the
    peer's observed address *remote*: the session of the first connection whose `handshake`
    completed, or None. *room*: descriptors free (default: measured)."""
    plan = plan or SprayPlan()
    try:
        host, port = parse_host_port(remote)
    except ValueError as exc:
        log.debug("no spray to %s: %s", remote, exc)
        return None
    count = plan.sockets_for(role, free_descriptors() if room is None else room)
    if count == 0:
        log.debug("no spray to %s: too few file descriptors left", remote)
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    note_dial(host)  # the SYNs open an address-filtering NAT too (p2p/reach/strangers.py)
    started = trio.current_time()
    race: _Race | None = None
    try:
        with trio.move_on_after(plan.window_s + HANDSHAKE_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                race = _Race(nursery, handshake, keep_first=role is Role.OPENER)
                if role is Role.OPENER:
                    nursery.start_soon(_open, family, local_host, (host, port), count, plan, race)
                else:
                    local = (local_host, local_port)
                    nursery.start_soon(_listen, family, local, host, plan.window_s, race)
                    picker = rng or random.SystemRandom()
                    target = (host, port)
                    nursery.start_soon(_spray, family, local, target, count, plan, picker, race)
    except BaseException:  # cancelled from outside: a session that won is nobody's now
        if race is not None and race.won is not None:
            with trio.CancelScope(shield=True):
                await race.won.aclose()
        raise
    assert race is not None
    log.debug(
        "spray (%s) to %s: %s after %.2f s, %d connection(s) up",
        role.value,
        remote,
        "a session" if race.won else "nothing",
        trio.current_time() - started,
        race.ups,
    )
    return race.won
