"""kademlia's protocol, hardened by subclassing (the package itself is not forked).

`GpunetProtocol` is three layers, one per file, each seeing the one below:
- `p2p.dht.datagrams.DatagramRpc` — intake (rate limit, sizes, tasks in flight, defensive
  parsing, only `RPC_NAMES` callable) and requests out (replies taken only from the address asked);
- `p2p.dht.contact_proofs.ProvenContacts` — `welcome_if_new` admits a contact only after it
  proved its id (`prove` challenge, bounded, cached per (id, ip, port));
- this file — the RPC handlers (everything arriving is hostile), the outgoing `call_*` with
  answers shape-checked (`p2p.dht.answers`), eviction of silent contacts
  (`p2p.dht.contact_health`), and the hand-off of records to a newly admitted close node.

What the handlers change against upstream kademlia 2.2.3:
- `rpc_store` validates the record (signature, key binding, lifetime, size) and merges it into a
  per-signer slot; the return value tells the sender whether it was accepted.
- `rpc_find_value` returns a *list* of record blobs; readers take the union over responders.
- `rpc_record` returns this node's own signed record (the crawler's way from a contact to what
  the node offers; the reader checks `sha1(record.public_key) == node id`).
- `find_node`, `find_value` and `record` take `answer_limit` from the intake: for a source that
  has not proven its address it is 3× the request, and an answer over it goes out in its small
  form with a cookie (`p2p.dht.answer_budget`); the asker's second request, with the cookie,
  gets the whole answer. No amplifier for spoofed sources.
- `_hand_off` gives records to a newly admitted close node using the stored 160-bit key as is
  (upstream's `welcome_if_new` hashes it a second time, so the hand-off went to a random node).
- Replies from peers are shape-checked before the crawlers touch them, so an odd reply counts as
  no reply instead of raising inside a lookup.
- Loss is not death: a contact leaves the table after 2 failed calls in a row (upstream: 1), and
  is then skipped for a minute when peers hand it out again; challenges and bootstrap pings are
  sent up to 3 times on silence.
- Client-only members (`client_mode`: light clients, and a node nobody can dial, p2p/reach/)
  answer lookups with `CLIENT_ONLY_ANSWER` instead of contacts, so a node that listed one from
  before drops it at the next call, not after two timeouts; a listed contact seen sending with
  the light client's id is pinged at once (rate-limited) and dropped if it answers as a client.
- `find_neighbors` is exact (upstream's bucket traversal could return nothing; see
  `p2p.dht.routing.GpunetRoutingTable`).

Beware: rpcudp's `__getattr__` turns any missing attribute into a remote call, so a typo in a
`self.` name here becomes an RPC, not an AttributeError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from crypto.identity import Identity
from p2p import metrics
from p2p.dht.answer_budget import fits, items_room, small_answer
from p2p.dht.answers import sanitize_nodes_answer, sanitize_value_answer, valid_id
from p2p.dht.contact_health import ContactHealth
from p2p.dht.contact_proofs import CLIENT_ID, ProvenContacts
from p2p.dht.identity_proof import answer_challenge
from p2p.dht.rate_limit import SourceRateLimiter
from p2p.dht.record_store import RecordStore
from p2p.dht.records import SignedRecord
from p2p.dht.routing import GpunetRoutingTable

log = logging.getLogger(__name__)

# Hand-offs to a newly admitted node run in the background; a burst of joins must not spawn one
# store per record per joiner without bound.
MAX_HANDOFFS_IN_FLIGHT = 256

Address = tuple[str, int]

# What a client-only member answers find_node / find_value with. The reply comes from the
# address asked (rpcudp matches it to our random message id), so only that node can say it of
# itself; older nodes read it as no answer and evict it after their second call.
CLIENT_ONLY_ANSWER = "client-only"


class GpunetProtocol(ProvenContacts, KademliaProtocol):  # type: ignore[misc]
    def __init__(
        self,
        source_node: Node,
        storage: RecordStore,
        ksize: int,
        *,
        wait_timeout: float,
        client_mode: bool = False,
        identity: Identity | None = None,
        network_id: bytes | None = None,
        clock: Callable[[], float] = time.time,
        rate_limiter: SourceRateLimiter | None = None,
        require_proofs: bool = True,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self._init_datagrams(
            wait_timeout=wait_timeout,
            rate_limiter=rate_limiter if rate_limiter is not None else SourceRateLimiter(),
        )
        self._init_proofs(own_id=bytes(source_node.id), require_proofs=require_proofs)
        self.router = GpunetRoutingTable(self, ksize, source_node)
        self.wire_id = CLIENT_ID if client_mode else bytes(source_node.id)
        self.client_mode = client_mode
        self.record_store = storage
        self.identity = identity
        self.network_id = network_id
        self.clock = clock
        self.own_record: SignedRecord | None = None
        self.health = ContactHealth()

    @property
    def refused_stores(self) -> int:
        return self.stats.refused_stores

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.self_addresses.bound = (str(sockname[0]), int(sockname[1]))

    # --- RPC handlers (everything arriving here is hostile) -------------------------------

    def _contact(self, sender: Address, nodeid: object) -> Node:
        if not valid_id(nodeid):
            raise ValueError("bad node id")
        if nodeid == CLIENT_ID and not self.client_mode:
            self._recheck_if_listed(sender)
        return Node(nodeid, sender[0], sender[1])

    def _recheck_if_listed(self, sender: Address) -> None:
        """A light client's datagram from the address of a contact we list: that contact may
        have become client-only (its verdict: "relayed"). Ask it by a ping, never on this
        datagram's word (its source address may be spoofed)."""
        listed = next(
            (n for b in self.router.buckets for n in b.nodes.values() if (n.ip, n.port) == sender),
            None,
        )
        if listed is not None and self.health.may_recheck(sender, now=self._monotonic()):
            self._spawn(self.call_ping(listed), self._background)

    def rpc_ping(self, sender: Address, nodeid: object) -> bytes:
        self.welcome_if_new(self._contact(sender, nodeid))
        return bytes(self.wire_id)

    def rpc_store(self, sender: Address, nodeid: object, key: object, value: object) -> bool:
        source = self._contact(sender, nodeid)
        if not valid_id(key) or self.client_mode:
            return False
        self.welcome_if_new(source)
        assert isinstance(key, bytes)
        offer = self.record_store.offer(key, value, now=self.clock(), source=sender[0])
        if offer.refusal is not None:
            self.stats.refused_stores += 1
            metrics.count_refused_record(offer.refusal)
            log.debug("refused store from %s: %s", sender, offer.reason)
        return offer.accepted

    def rpc_find_node(
        self, sender: Address, nodeid: object, key: object, *, answer_limit: int | None = None
    ) -> Any:
        """The k nearest contacts; *answer_limit* (bytes, from the intake, never the wire) is
        the budget of a source that has not proven its address."""
        source = self._contact(sender, nodeid)
        if not valid_id(key):
            raise ValueError("bad key")
        if self.client_mode:
            return CLIENT_ONLY_ANSWER
        self.welcome_if_new(source)
        neighbors = self.router.find_neighbors(Node(key), exclude=source)
        contacts = [tuple(n) for n in neighbors]
        if answer_limit is None or fits(contacts, answer_limit):
            return contacts
        return self._small(sender, answer_limit, "nodes", contacts)

    def rpc_find_value(
        self, sender: Address, nodeid: object, key: object, *, answer_limit: int | None = None
    ) -> Any:
        source = self._contact(sender, nodeid)
        if not valid_id(key):
            raise ValueError("bad key")
        if self.client_mode:
            return CLIENT_ONLY_ANSWER
        assert isinstance(key, bytes)
        blobs = self.record_store.answer(key, now=self.clock())
        if not blobs:
            return self.rpc_find_node(sender, nodeid, key, answer_limit=answer_limit)
        self.welcome_if_new(source)
        answer = {"value": blobs}
        if answer_limit is None or fits(answer, answer_limit):
            return answer
        # the store's fair share across signers and networks, within the small form's room
        room = items_room(answer_limit, "value")
        fair = self.record_store.answer(key, now=self.clock(), max_bytes=max(room, 0))
        return self._small(sender, answer_limit, "value", fair)

    def rpc_record(
        self, sender: Address, nodeid: object, *, answer_limit: int | None = None
    ) -> Any:
        blob = None if self.own_record is None else self.own_record.blob
        if answer_limit is None or fits(blob, answer_limit):
            return blob
        return self._small(sender, answer_limit)

    def _small(
        self, sender: Address, budget: int, field: str | None = None, items: Any = ()
    ) -> Any:
        self.cookie_stats.small_answers += 1
        return small_answer(self._issue_cookie(sender), budget, field, items)

    def rpc_prove(self, sender: Address, nodeid: object, nonce: object) -> list[object] | None:
        """Answer a challenge. The challenger is not welcomed here: a proof costs a signature,
        and welcoming would make every challenge trigger a counter-challenge."""
        if self.identity is None or self.client_mode:
            return None
        return answer_challenge(self.identity, nonce, sender, self.network_id or b"")

    # --- outgoing calls, answers shape-checked --------------------------------------------

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self.request(address, "find_node", self.wire_id, node_to_find.id)
        if self._turned_client(result[0] and result[1] == CLIENT_ONLY_ANSWER, node_to_ask):
            return False, None
        clean = self._drop_unresponsive(sanitize_nodes_answer(result, exclude=self._exclude))
        return self.handle_call_response(clean, node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self.request(address, "find_value", self.wire_id, node_to_find.id)
        if self._turned_client(result[0] and result[1] == CLIENT_ONLY_ANSWER, node_to_ask):
            return False, None
        clean = self._drop_unresponsive(sanitize_value_answer(result, exclude=self._exclude))
        return self.handle_call_response(clean, node_to_ask)

    async def call_ping(self, node_to_ask: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        ok, answer = await self.request(address, "ping", self.wire_id)
        if self._turned_client(ok and answer == CLIENT_ID, node_to_ask):
            return False, None
        result = (True, answer) if ok and answer == node_to_ask.id else (False, None)
        return self.handle_call_response(result, node_to_ask)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> Any:
        """Store at a proven node only; (answered, accepted)."""
        if not await self.verify(node_to_ask):
            return False, False
        address = (node_to_ask.ip, node_to_ask.port)
        ok, answer = await self.request(address, "store", self.wire_id, key, value)
        return self.handle_call_response((ok, answer is True), node_to_ask)

    async def call_record(self, node_to_ask: Node) -> Any:
        """The node's own record blob, unverified (the caller checks it against the id)."""
        address = (node_to_ask.ip, node_to_ask.port)
        ok, answer = await self.request(address, "record", self.wire_id)
        return (True, answer) if ok and isinstance(answer, bytes) else (False, None)

    async def ping_address(self, address: Address) -> bytes | None:
        """The id a node at *address* claims (bootstrap: we know the address, not the id)."""
        ok, answer = await self.request_patiently(address, "ping", self.wire_id)
        return answer if ok and valid_id(answer) and answer not in self._exclude else None

    def handle_call_response(self, result: Any, node: Node) -> Any:
        if result[0]:
            self.health.answered(node.id)
            self.welcome_if_new(node)
        elif self.health.failed(node.id, (node.ip, node.port), now=self._monotonic()):
            self.router.remove_contact(node)
        return result

    def _turned_client(self, said_so: bool, node: Node) -> bool:
        """*said_so*: *node* answered as a client-only member (`CLIENT_ONLY_ANSWER`, or a ping
        answered with the light client's id). Then it leaves the table now and is skipped for a
        while when peers hand it out (`ContactHealth.left`)."""
        if not said_so:
            return False
        self.router.remove_contact(node)
        self.health.left(node.id, (node.ip, node.port), now=self._monotonic())
        log.debug("%s:%d is a client-only member now: left the table", node.ip, node.port)
        return True

    def is_unresponsive(self, addr: Address) -> bool:
        return self.health.is_unresponsive(addr, now=self._monotonic())

    def _drop_unresponsive(self, result: Any) -> Any:
        return self.health.drop_unresponsive(result, now=self._monotonic())

    # --- the routing table, and the records a new close node should hold -------------------

    def _admit(self, node: Node) -> None:
        """Add a proven contact; hand it the records it is now among the closest for."""
        if self.router.is_new_node(node):
            self._hand_off(node)
        self.router.add_contact(node)

    def _hand_off(self, node: Node) -> None:
        if self.client_mode:
            return
        for dkey, signed in self.record_store.items(now=self.clock()):
            if len(self._background) >= MAX_HANDOFFS_IN_FLIGHT:
                return
            keynode = Node(dkey)  # the stored key is already the 160-bit DHT key
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                this_closest = self.source_node.distance_to(keynode) < neighbors[0].distance_to(
                    keynode
                )
            if not neighbors or (new_node_close and this_closest):
                self._spawn(self.call_store(node, dkey, signed.blob), self._background)

    def stop(self) -> None:
        self._cancel_requests()
        self._cancel_background()
