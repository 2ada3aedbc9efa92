"""Which chunk of a file to ask which peer next, sans-IO: the bookkeeping of a pull.

The fetcher (p2p/share/fetcher.py) owns the sessions, the disk and the clock; this object only
decides. Each peer has an in-flight depth (several `FetchChunk`s outstanding, so a round trip
never idles its link); `next_chunk(peer)` hands out the lowest chunk nobody holds yet, and once
none is left (the end game), to a peer with half its depth idle, a chunk another peer still
holds, so one slow or stalled peer cannot hold up the last few percent. The first verified copy
wins; the other is dropped on arrival.

What a peer can do wrong, and what it costs it:
- a chunk that fails its hash (or has the wrong length): a strike, and that chunk is never
  asked of it again; at `MAX_STRIKES` the peer is dropped;
- an error answer or a deadline: the chunk goes back to the pool; `MAX_FAILURES` in a row drop
  the peer (a busy peer that recovers keeps its place);
- a broken session: `drop_peer`, and its in-flight chunks go back to the pool at once.

The pull fails when chunks remain and no usable peer does (`stuck`). `verified` is the state a
resume restores (`to_state`/`from_state`): the fetcher re-hashes those chunks on disk first, so
a state file that lies (a crash between write and save, a disk error) costs a refetch, never a
bad file.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence

import attrs

from p2p.protocol.share_wire import HASH_LEN, chunk_count, chunk_length

MAX_STRIKES = 2
MAX_FAILURES = 16  # retryable errors (busy, rate_limited) or deadlines in a row
DEFAULT_DEPTH = 8  # chunks in flight per peer: 4 MiB, several round trips of a fast link


class PlanError(ValueError):
    """A state or manifest that does not fit the file."""


@attrs.define
class PeerState:
    depth: int
    in_flight: set[int] = attrs.field(factory=set)
    strikes: int = 0
    failures: int = 0  # consecutive
    chunks: int = 0  # verified chunks it gave
    dropped: str = ""  # why it was dropped; "" while usable


@attrs.frozen
class Verdict:
    """What `received` decided: `accepted` (count it, it is already on disk), or why not."""

    accepted: bool
    reason: str = ""
    dropped: bool = False  # the peer was dropped by this answer


class FetchPlan:
    """The chunks of one file of *size* bytes whose chunk hashes are *hashes*."""

    def __init__(self, size: int, hashes: Sequence[bytes], verified: Iterable[int] = ()) -> None:
        total = chunk_count(size)
        if len(hashes) != total or any(len(h) != HASH_LEN for h in hashes):
            raise PlanError(f"a file of {size} bytes has {total} chunk hashes, not {len(hashes)}")
        self.size = size
        self.hashes = tuple(hashes)
        self.total = total
        self.verified: set[int] = {i for i in verified if 0 <= i < total}
        self.verified_bytes = sum(chunk_length(size, i) for i in self.verified)
        self._missing = sorted(set(range(total)) - self.verified, reverse=True)  # a stack
        self._holders: dict[int, set[str]] = {}  # chunk -> peers it is in flight at
        self._refused: dict[int, set[str]] = {}  # chunk -> peers that sent it bad
        self.peers: dict[str, PeerState] = {}
        self.strikes_total = 0

    # --- peers ------------------------------------------------------------------------------
    def add_peer(self, peer: str, depth: int = DEFAULT_DEPTH) -> None:
        if peer not in self.peers:
            self.peers[peer] = PeerState(max(1, depth))

    def usable(self, peer: str) -> bool:
        state = self.peers.get(peer)
        return state is not None and not state.dropped

    def usable_peers(self) -> list[str]:
        return [p for p, s in self.peers.items() if not s.dropped]

    def drop_peer(self, peer: str, reason: str) -> None:
        """*peer* is out (its session broke, it lied twice): what it held goes back."""
        state = self.peers.get(peer)
        if state is None or state.dropped:
            return
        state.dropped = reason or "dropped"
        for index in list(state.in_flight):
            self._release(peer, index)

    # --- chunks -----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return len(self.verified) == self.total

    def stuck(self) -> bool:
        """Chunks remain that no usable peer may still be asked for (or no peer is left)."""
        if self.done:
            return False
        usable = set(self.usable_peers())
        if not usable:
            return True
        pending = set(range(self.total)) - self.verified
        return any(usable <= self._refused.get(i, set()) for i in pending)

    def expected(self, index: int) -> tuple[bytes, int]:
        """The hash and length chunk *index* must have."""
        return self.hashes[index], chunk_length(self.size, index)

    def next_chunk(self, peer: str) -> int | None:
        """The chunk *peer* should be asked for now, marked in flight there; None when it is at
        its depth, dropped, or there is nothing it could usefully fetch."""
        state = self.peers.get(peer)
        if state is None or state.dropped or len(state.in_flight) >= state.depth:
            return None
        skipped = []
        chosen = None
        while self._missing:
            index = self._missing.pop()
            if index in self.verified or index in self._holders:
                continue  # verified meanwhile, or handed out already (it was released twice)
            if peer in self._refused.get(index, ()):
                skipped.append(index)  # someone else must fetch it
                continue
            chosen = index
            break
        self._missing.extend(reversed(skipped))
        if chosen is None and len(state.in_flight) <= state.depth // 2:
            chosen = self._end_game(peer)  # only a peer running dry: few copies are wasted
        if chosen is not None:
            self._holders.setdefault(chosen, set()).add(peer)
            state.in_flight.add(chosen)
        return chosen

    def _end_game(self, peer: str) -> int | None:
        """A chunk in flight only at another peer, that *peer* may fetch too: the one held the
        longest (the lowest index, as chunks are handed out in order)."""
        for index in sorted(self._holders):
            holders = self._holders[index]
            if (
                len(holders) == 1
                and peer not in holders
                and peer not in self._refused.get(index, ())
            ):
                return index
        return None

    def received(self, peer: str, index: int, ok: bool) -> Verdict:
        """*peer* answered chunk *index*: *ok* when its data had the manifest's hash and length
        (and is then on disk). A bad chunk is a strike; an answer not asked for is ignored."""
        state = self.peers.get(peer)
        if state is None or index not in state.in_flight:
            return Verdict(False, "not asked for")
        if not ok:
            self._refused.setdefault(index, set()).add(peer)
            self._release(peer, index)
            state.strikes += 1
            self.strikes_total += 1
            if state.strikes >= MAX_STRIKES and not state.dropped:
                self.drop_peer(peer, f"{state.strikes} chunks failed their hash")
                return Verdict(False, "hash mismatch", dropped=True)
            return Verdict(False, "hash mismatch")
        state.failures = 0
        self._release(peer, index)
        if index in self.verified:
            return Verdict(False, "already verified")  # the end game's other copy
        self.verified.add(index)
        self.verified_bytes += chunk_length(self.size, index)
        state.chunks += 1
        for other in self._holders.pop(index, set()):
            self.peers[other].in_flight.discard(index)  # its copy will be "not asked for"
        return Verdict(True)

    def is_wanted(self, index: int) -> bool:
        """Whether chunk *index* still needs a copy (the end game's second copy may not)."""
        return index not in self.verified

    def failed(self, peer: str, index: int, reason: str) -> bool:
        """*peer* gave no chunk *index* (an error answer, a deadline); True when that dropped
        it."""
        state = self.peers.get(peer)
        if state is None:
            return False
        if index in state.in_flight:
            self._release(peer, index)
        state.failures += 1
        if state.failures >= MAX_FAILURES and not state.dropped:
            self.drop_peer(peer, f"{state.failures} failures in a row, the last: {reason}")
            return True
        return False

    def _release(self, peer: str, index: int) -> None:
        state = self.peers[peer]
        state.in_flight.discard(index)
        holders = self._holders.get(index)
        if holders is not None:
            holders.discard(peer)
            if not holders:
                del self._holders[index]
        if index not in self.verified and index not in self._holders:
            self._missing.append(index)  # back on top: asked next
            self._missing.sort(reverse=True)

    # --- resume -----------------------------------------------------------------------------
    def to_state(self) -> str:
        """The verified chunks as a bitmap (base64), for the state file."""
        bits = bytearray(-(-self.total // 8))
        for i in self.verified:
            bits[i // 8] |= 1 << (i % 8)
        return base64.b64encode(bytes(bits)).decode("ascii")

    @staticmethod
    def from_state(text: str, total: int) -> set[int]:
        """The chunk indexes a state bitmap names (bits past *total* are ignored)."""
        try:
            bits = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise PlanError(f"unreadable chunk bitmap: {exc}") from None
        if len(bits) != -(-total // 8):
            raise PlanError("the chunk bitmap does not fit the file")
        return {i for i in range(total) if bits[i // 8] >> (i % 8) & 1}
