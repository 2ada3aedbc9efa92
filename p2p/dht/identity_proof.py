"""DHT node ids bound to keys: the challenge, the proof, and the cache of verified contacts.

Sans-IO: pure functions and small state objects with `now` passed in; the RPC glue lives in
`p2p.dht.protocol`. The rule they implement: a contact `(node id, ip, port)` enters a routing table
only after it has answered a fresh random challenge with

    [public_key, observed_host, observed_port, signature]

where `sha1(public_key) == node id` and the Ed25519 signature (domain `dht-node-proof/1`) covers
the challenge nonce, the network id and the address the prover saw the challenge come from — that
is, *our* address as the prover sees it.

Why the observed address is signed: without it, Mallory at address M could claim the id of an
honest node V, forward our challenge to V from M, and hand V's answer back to us — and so sit in
our table under an id she does not own (and pick ids near a key she wants to eclipse from among
existing nodes). With it, V signs "I saw the challenge come from M", which is not our address, and
the relay is refused. `SelfAddresses` decides which observed addresses are ours.

Key grinding (generating keys until sha1 lands near a target) stays possible; it costs the
attacker one Ed25519 key per try. Noted, not solved (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os

import attrs

from crypto.identity import PUBLIC_KEY_LEN, SIGNATURE_LEN, Identity, verify_signature
from p2p.bounded_lru import BoundedLRU
from p2p.host_port import is_ip

PROOF_DOMAIN = "dht-node-proof/1"
NONCE_LEN = 32
# The public network; private networks (issue 3) pass their own id and then never verify against
# nodes of another network, so their routing tables stay apart.
PUBLIC_NETWORK = b""
MAX_NETWORK_ID = 32

# How long a verified (id, address) stays trusted without a new challenge. A node keeps its key
# for its whole life; an hour bounds the damage of a key that leaked and was rotated.
VERIFIED_TTL_S = 3600.0
# After a failed challenge the same (id, address) is not challenged again for this long: a stock
# kademlia node (no `prove` RPC) or an impostor would otherwise cost us a challenge per datagram.
FAILED_TTL_S = 60.0
# Both caches are bounded; a routing table holds at most a few thousand contacts.
MAX_VERIFIED = 8192
MAX_FAILED = 4096
# Behind NAT a node does not know its own public address; it learns it from proofs. An address
# is taken as ours once this many distinct verified ids reported it.
ADDRESS_QUORUM = 2
MAX_ADDRESS_CANDIDATES = 16

Address = tuple[str, int]
Contact = tuple[bytes, str, int]  # (node id, ip, port)


def new_nonce() -> bytes:
    return os.urandom(NONCE_LEN)


def proof_message(nonce: bytes, observed: Address, network_id: bytes) -> bytes:
    """The bytes a proof signs: fixed-width fields, then the length-prefixed variable ones."""
    host = observed[0].encode("ascii")
    return (
        nonce
        + len(network_id).to_bytes(1, "big")
        + network_id
        + len(host).to_bytes(1, "big")
        + host
        + observed[1].to_bytes(2, "big")
    )


def answer_challenge(
    identity: Identity, nonce: object, observed: Address, network_id: bytes = PUBLIC_NETWORK
) -> list[object] | None:
    """The prover's side: sign the nonce and the address the challenge came from.

    Returns None for a malformed challenge (the RPC then answers nothing useful)."""
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
        return None
    host, port = str(observed[0]), int(observed[1])
    signature = identity.sign(PROOF_DOMAIN, proof_message(nonce, (host, port), network_id))
    return [identity.public_key, host, port, signature]


@attrs.frozen
class ProofResult:
    ok: bool
    reason: str
    observed: Address | None = None


def check_proof(
    answer: object, *, node_id: bytes, nonce: bytes, network_id: bytes = PUBLIC_NETWORK
) -> ProofResult:
    """The challenger's side: does *answer* prove ownership of *node_id* for this *nonce*?

    The observed address is returned, not judged: `SelfAddresses.accepts` decides whether it is
    ours (it needs state; this function needs none)."""
    if not (isinstance(answer, (list, tuple)) and len(answer) == 4):
        return ProofResult(False, "malformed proof")
    public_key, host, port, signature = answer
    if not (isinstance(public_key, bytes) and len(public_key) == PUBLIC_KEY_LEN):
        return ProofResult(False, "bad public key")
    if not (isinstance(signature, bytes) and len(signature) == SIGNATURE_LEN):
        return ProofResult(False, "bad signature field")
    if not (isinstance(host, str) and is_ip(host)):
        return ProofResult(False, "bad observed host")
    if not (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
        return ProofResult(False, "bad observed port")
    if hashlib.sha1(public_key).digest() != node_id:
        return ProofResult(False, "node id is not sha1(public key)")
    message = proof_message(nonce, (host, port), network_id)
    if not verify_signature(public_key, PROOF_DOMAIN, message, signature):
        return ProofResult(False, "bad signature")
    return ProofResult(True, "proved", (host, port))


def _is_public_or_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_global


@attrs.define
class SelfAddresses:
    """Which observed addresses are ours.

    Bound to a specific public or loopback IP (`--host 203.0.113.7`, every test on 127.0.0.1),
    the check is strict: the observed address must be exactly the bound one. Bound to a wildcard
    or to a private address (typical behind NAT: peers see the router's public address, not
    ours) we cannot know our public address, so it is learned: an address is ours once
    `ADDRESS_QUORUM` distinct proved ids reported it, and until any address is confirmed, any is
    accepted (trust on first use). Residual risk, written down: a relay attacker who controls
    the first contacts of a wildcard-bound node can get its relay address confirmed.
    """

    bound: Address | None = None
    votes: dict[Address, set[bytes]] = attrs.field(factory=dict)

    def accepts(self, observed: Address, voter: bytes) -> bool:
        if observed == self.bound:
            return True
        if self.bound is not None and _is_public_or_loopback(self.bound[0]):
            return False
        voters = self.votes.get(observed)
        if voters is None and len(self.votes) < MAX_ADDRESS_CANDIDATES:
            voters = self.votes[observed] = set()
        if voters is not None and len(voters) < ADDRESS_QUORUM:
            voters.add(voter)
        confirmed = self._confirmed()
        return not confirmed or observed in confirmed

    def _confirmed(self) -> set[Address]:
        return {a for a, v in self.votes.items() if len(v) >= ADDRESS_QUORUM}


@attrs.define
class VerifiedContacts:
    """Cache of proofs: (node id, ip, port) → when it proved, and recent failures.

    Keyed by the full contact, not the id alone: the same id at a new address (a restarted node,
    or an impostor) must prove again. A proof also shows that its address receives what we send
    there (the nonce went to it), which `address_proven` answers for the amplification rule
    (`p2p.dht.address_cookies`).
    """

    verified_ttl: float = VERIFIED_TTL_S
    failed_ttl: float = FAILED_TTL_S
    _ok: BoundedLRU[Contact, float] = attrs.field(factory=lambda: BoundedLRU(MAX_VERIFIED))
    _failed: BoundedLRU[Contact, float] = attrs.field(factory=lambda: BoundedLRU(MAX_FAILED))
    _addresses: BoundedLRU[Address, float] = attrs.field(factory=lambda: BoundedLRU(MAX_VERIFIED))

    def is_verified(self, node_id: bytes, addr: Address, *, now: float) -> bool:
        return self._fresh(self._ok, (node_id, addr[0], addr[1]), self.verified_ttl, now)

    def recently_failed(self, node_id: bytes, addr: Address, *, now: float) -> bool:
        return self._fresh(self._failed, (node_id, addr[0], addr[1]), self.failed_ttl, now)

    def mark_verified(self, node_id: bytes, addr: Address, *, now: float) -> None:
        key = (node_id, addr[0], addr[1])
        self._failed.pop(key)
        self._ok.set(key, now)
        self._addresses.set((addr[0], addr[1]), now)

    def address_proven(self, addr: Address, *, now: float) -> bool:
        """Did some contact answer our challenge from *addr* within the verified TTL?"""
        at = self._addresses.peek((addr[0], addr[1]))
        if at is None:
            return False
        if now - at > self.verified_ttl:
            self._addresses.pop((addr[0], addr[1]))
            return False
        return True

    def mark_failed(self, node_id: bytes, addr: Address, *, now: float) -> None:
        key = (node_id, addr[0], addr[1])
        self._ok.pop(key)
        self._failed.set(key, now)

    @staticmethod
    def _fresh(table: BoundedLRU[Contact, float], key: Contact, ttl: float, now: float) -> bool:
        """Is *key* in *table* and younger than *ttl*? A stale entry is forgotten."""
        at = table.peek(key)
        if at is None:
            return False
        if now - at > ttl:
            table.pop(key)
            return False
        return True

    def __len__(self) -> int:
        return len(self._ok)
