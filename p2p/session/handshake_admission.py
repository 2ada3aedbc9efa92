"""Who may start a Noise handshake on a node's session port (`HandshakeAdmission`), sans-IO.

Split from `secure.py` (which re-exports every name here); the limits and the reasons for them
are described in that module's docstring. The caller passes the time and a callback that aborts
a connection.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import attrs

from p2p.bounded_lru import BoundedLRU
from p2p.protocol.session_table import MAX_SESSIONS
from p2p.token_bucket import KeyedBuckets

# A handshake is three small messages, one and a half round trips; anything slower is a broken
# or hostile peer. Generous for a slow intercontinental link, short enough that a connection
# which never completes gives its slot back soon.
HANDSHAKE_TIMEOUT_S = 10.0

# --- admission limits (see secure.py's docstring). Every number is per node. ---
# Unfinished handshakes in total. Each costs a task, a socket and < 6 KiB of buffers; 256 is far
# above what honest traffic needs (a client's handshake takes one round trip, a node serves a
# handful of generations at a time) and well below the usual 1024-descriptor soft limit.
MAX_HALF_OPEN_HANDSHAKES = 256
# Unfinished handshakes from one source: several clients behind one NAT, or a gateway opening a
# few sessions at once, fit; one host holding the whole table does not.
MAX_HALF_OPEN_PER_SOURCE = 8
# Handshakes started per source per second (token bucket: sustained rate, burst). A client keeps
# its sessions in a pool and reuses them; a gateway in front of many users may burst. Each
# admitted handshake costs the responder ~0.3 ms of cryptography (three X25519, one Ed25519 sign
# and one verify) and ~1 ms of process CPU all told (accept, task, socket; tools/bench_crypto.py),
# so 20/s from one source is ~2 % of a core. A refused connection costs no cryptography at all.
HANDSHAKES_PER_SOURCE_PER_S = 20.0
HANDSHAKE_BURST_PER_SOURCE = 40
# Sources whose token buckets are remembered; beyond it, idle ones are forgotten first (a
# forgotten source just starts again with a full bucket). Bounds the table to ~1 MiB.
TRACKED_SOURCES = 4096
# What the node's descriptors stay under: established sessions (SessionTable's cap), unfinished
# handshakes, and a reserve of 64 for the listeners (IPv4 and IPv6), the DHT's UDP socket, model
# files, trio's wakeup pair, logs and the odd outbound session of a node's own gateway. Under the
# usual soft limit of 1,024, so the accept loop never meets EMFILE.
DESCRIPTOR_RESERVE = 64
NODE_DESCRIPTOR_BOUND = MAX_SESSIONS + MAX_HALF_OPEN_HANDSHAKES + DESCRIPTOR_RESERVE


@attrs.frozen
class SessionLimits:
    """The admission limits of one server; the defaults are the module constants above."""

    max_half_open: int = MAX_HALF_OPEN_HANDSHAKES
    max_half_open_per_source: int = MAX_HALF_OPEN_PER_SOURCE
    handshakes_per_source_per_s: float = HANDSHAKES_PER_SOURCE_PER_S
    handshake_burst_per_source: int = HANDSHAKE_BURST_PER_SOURCE
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    tracked_sources: int = TRACKED_SOURCES


class HandshakeAdmission:
    """Which new connections may start a handshake; sans-IO (the caller passes the time and a
    callback that aborts a connection).

    ``admit`` returns a ticket, or None for "reset it unread". Over the total cap it admits the
    newcomer and calls the abort callback of the oldest unfinished handshake. ``release`` must
    be called with the ticket when the handshake ends, however it ends.
    """

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits = limits or SessionLimits()
        self._buckets: KeyedBuckets[str] = KeyedBuckets(
            limits.handshakes_per_source_per_s,
            float(limits.handshake_burst_per_source),
            limits.tracked_sources,
        )
        # ticket -> (source, abort); over the total cap the oldest is evicted (and aborted).
        self._half_open: BoundedLRU[int, tuple[str, Callable[[], None]]] = BoundedLRU(
            limits.max_half_open, on_evict=self._evict
        )
        self._per_source: collections.Counter[str] = collections.Counter()
        self._next_ticket = 0
        # Counters for logs, metrics and tests.
        self.admitted = 0
        self.refused_rate = 0
        self.refused_busy = 0
        self.evicted = 0

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def admit(self, source: str, now: float, abort: Callable[[], None]) -> int | None:
        if self._per_source[source] >= self.limits.max_half_open_per_source:
            self.refused_busy += 1
            return None
        if not self._buckets.take(source, now):
            self.refused_rate += 1
            return None
        ticket = self._next_ticket
        self._next_ticket += 1
        self._per_source[source] += 1
        self.admitted += 1
        self._half_open.set(ticket, (source, abort))
        return ticket

    def _evict(self, _ticket: int, entry: tuple[str, Callable[[], None]]) -> None:
        source, abort = entry
        self._drop_source(source)
        self.evicted += 1
        abort()

    def _drop_source(self, source: str) -> None:
        self._per_source[source] -= 1
        if self._per_source[source] <= 0:
            del self._per_source[source]

    def release(self, ticket: int) -> None:
        entry = self._half_open.pop(ticket)
        if entry is not None:  # None: it was evicted, and its source already counted down
            self._drop_source(entry[0])
