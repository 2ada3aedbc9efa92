"""The DHT's local storage: signed records, one slot per signer under each key, bounded.

Sans-IO: `now` is passed in, so the rules are tested with plain calls. The kademlia package's own
storage keeps one value per key and lets anyone overwrite it; here a store is accepted only when
the record verifies, is bound to the key it is stored under, and is newer than what that signer
stored before.

Bounds, and what gives way when one is reached: always the record that would expire soonest.
A flood of fresh records can push honest ones out, but only as far as the bound, and owners
republish every TTL/3, so an evicted honest record comes back at the next round:

- per key: `MAX_SIGNERS_PER_KEY` signers (a popular model's providers);
- per signer: `MAX_KEYS_PER_SIGNER` keys — a record is bound to at most 2 + 2·32 keys, but a
  signer cycling through model lists across sequence numbers could otherwise fill many keys; a
  newer record also drops the signer's older slots under keys it is no longer bound to;
- in total: `MAX_KEYS` keys and `MAX_TOTAL_RECORDS` records.
"""

from __future__ import annotations

from typing import NamedTuple

import attrs

from p2p.dht.records import MAX_MODELS, RecordError, SignedRecord, dht_digest, open_record
from p2p.errors import RecordRefusal

# A popular model may have many providers; a lookup answer must still fit one UDP datagram
# (about 64 KiB), and records are up to 7 KiB, so answers are trimmed by `ANSWER_LIMIT_BYTES`.
MAX_SIGNERS_PER_KEY = 64
MAX_KEYS_PER_SIGNER = 2 + 2 * MAX_MODELS
MAX_KEYS = 4096
MAX_TOTAL_RECORDS = 16384
ANSWER_LIMIT_BYTES = 48 * 1024


class Offer(NamedTuple):
    """What `RecordStore.offer` did with a record: `refusal` is None when it was accepted."""

    accepted: bool
    reason: str
    refusal: RecordRefusal | None = None


@attrs.define
class RecordStore:
    """dkey -> {peer_id: SignedRecord}, with the reverse index peer_id -> {dkey}."""

    max_signers_per_key: int = MAX_SIGNERS_PER_KEY
    max_keys_per_signer: int = MAX_KEYS_PER_SIGNER
    max_keys: int = MAX_KEYS
    max_total: int = MAX_TOTAL_RECORDS
    slots: dict[bytes, dict[str, SignedRecord]] = attrs.field(factory=dict)
    _by_signer: dict[str, set[bytes]] = attrs.field(factory=dict)
    _total: int = 0

    def offer(self, dkey: bytes, blob: object, *, now: float) -> Offer:
        """Validate and merge; whether it was accepted, why, and the rule a refusal broke."""
        try:
            signed = open_record(blob, now=now)
        except RecordError as exc:
            return Offer(False, str(exc), exc.refusal)
        bound = {dht_digest(k) for k in signed.record.dht_keys()}
        if dkey not in bound:
            return Offer(False, "record is not bound to this key", RecordRefusal.UNBOUND_KEY)
        self.cull(now=now)
        peer = signed.record.peer_id
        old = self.slots.get(dkey, {}).get(peer)
        if old is not None and old.record.seq >= signed.record.seq:
            if old.blob == signed.blob:
                return Offer(True, "already stored")
            return Offer(False, "not newer than the stored record", RecordRefusal.STALE)
        self._drop_superseded(signed, bound)
        self._insert(dkey, signed)
        return Offer(True, "stored")

    def put_own(self, dkey: bytes, signed: SignedRecord) -> None:
        """Our own record: already built and signed here, so no re-validation."""
        bound = {dht_digest(k) for k in signed.record.dht_keys()}
        self._drop_superseded(signed, bound)
        self._insert(dkey, signed)

    def get(self, dkey: bytes, *, now: float) -> list[SignedRecord]:
        self.cull(now=now)
        return list(self.slots.get(dkey, {}).values())

    def answer(self, dkey: bytes, *, now: float) -> list[bytes]:
        """Blobs for a find_value reply, latest-expiring first, within the datagram budget."""
        out: list[bytes] = []
        size = 0
        for s in sorted(self.get(dkey, now=now), key=lambda s: -s.record.expires_at):
            if size + len(s.blob) > ANSWER_LIMIT_BYTES:
                break
            out.append(s.blob)
            size += len(s.blob)
        return out

    def items(self, *, now: float) -> list[tuple[bytes, SignedRecord]]:
        self.cull(now=now)
        return [(k, s) for k, slot in self.slots.items() for s in slot.values()]

    def total(self) -> int:
        return self._total

    def keys_of(self, peer_id: str) -> set[bytes]:
        return set(self._by_signer.get(peer_id, ()))

    def cull(self, *, now: float) -> None:
        expired = [
            (dkey, pid)
            for dkey, slot in self.slots.items()
            for pid, s in slot.items()
            if s.record.expires_at <= now
        ]
        for dkey, pid in expired:
            self._remove(dkey, pid)

    # --- internals -----------------------------------------------------------------------

    def _insert(self, dkey: bytes, signed: SignedRecord) -> None:
        peer = signed.record.peer_id
        slot = self.slots.get(dkey)
        if slot is not None and peer in slot:
            slot[peer] = signed  # replacing: no bound changes
            return
        if slot is None:
            while len(self.slots) >= self.max_keys:
                self._evict_soonest_key()
            slot = self.slots[dkey] = {}
        if len(slot) >= self.max_signers_per_key:
            full = slot
            self._remove(dkey, min(full, key=lambda p: full[p].record.expires_at))
        keys = self._by_signer.get(peer, set())
        while len(keys) >= self.max_keys_per_signer:
            victim = min(keys, key=lambda k: self.slots[k][peer].record.expires_at)
            self._remove(victim, peer)
            keys = self._by_signer.get(peer, set())
        while self._total >= self.max_total:
            self._evict_soonest_record()
        slot = self.slots.setdefault(dkey, {})
        slot[peer] = signed
        self._by_signer.setdefault(peer, set()).add(dkey)
        self._total += 1

    def _remove(self, dkey: bytes, peer: str) -> None:
        slot = self.slots.get(dkey)
        if slot is None or peer not in slot:
            return
        del slot[peer]
        self._total -= 1
        if not slot:
            del self.slots[dkey]
        keys = self._by_signer.get(peer)
        if keys is not None:
            keys.discard(dkey)
            if not keys:
                del self._by_signer[peer]

    def _drop_superseded(self, signed: SignedRecord, bound: set[bytes]) -> None:
        """A newer record says which keys its signer is bound to now; its older slots under
        other keys of the same network go (one identity may serve several networks)."""
        new = signed.record
        for dkey in list(self._by_signer.get(new.peer_id, ())):
            old = self.slots[dkey][new.peer_id].record
            if dkey not in bound and old.seq < new.seq and old.network_id == new.network_id:
                self._remove(dkey, new.peer_id)

    def _evict_soonest_record(self) -> None:
        dkey, peer = min(
            ((k, p) for k, slot in self.slots.items() for p in slot),
            key=lambda kp: self.slots[kp[0]][kp[1]].record.expires_at,
        )
        self._remove(dkey, peer)

    def _evict_soonest_key(self) -> None:
        victim = min(
            self.slots, key=lambda k: max(s.record.expires_at for s in self.slots[k].values())
        )
        for peer in list(self.slots[victim]):
            self._remove(victim, peer)
