"""The relay's state machine, sans-IO: reservations, pending and live circuits, their bounds and
deadlines, and the byte budget of each relayed peer. The caller passes the time; the trio code in
`relay_service.py` moves the bytes.

A reservation is held by a volunteer V over its authenticated CONTROL session and lapses
`reservation_ttl_s` after its last renewal. A circuit is *pending* from a client's CONNECT until
V presents its token (ACCEPT) or `pending_s` passes, then *live* until either side closes or it
idles out. Every count is bounded: reservations in total, circuits in total and per V; a request
past a bound is refused with `RELAY_FULL`, a CONNECT to a peer without a reservation (or an
ACCEPT with a token nobody issued) with `NO_RESERVATION`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from p2p.errors import ErrorCode, GpunetError
from p2p.reach.relay_protocol import TOKEN_BYTES
from p2p.token_bucket import TokenBucket

# Defaults; `gpunet node` exposes the first three as settings (p2p/setting_table.py).
# 32 volunteers behind NAT per relay: each costs a control session (a socket, a task, ~10 KiB).
MAX_RESERVATIONS = 32
# 48 spliced circuits cost 96 sockets: with the reservations' control sessions, what is left of
# the usual 1024 descriptors beside the session port's own bound (relay_service.py).
MAX_CIRCUITS = 48
# A volunteer serves a few sessions at once (a gateway reuses one); more is a flood.
MAX_CIRCUITS_PER_PEER = 8
# 4 MiB/s per relayed peer: ~1000x a token stream's needs, a relay's uplink shared fairly.
BYTES_PER_S_PER_PEER = 4 * 1024 * 1024
# Renewed every third of it; a volunteer gone silent frees its place within this.
RESERVATION_TTL_S = 120.0
# V answers a circuit in one round trip to the relay; a client waits no longer than this.
PENDING_S = 5.0
# A spliced circuit carrying nothing this long is closed (sessions idle out sooner themselves).
CIRCUIT_IDLE_S = 300.0


class RelayRefused(GpunetError):
    """The relay refuses a reservation or a circuit (`code`: RELAY_FULL or NO_RESERVATION)."""


@attrs.frozen
class RelayLimits:
    enabled: bool = True
    max_reservations: int = MAX_RESERVATIONS
    max_circuits: int = MAX_CIRCUITS
    max_circuits_per_peer: int = MAX_CIRCUITS_PER_PEER
    bytes_per_s_per_peer: float = BYTES_PER_S_PER_PEER
    reservation_ttl_s: float = RESERVATION_TTL_S
    pending_s: float = PENDING_S
    circuit_idle_s: float = CIRCUIT_IDLE_S


@attrs.define
class _Pending:
    target: str
    deadline: float


class ByteBudget:
    """Bytes per second for one relayed peer, both directions of all its circuits together.

    `spend` always succeeds and returns how long to wait before forwarding the chunk: the
    bucket goes into debt by that chunk, so a reader never needs to split a chunk it holds. The
    burst is one second's worth, at most 256 KiB (a relayed peer cannot save up more)."""

    def __init__(self, rate: float) -> None:
        self._bucket = TokenBucket(rate, min(rate, 256 * 1024.0))

    def spend(self, n: int, now: float) -> float:
        bucket = self._bucket
        bucket.refill(now)
        bucket.tokens -= n
        return 0.0 if bucket.tokens >= 0 else -bucket.tokens / bucket.rate


class RelayTable:
    def __init__(
        self,
        limits: RelayLimits | None = None,
        *,
        token_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.limits = limits or RelayLimits()
        self._token_source = token_source
        # Set while this node is itself reached only through relays: it takes no reservations
        # (held ones lapse at their next renewal).
        self.paused = False
        self._reservations: dict[str, float] = {}  # peer id -> expiry
        self._pending: dict[bytes, _Pending] = {}
        self._live: dict[bytes, str] = {}  # token -> target
        self._per_peer: dict[str, int] = {}
        self._budgets: dict[str, ByteBudget] = {}
        # counters for logs and tests
        self.refused_full = 0
        self.refused_unreserved = 0
        self.circuits_opened = 0

    # --- reservations ---

    def reserve(self, peer_id: str, now: float) -> float:
        """Hold or renew *peer_id*'s reservation; returns its ttl. Raises `RelayRefused`."""
        self.expire(now)
        if not self.limits.enabled or self.paused:
            self.refused_full += 1
            why = "does not relay" if not self.limits.enabled else "is not reachable itself"
            raise RelayRefused(f"this node {why}", ErrorCode.RELAY_FULL)
        if peer_id not in self._reservations and (
            len(self._reservations) >= self.limits.max_reservations
        ):
            self.refused_full += 1
            raise RelayRefused(
                f"relay full: {self.limits.max_reservations} reservations held",
                ErrorCode.RELAY_FULL,
            )
        self._reservations[peer_id] = now + self.limits.reservation_ttl_s
        return self.limits.reservation_ttl_s

    def release(self, peer_id: str) -> None:
        """V's control session ended: its reservation ends with it."""
        self._reservations.pop(peer_id, None)

    def reserved(self, peer_id: str, now: float) -> bool:
        expiry = self._reservations.get(peer_id)
        return expiry is not None and expiry > now

    @property
    def reservations(self) -> int:
        return len(self._reservations)

    # --- circuits ---

    def open_circuit(self, target: str, now: float) -> bytes:
        """A client's CONNECT to *target*: the token to send V. Raises `RelayRefused`."""
        self.expire(now)
        if not self.reserved(target, now):
            self.refused_unreserved += 1
            raise RelayRefused(f"no reservation here for {target[:12]}", ErrorCode.NO_RESERVATION)
        if len(self._pending) + len(self._live) >= self.limits.max_circuits:
            self.refused_full += 1
            raise RelayRefused(
                f"relay full: {self.limits.max_circuits} circuits", ErrorCode.RELAY_FULL
            )
        if self._per_peer.get(target, 0) >= self.limits.max_circuits_per_peer:
            self.refused_full += 1
            raise RelayRefused(
                f"relay full for {target[:12]}: {self.limits.max_circuits_per_peer} circuits",
                ErrorCode.RELAY_FULL,
            )
        token = self._token_source(TOKEN_BYTES)
        while token in self._pending or token in self._live:  # 2^-128; a fixed test source
            token = self._token_source(TOKEN_BYTES)
        self._pending[token] = _Pending(target, now + self.limits.pending_s)
        self._per_peer[target] = self._per_peer.get(target, 0) + 1
        return token

    def accept(self, token: bytes, peer_id: str | None, now: float) -> str:
        """V's ACCEPT with *token*: the circuit goes live; returns its target. *peer_id*, when
        the caller knows who presents it, must be the target. Raises `RelayRefused`."""
        self.expire(now)
        pending = self._pending.get(token)
        if pending is None or (peer_id is not None and peer_id != pending.target):
            raise RelayRefused("unknown or expired circuit token", ErrorCode.NO_RESERVATION)
        del self._pending[token]
        self._live[token] = pending.target
        self.circuits_opened += 1
        return pending.target

    def close_circuit(self, token: bytes) -> None:
        """The circuit ended (either side, pending or live): its place is free again."""
        target = self._live.pop(token, None)
        if target is None:
            pending = self._pending.pop(token, None)
            target = pending.target if pending is not None else None
        if target is not None:
            left = self._per_peer.get(target, 0) - 1
            if left > 0:
                self._per_peer[target] = left
            else:
                self._per_peer.pop(target, None)
                if target not in self._reservations:
                    self._budgets.pop(target, None)

    @property
    def circuits(self) -> int:
        return len(self._pending) + len(self._live)

    def budget(self, target: str) -> ByteBudget:
        """The byte budget all circuits to *target* share."""
        budget = self._budgets.get(target)
        if budget is None:
            budget = self._budgets[target] = ByteBudget(self.limits.bytes_per_s_per_peer)
        return budget

    def expire(self, now: float) -> None:
        for peer, expiry in list(self._reservations.items()):
            if expiry <= now:
                del self._reservations[peer]
        for token, pending in list(self._pending.items()):
            if pending.deadline <= now:
                self.close_circuit(token)
