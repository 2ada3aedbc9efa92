"""The DHT's local storage: signed records, one slot per signer under each key, bounded.

Sans-IO: `now` is passed in, so the rules are tested with plain calls. The kademlia package's own
storage keeps one value per key and lets anyone overwrite it; here a store is accepted only when
the record verifies, is bound to the key it is stored under, and is newer than what that signer
stored before.
"""

from __future__ import annotations

import attrs

from p2p.records import RecordError, SignedRecord, dht_digest, open_record

# A popular model may have many providers; a lookup answer must still fit one UDP datagram
# (about 64 KiB), and records are up to 7 KiB, so answers are trimmed by `answer_limit_bytes`.
MAX_SIGNERS_PER_KEY = 64
MAX_KEYS = 4096
MAX_TOTAL_RECORDS = 16384
ANSWER_LIMIT_BYTES = 48 * 1024


@attrs.define
class RecordStore:
    """dkey -> {peer_id: SignedRecord}."""

    slots: dict[bytes, dict[str, SignedRecord]] = attrs.field(factory=dict)

    def offer(self, dkey: bytes, blob: object, *, now: float) -> tuple[bool, str]:
        """Validate and merge. Returns (accepted, reason)."""
        try:
            signed = open_record(blob, now=now)
        except RecordError as exc:
            return False, str(exc)
        if dkey not in {dht_digest(k) for k in signed.record.dht_keys()}:
            return False, "record is not bound to this key"
        self.cull(now=now)
        slot = self.slots.get(dkey)
        old = slot.get(signed.record.peer_id) if slot else None
        if old is not None and old.record.seq >= signed.record.seq:
            return (old.blob == signed.blob), "not newer than the stored record"
        if slot is None:
            if len(self.slots) >= MAX_KEYS:
                return False, "storage full (keys)"
            slot = self.slots[dkey] = {}
        if old is None and len(slot) >= MAX_SIGNERS_PER_KEY:
            self._evict_soonest(slot)
        if old is None and self.total() >= MAX_TOTAL_RECORDS:
            return False, "storage full (records)"
        slot[signed.record.peer_id] = signed
        return True, "stored"

    def put_own(self, dkey: bytes, signed: SignedRecord) -> None:
        """Our own record: already built and signed here, so no re-validation."""
        self.slots.setdefault(dkey, {})[signed.record.peer_id] = signed

    def get(self, dkey: bytes, *, now: float) -> list[SignedRecord]:
        self.cull(now=now)
        return list(self.slots.get(dkey, {}).values())

    def answer(self, dkey: bytes, *, now: float) -> list[bytes]:
        """Blobs for a find_value reply, newest-expiring first, within the datagram budget."""
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
        return sum(len(s) for s in self.slots.values())

    def cull(self, *, now: float) -> None:
        for dkey in list(self.slots):
            slot = self.slots[dkey]
            for pid in [p for p, s in slot.items() if s.record.expires_at <= now]:
                del slot[pid]
            if not slot:
                del self.slots[dkey]

    @staticmethod
    def _evict_soonest(slot: dict[str, SignedRecord]) -> None:
        victim = min(slot, key=lambda p: slot[p].record.expires_at)
        del slot[victim]
