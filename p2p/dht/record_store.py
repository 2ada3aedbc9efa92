"""The DHT's local storage: signed records, one slot per signer under each key, bounded, fair.

Sans-IO: `now` is passed in, so the rules are tested with plain calls. The kademlia package's own
storage keeps one value per key and lets anyone overwrite it; here a store is accepted only when
the record verifies, is bound to the key it is stored under, and is newer than what that signer
stored before.

An open network is attacked with valid records: strangers mint identities freely and choose
every field, expiry and size included (issue #14: seven fresh identities with 1-hour, 7 KiB
records buried every honest provider). So nothing here is decided by what a record claims.
Two facts a stranger cannot choose decide instead (`p2p.dht.signer_history`): how long we have
known the signer, and the source network (IPv4 /24, IPv6 /48) that first stored it here.

Bounds, and what gives way when one is reached — the newest signer of the most crowded source
network (the newcomer itself, when that is it: the store then refuses it as `FULL`):

- per key: `MAX_SIGNERS_PER_KEY` signers (a popular model's providers), crowding counted among
  that key's signers;
- in total: `MAX_TOTAL_RECORDS` records, crowding counted over the whole store;
- keys: `MAX_KEYS`; the key whose oldest signer is newest gives way;
- per signer: `MAX_KEYS_PER_SIGNER` keys — a record is bound to at most 2 + 2·32 keys, but a
  signer cycling through model lists across sequence numbers could otherwise fill many keys; its
  own soonest-expiring slot goes (its own choice hurts only itself); a newer record also drops
  the signer's older slots under keys it is no longer bound to.

Our own records (`put_own`) never give way. Honest nodes republish every TTL/3, so a slot an
honest node held comes back at the next round, and it keeps its seniority while we remember it.

Updates: an honest node republishes every 20 s and on load changes (at most every 5 s, issue
#18), each a higher seq replacing its own slot under each key. Nothing bounds how often a signer
may update: a replacement changes no bound and evicts nobody (`_make_room` returns at once), so
frequent updates by a stranger churn only its own slots, as before; what each costs us (one
signature check) is bounded per source by the intake's rate limit. An older record never comes
back over a newer one (`STALE`), a withdrawal included: the withdrawal outlives the live record
it replaced (signed later with the same lifetime), so by the time it is culled, the record it
superseded has expired everywhere and can no longer be stored. Expired records are culled only
when the soonest expiry has passed (`_soonest`), not by a walk over the store on every offer.

Answers (`answer`) share the datagram's byte budget across source networks by deficit round
robin (`p2p.dht.fair_share`), networks and signers oldest-seen first, instead of "latest expiry
first"; readers merge the answers of the k closest nodes (`p2p.dht.lookup`).
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import attrs

from p2p.dht.fair_share import fair_pick
from p2p.dht.records import MAX_MODELS, RecordError, SignedRecord, dht_digest, open_record
from p2p.dht.signer_history import OWN_NETWORK, SignerHistory, SignerSeen
from p2p.errors import RecordRefusal

# A popular model may have many providers; a lookup answer must still fit one UDP datagram
# (about 64 KiB), and records are up to 7 KiB, so answers are trimmed by `ANSWER_LIMIT_BYTES`.
MAX_SIGNERS_PER_KEY = 64
MAX_KEYS_PER_SIGNER = 2 + 2 * MAX_MODELS
MAX_KEYS = 4096
MAX_TOTAL_RECORDS = 16384
ANSWER_LIMIT_BYTES = 48 * 1024

_UNKNOWN = SignerSeen(float("inf"), "unknown")


class Offer(NamedTuple):
    """What `RecordStore.offer` did with a record: `refusal` is None when it was accepted."""

    accepted: bool
    reason: str
    refusal: RecordRefusal | None = None


def _order(seen: SignerSeen, peer: str) -> tuple[float, str]:
    return (seen.first_seen, peer)


@attrs.define
class RecordStore:
    """dkey -> {peer_id: SignedRecord}, with the reverse index peer_id -> {dkey}."""

    max_signers_per_key: int = MAX_SIGNERS_PER_KEY
    max_keys_per_signer: int = MAX_KEYS_PER_SIGNER
    max_keys: int = MAX_KEYS
    max_total: int = MAX_TOTAL_RECORDS
    slots: dict[bytes, dict[str, SignedRecord]] = attrs.field(factory=dict)
    history: SignerHistory = attrs.field(init=False)
    _by_signer: dict[str, set[bytes]] = attrs.field(factory=dict)
    _per_network: Counter[str] = attrs.field(factory=Counter)  # records per source network
    _total: int = 0
    _soonest: float = float("inf")  # no record stored expires before this (a lower bound)

    def __attrs_post_init__(self) -> None:
        self.history = SignerHistory(keep=lambda peer: peer in self._by_signer)

    def offer(self, dkey: bytes, blob: object, *, now: float, source: str | None = None) -> Offer:
        """Validate and merge; whether it was accepted, why, and the rule a refusal broke.

        *source* is the IP address the store came from (None: our own or a local caller)."""
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
        seen = self.history.lookup(peer, source, now=now)
        self._drop_superseded(signed, bound)
        if not self._make_room(dkey, peer, seen):
            return Offer(False, "full: the newest signer of a crowded network", RecordRefusal.FULL)
        self.history.remember(peer, seen)
        self._insert(dkey, signed)
        return Offer(True, "stored")

    def put_own(self, dkey: bytes, signed: SignedRecord) -> None:
        """Our own record: already built and signed here, so no re-validation; never evicted."""
        peer = signed.record.peer_id
        held = len(self._by_signer.get(peer, ()))
        if held:  # our id's record reached us from a peer first: its slots move to our network
            self._per_network[self._seen(peer).network] -= held
            self._per_network[OWN_NETWORK] += held
        self.history.own(peer)
        bound = {dht_digest(k) for k in signed.record.dht_keys()}
        self._drop_superseded(signed, bound)
        self._make_room(dkey, peer, self.history.lookup(peer, None, now=0.0))
        self._insert(dkey, signed)

    def get(self, dkey: bytes, *, now: float) -> list[SignedRecord]:
        self.cull(now=now)
        return list(self.slots.get(dkey, {}).values())

    def answer(
        self, dkey: bytes, *, now: float, max_bytes: int = ANSWER_LIMIT_BYTES
    ) -> list[bytes]:
        """Blobs for a find_value reply within *max_bytes*, shared fairly: deficit round robin
        across source networks (oldest-seen network first), oldest-seen signers first within."""
        self.cull(now=now)
        groups: dict[str, list[tuple[tuple[float, str], bytes]]] = {}
        for peer, signed in self.slots.get(dkey, {}).items():
            seen = self._seen(peer)
            groups.setdefault(seen.network, []).append((_order(seen, peer), signed.blob))
        ordered = sorted((sorted(g) for g in groups.values()), key=lambda g: g[0][0])
        picked = fair_pick(ordered, lambda item: len(item[1]), max_bytes)
        return [blob for _, blob in picked]

    def items(self, *, now: float) -> list[tuple[bytes, SignedRecord]]:
        self.cull(now=now)
        return [(k, s) for k, slot in self.slots.items() for s in slot.values()]

    def total(self) -> int:
        return self._total

    def keys_of(self, peer_id: str) -> set[bytes]:
        return set(self._by_signer.get(peer_id, ()))

    def network_of(self, peer_id: str) -> str | None:
        seen = self.history.peek(peer_id)
        return None if seen is None else seen.network

    def cull(self, *, now: float) -> None:
        if now < self._soonest:
            return  # nothing has expired yet
        expired = [
            (dkey, pid)
            for dkey, slot in self.slots.items()
            for pid, s in slot.items()
            if s.record.expires_at <= now
        ]
        for dkey, pid in expired:
            self._remove(dkey, pid)
        self._soonest = min(
            (s.record.expires_at for slot in self.slots.values() for s in slot.values()),
            default=float("inf"),
        )

    # --- internals -----------------------------------------------------------------------

    def _seen(self, peer: str) -> SignerSeen:
        return self.history.peek(peer) or _UNKNOWN

    def _make_room(self, dkey: bytes, peer: str, seen: SignerSeen) -> bool:
        """Free the room *peer*'s record needs under *dkey*; False if it is the one to give way."""
        slot = self.slots.get(dkey)
        if slot is not None and peer in slot:
            return True  # replacing: no bound changes
        if slot is not None and len(slot) >= self.max_signers_per_key:
            crowd = Counter(self._seen(p).network for p in slot)
            victim = self._victim(peer, seen, list(slot), crowd)
            if victim is None:
                return False
            self._remove(dkey, victim)
        while dkey not in self.slots and len(self.slots) >= self.max_keys:
            victim_key = self._newest_key()
            if victim_key is None or self._key_age(victim_key) <= seen.first_seen:
                return False
            for p in list(self.slots[victim_key]):
                self._remove(victim_key, p)
        keys = self._by_signer.get(peer, set())
        while len(keys) >= self.max_keys_per_signer:
            mine = min(keys, key=lambda k: self.slots[k][peer].record.expires_at)
            self._remove(mine, peer)
            keys = self._by_signer.get(peer, set())
        while self._total >= self.max_total:
            victim = self._victim(peer, seen, list(self._by_signer), self._per_network)
            if victim is None:
                return False
            mine = max(self._by_signer[victim], key=lambda k: len(self.slots[k]))
            self._remove(mine, victim)
        return True

    def _victim(
        self, peer: str, seen: SignerSeen, signers: list[str], crowd: Counter[str]
    ) -> str | None:
        """The newest signer of the most crowded network among *signers* and the newcomer
        *peer*; None when that is the newcomer (or only our own records are left)."""
        crowd = Counter(crowd)
        crowd[seen.network] += 1
        crowd.pop(OWN_NETWORK, None)
        if not crowd:
            return None
        top = max(crowd.values())
        # newest first; at an equal first-seen time the newcomer is the newer
        candidates = [(seen.first_seen, 1, peer)] if crowd[seen.network] == top else []
        for p in signers:
            other = self._seen(p)
            if crowd.get(other.network, 0) == top:
                candidates.append((other.first_seen, 0, p))
        # equal crowding: the network whose newest signer is newest gives way
        _, _, victim = max(candidates)
        return None if victim == peer else victim

    def _key_age(self, dkey: bytes) -> float:
        return min(self._seen(p).first_seen for p in self.slots[dkey])

    def _newest_key(self) -> bytes | None:
        keys = [k for k, slot in self.slots.items() if not any(map(self._is_own, slot))]
        return max(keys, key=self._key_age, default=None)

    def _is_own(self, peer: str) -> bool:
        return self._seen(peer).network == OWN_NETWORK

    def _insert(self, dkey: bytes, signed: SignedRecord) -> None:
        peer = signed.record.peer_id
        slot = self.slots.setdefault(dkey, {})
        if peer not in slot:
            self._by_signer.setdefault(peer, set()).add(dkey)
            self._per_network[self._seen(peer).network] += 1
            self._total += 1
        slot[peer] = signed
        self._soonest = min(self._soonest, signed.record.expires_at)

    def _remove(self, dkey: bytes, peer: str) -> None:
        slot = self.slots.get(dkey)
        if slot is None or peer not in slot:
            return
        del slot[peer]
        self._total -= 1
        network = self._seen(peer).network
        self._per_network[network] -= 1
        if self._per_network[network] <= 0:
            del self._per_network[network]
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
