"""Admission to the routing table: a contact proves its id before it enters.

`welcome_if_new` — the one place contacts enter kademlia's routing table — admits a contact only
after it answered a `prove` challenge (`p2p.dht.identity_proof` holds the rules; this file the
calls): it owns the Ed25519 key whose sha1 is its id, and it saw our challenge come from our
address. Results are cached per (id, ip, port). A stock kademlia node (no `prove` RPC) never
enters our tables, and stores go only to proven nodes. Light clients (id `CLIENT_ID`) stay out.

Challenges cost a datagram each way and one signature check, so they are bounded: at most
`MAX_CHALLENGES_IN_FLIGHT` at once; a stranger's contact arriving over that bound is dropped,
not queued, while our own publishing waits for a slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kademlia.node import Node

from p2p.dht.answers import valid_id
from p2p.dht.datagrams import DatagramRpc
from p2p.dht.identity_proof import (
    ProofResult,
    SelfAddresses,
    VerifiedContacts,
    check_proof,
    new_nonce,
)

log = logging.getLogger(__name__)

MAX_CHALLENGES_IN_FLIGHT = 64
# Light clients (`ask`, `peers`, the gateway) send this id: they come and go within seconds, and
# a departed client in a routing table costs every later lookup an RPC timeout.
CLIENT_ID = bytes(20)


class ProvenContacts(DatagramRpc):
    """Challenges, their cache, and the admission rule; `_admit` is the protocol's to define."""

    require_proofs: bool
    network_id: bytes | None
    wire_id: bytes
    verified: VerifiedContacts
    self_addresses: SelfAddresses
    _verifying: dict[tuple[bytes, str, int], asyncio.Future[bool]]
    _challenge_slots: asyncio.Semaphore
    _background: set[asyncio.Future[Any]]
    _exclude: frozenset[bytes]
    clock: Callable[[], float]

    def _init_proofs(self, *, own_id: bytes, require_proofs: bool) -> None:
        self.require_proofs = require_proofs
        self.verified = VerifiedContacts()
        self.self_addresses = SelfAddresses()
        self._verifying = {}
        self._challenge_slots = asyncio.Semaphore(MAX_CHALLENGES_IN_FLIGHT)
        self._background = set()
        self._exclude = frozenset({own_id, CLIENT_ID})

    def _source_proven(self, source: tuple[str, int]) -> bool:
        """A contact that answered our challenge from *source* receives there (the nonce went
        to it): its answers need no cookie."""
        return self.verified.address_proven(source, now=self.clock())

    def _admit(self, node: Node) -> None:
        """Add a proven contact to the routing table (the protocol decides what else)."""
        raise NotImplementedError

    def _admissible(self, node: Node) -> bool:
        return (
            valid_id(node.id)
            and node.id not in self._exclude
            and isinstance(node.ip, str)
            and isinstance(node.port, int)
        )

    def welcome_if_new(self, node: Node) -> None:
        if not self._admissible(node):
            return
        addr = (node.ip, node.port)
        now = self.clock()
        if not self.require_proofs or self.verified.is_verified(node.id, addr, now=now):
            self._admit(node)
        elif not self.verified.recently_failed(node.id, addr, now=now):
            # unsolicited contacts are dropped, not queued, while challenges are at the bound
            self._spawn(self.verify(node, wait=False), self._background)

    async def verify(self, node: Node, *, wait: bool = True) -> bool:
        """Has *node* proved its id at its address? Challenges it once if not known.

        At most `MAX_CHALLENGES_IN_FLIGHT` challenges run at once; with *wait* a caller (our own
        publish) queues for a slot, without it (a stranger's datagram) the contact is skipped."""
        if not self._admissible(node):
            return False
        if not self.require_proofs:
            return True
        addr = (node.ip, node.port)
        now = self.clock()
        if self.verified.is_verified(node.id, addr, now=now):
            return True
        if self.verified.recently_failed(node.id, addr, now=now):
            return False
        key = (bytes(node.id), node.ip, node.port)
        pending = self._verifying.get(key)
        if pending is None:
            if not wait and len(self._verifying) >= MAX_CHALLENGES_IN_FLIGHT:
                return False
            pending = asyncio.ensure_future(self._challenge(node))
            self._verifying[key] = pending
            pending.add_done_callback(lambda _f: self._verifying.pop(key, None))
        return await asyncio.shield(pending)

    async def pending_verifications(self) -> None:
        """Wait for the challenges in flight now (each ends by its RPC timeout)."""
        if self._verifying:
            await asyncio.gather(*self._verifying.values(), return_exceptions=True)

    async def settle(self, rounds: int = 10) -> None:
        """Wait until no challenge or hand-off is in flight (tests, tools; bounded rounds)."""
        for _ in range(rounds):
            pending = [*self._verifying.values(), *self._background]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    async def _challenge(self, node: Node) -> bool:
        addr = (node.ip, node.port)
        nonce = new_nonce()
        async with self._challenge_slots:
            ok, answer = await self.request_patiently(addr, "prove", self.wire_id, nonce)
        result = self._judge_proof(node, nonce, answer) if ok else ProofResult(False, "no answer")
        now = self.clock()
        if not result.ok:
            self.stats.proofs_failed += 1
            self.verified.mark_failed(node.id, addr, now=now)
            log.debug("contact %s refused: %s", addr, result.reason)
            return False
        self.stats.proofs_ok += 1
        self.verified.mark_verified(node.id, addr, now=now)
        self._admit(node)
        return True

    def _judge_proof(self, node: Node, nonce: bytes, answer: object) -> ProofResult:
        result = check_proof(
            answer, node_id=node.id, nonce=nonce, network_id=self.network_id or b""
        )
        if (
            result.ok
            and result.observed is not None
            and not self.self_addresses.accepts(result.observed, node.id)
        ):
            return ProofResult(False, f"proof names {result.observed}, not our address")
        return result

    def _cancel_background(self) -> None:
        for task in [*self._background, *self._verifying.values()]:
            task.cancel()
