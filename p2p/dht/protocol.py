"""kademlia's protocol, hardened by subclassing (the package itself is not forked).

What changes against upstream kademlia 2.2.3 / rpcudp 5.0.1, and why:
- **Ids bound to keys.** `welcome_if_new` — the one place contacts enter the routing table —
  admits a contact only after it answered a `prove` challenge (`p2p.dht.identity_proof`): it owns the
  Ed25519 key whose sha1 is its id, and it saw our challenge come from our address. Results are
  cached per (id, ip, port). A stock kademlia node (no `prove` RPC) never enters our tables, and
  stores go only to proven nodes. Light clients (id `CLIENT_ID`) stay out, as before.
- **Intake.** Every datagram passes a per-source token bucket, a size check and a bound on tasks
  in flight, and is parsed inside a try block; only the RPCs listed in `RPC_NAMES` are callable
  (upstream calls any `rpc_*` attribute), and an answer over `MAX_ANSWER_DATAGRAM` is not sent.
- **Calls.** Requests go out through `_call`, not rpcudp's `__getattr__` magic, and a reply is
  taken only from the address the request went to (upstream matches by message id alone, so
  anyone who sees or guesses an id could answer). `_timeout` and `_accept_response` skip futures
  already done: a trio-side cancellation cancels the future, and upstream's timeout would later
  call `set_result` on it (InvalidStateError, crash).
- `rpc_store` validates the record (signature, key binding, lifetime, size) and merges it into a
  per-signer slot; the return value tells the sender whether it was accepted.
- `rpc_find_value` returns a *list* of record blobs; readers take the union over responders.
- `rpc_record` returns this node's own signed record (the crawler's way from a contact to what
  the node offers; the reader checks `sha1(record.public_key) == node id`).
- `welcome_if_new` hands records to a newly admitted close node using the stored 160-bit key as
  is (upstream hashes it a second time, so the hand-off went to a random node).
- Replies from peers are shape-checked before the crawlers touch them, so an odd reply counts as
  no reply instead of raising inside a lookup.
- Loss is not death: a contact leaves the table after 2 failed calls in a row (upstream: 1), and
  is then skipped for a minute when peers hand it out again; challenges and bootstrap pings are
  sent up to 3 times on silence.
- `find_neighbors` is exact (upstream's bucket traversal could return nothing; see
  `GpunetRoutingTable`).

Beware: rpcudp's `__getattr__` turns any missing attribute into a remote call, so a typo in a
`self.` name here becomes an RPC, not an AttributeError.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import ipaddress
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
import msgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable

from crypto.identity import Identity
from p2p import metrics
from p2p.dht.identity_proof import (
    ProofResult,
    SelfAddresses,
    VerifiedContacts,
    answer_challenge,
    check_proof,
    new_nonce,
)
from p2p.dht.rate_limit import SourceRateLimiter
from p2p.dht.record_store import RecordStore
from p2p.dht.records import SignedRecord

log = logging.getLogger(__name__)

MAX_DATAGRAM = 16 * 1024  # requests are <= 8 KiB (rpcudp's own bound); answers are ours
MAX_ANSWER_DATAGRAM = 64 * 1024
MAX_REQUEST_PAYLOAD = 8192  # rpcudp's bound on an outgoing request, kept for old peers
MAX_TASKS_IN_FLIGHT = 256
MAX_CHALLENGES_IN_FLIGHT = 64
MAX_HANDOFFS_IN_FLIGHT = 256
MAX_CONTACTS_IN_ANSWER = 40
# A contact that did not answer is skipped when peers hand it to us again, for this long: after a
# node dies, every table still lists it until a call to it fails, and each lookup that tried it
# again would wait a whole RPC timeout in one of its rounds.
UNRESPONSIVE_TTL_S = 60.0
MAX_UNRESPONSIVE = 4096
# UDP loses datagrams. One silence is not death: a contact leaves the table (and is skipped) only
# after FAILURES_TO_EVICT failed calls in a row, and a challenge or a bootstrap ping is sent up to
# ATTEMPTS times before silence counts (a lost proof would keep a node out for FAILED_TTL_S).
# Without these, 5 % loss in netsim cut lookup success to 49 %.
FAILURES_TO_EVICT = 2
ATTEMPTS = 3
RPC_NAMES = frozenset({"ping", "store", "find_node", "find_value", "prove", "record"})
# Light clients (`ask`, `peers`, the gateway) send this id: they come and go within seconds, and
# a departed client in a routing table costs every later lookup an RPC timeout.
CLIENT_ID = bytes(20)

Address = tuple[str, int]


def valid_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 20


@functools.lru_cache(maxsize=4096)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _valid_contact(c: object) -> bool:
    if not (isinstance(c, (list, tuple)) and len(c) == 3):
        return False
    nid, ip, port = c
    if not (valid_id(nid) and isinstance(ip, str) and isinstance(port, int)):
        return False
    if isinstance(port, bool) or not 0 < port < 65536 or len(ip) > 64:
        return False
    return _is_ip(ip)


def sanitize_nodes_answer(result: Any, *, exclude: frozenset[bytes] = frozenset()) -> Any:
    ok, answer = result
    if not ok:
        return result
    if (
        isinstance(answer, list)
        and len(answer) <= MAX_CONTACTS_IN_ANSWER
        and all(_valid_contact(c) for c in answer)
    ):
        return True, [tuple(c) for c in answer if c[0] not in exclude]
    return False, None


def sanitize_value_answer(result: Any, *, exclude: frozenset[bytes] = frozenset()) -> Any:
    ok, answer = result
    if ok and isinstance(answer, dict):
        blobs = answer.get("value")
        if (
            len(answer) == 1
            and isinstance(blobs, list)
            and all(isinstance(b, bytes) for b in blobs)
        ):
            return True, {"value": blobs}
        return False, None
    return sanitize_nodes_answer(result, exclude=exclude)


class GpunetRoutingTable(RoutingTable):  # type: ignore[misc]
    """Upstream's table with a correct `find_neighbors`.

    Upstream walks buckets outward from the key's bucket with `TableTraverser`, which stops as
    soon as it pops an empty bucket on one side while the other side is exhausted — so a table
    of 21 contacts answered *no* neighbours for some keys (found by tools/netsim.py: 2 % of
    lookups failed in a network with no dead node). It also returned the first k contacts in
    bucket order, not the k closest. A table holds a few hundred contacts at most, so the k
    nearest over all of them is cheap and exact.
    """

    def find_neighbors(
        self, node: Node, k: int | None = None, exclude: Node | None = None
    ) -> list[Node]:
        k = k or self.ksize
        target = node.long_id
        candidates = (
            n
            for bucket in self.buckets
            for n in bucket.nodes.values()
            if n.id != node.id and (exclude is None or not n.same_home_as(exclude))
        )
        return heapq.nsmallest(k, candidates, key=lambda n: n.long_id ^ target)


@attrs.define
class ProtocolStats:
    """Counters for tests, netsim and (later) /metrics."""

    rpcs_sent: int = 0
    datagrams_dropped: int = 0
    rate_limited: int = 0
    wrong_source_replies: int = 0
    refused_stores: int = 0
    proofs_ok: int = 0
    proofs_failed: int = 0


class GpunetProtocol(KademliaProtocol):  # type: ignore[misc]
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
        self.router = GpunetRoutingTable(self, ksize, source_node)
        self.require_proofs = require_proofs
        self.wire_id = CLIENT_ID if client_mode else bytes(source_node.id)
        self.client_mode = client_mode
        self._wait_timeout = wait_timeout
        self.record_store = storage
        self.identity = identity
        self.network_id = network_id
        self.clock = clock
        self.rate_limiter = rate_limiter if rate_limiter is not None else SourceRateLimiter()
        self.verified = VerifiedContacts()
        self.self_addresses = SelfAddresses()
        self.own_record: SignedRecord | None = None
        self.stats = ProtocolStats()
        self.tasks_in_flight = 0
        self._outstanding: dict[bytes, tuple[asyncio.Future[Any], asyncio.TimerHandle, Address]]
        self._outstanding = {}
        self._verifying: dict[tuple[bytes, str, int], asyncio.Future[bool]] = {}
        self._challenge_slots = asyncio.Semaphore(MAX_CHALLENGES_IN_FLIGHT)
        self._background: set[asyncio.Future[Any]] = set()
        self._exclude = frozenset({bytes(source_node.id), CLIENT_ID})
        self._unresponsive: OrderedDict[Address, float] = OrderedDict()
        self._failures: OrderedDict[bytes, int] = OrderedDict()

    # compatibility with the counters tests and tools read
    @property
    def dropped_datagrams(self) -> int:
        return self.stats.datagrams_dropped

    @property
    def refused_stores(self) -> int:
        return self.stats.refused_stores

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.self_addresses.bound = (str(sockname[0]), int(sockname[1]))

    # --- datagram intake -------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        source: Address = (addr[0], addr[1])
        # Replies to our own requests are not limited (we asked; their number is bounded by
        # ours). Everything else — requests, unsolicited "replies" — spends the source's tokens.
        solicited = data[:1] == b"\x01" and data[1:21] in self._outstanding
        if not solicited and not self.rate_limiter.allow(source, self._monotonic()):
            self.stats.rate_limited += 1
            return
        if not 22 <= len(data) <= MAX_ANSWER_DATAGRAM or (
            data[:1] == b"\x00" and len(data) > MAX_DATAGRAM
        ):
            self.stats.datagrams_dropped += 1
            return
        if self.tasks_in_flight >= MAX_TASKS_IN_FLIGHT:
            self.stats.datagrams_dropped += 1
            return
        self.tasks_in_flight += 1
        task = asyncio.ensure_future(self._handle_datagram(data, source))
        task.add_done_callback(self._task_done)

    def _task_done(self, _task: asyncio.Future[None]) -> None:
        self.tasks_in_flight -= 1

    async def _handle_datagram(self, data: bytes, addr: Address) -> None:
        try:
            msg_id = data[1:21]
            payload = msgpack.unpackb(data[21:], raw=False)
            if data[:1] == b"\x00":
                await self._accept_request(msg_id, payload, addr)
            elif data[:1] == b"\x01":
                self._accept_response(msg_id, payload, addr)
            else:
                self.stats.datagrams_dropped += 1
        except Exception as exc:  # a stranger's garbage is an expected event
            self.stats.datagrams_dropped += 1
            log.debug("dropped datagram from %s: %r", addr, exc)

    async def _accept_request(self, msg_id: bytes, data: Any, address: Address) -> None:
        if not (isinstance(data, list) and len(data) == 2):
            raise ValueError("request is not [name, args]")
        name, args = data
        if not (isinstance(name, str) and name in RPC_NAMES and isinstance(args, list)):
            raise ValueError("unknown rpc or bad arguments")
        handler = getattr(self, f"rpc_{name}")
        response = handler(address, *args)  # wrong arity: TypeError, dropped by the caller
        if inspect.isawaitable(response):
            response = await response
        reply = b"\x01" + msg_id + msgpack.packb(response, use_bin_type=True)
        if len(reply) > MAX_ANSWER_DATAGRAM:
            raise ValueError("answer too large")
        self.transport.sendto(reply, address)

    def _accept_response(self, msg_id: bytes, data: Any, address: Address) -> None:
        entry = self._outstanding.get(msg_id)
        if entry is None:
            return
        future, timer, expected = entry
        if (address[0], address[1]) != expected:
            self.stats.wrong_source_replies += 1
            return  # the genuine answer may still come; the timer still runs
        del self._outstanding[msg_id]
        timer.cancel()
        if not future.done():
            future.set_result((True, data))

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def _call(self, address: Address, name: str, *args: Any) -> asyncio.Future[Any]:
        """Send request *name* to *address*; the future gives (answered, answer)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        payload = msgpack.packb([name, list(args)], use_bin_type=True)
        if len(payload) > MAX_REQUEST_PAYLOAD:
            future.set_result((False, None))
            return future
        msg_id = os.urandom(20)
        timer = loop.call_later(self._wait_timeout, self._timeout, msg_id)
        self._outstanding[msg_id] = (future, timer, (address[0], address[1]))
        self.stats.rpcs_sent += 1
        self.transport.sendto(b"\x00" + msg_id + payload, address)
        return future

    def _monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def _spawn(self, coro: Coroutine[Any, Any, Any], bucket: set[asyncio.Future[Any]]) -> None:
        task = asyncio.ensure_future(coro)
        bucket.add(task)
        task.add_done_callback(bucket.discard)

    # --- RPC handlers (everything arriving here is hostile) -------------------------------

    def _contact(self, sender: Address, nodeid: object) -> Node:
        if not valid_id(nodeid):
            raise ValueError("bad node id")
        return Node(nodeid, sender[0], sender[1])

    def rpc_ping(self, sender: Address, nodeid: object) -> bytes:
        self.welcome_if_new(self._contact(sender, nodeid))
        return bytes(self.wire_id)

    def rpc_store(self, sender: Address, nodeid: object, key: object, value: object) -> bool:
        source = self._contact(sender, nodeid)
        if not valid_id(key) or self.client_mode:
            return False
        self.welcome_if_new(source)
        assert isinstance(key, bytes)
        accepted, reason = self.record_store.offer(key, value, now=self.clock())
        if not accepted:
            self.stats.refused_stores += 1
            metrics.count_refused_record(reason)
            log.debug("refused store from %s: %s", sender, reason)
        return accepted

    def rpc_find_node(
        self, sender: Address, nodeid: object, key: object
    ) -> list[tuple[bytes, str, int]]:
        source = self._contact(sender, nodeid)
        if not valid_id(key):
            raise ValueError("bad key")
        self.welcome_if_new(source)
        neighbors = self.router.find_neighbors(Node(key), exclude=source)
        return [tuple(n) for n in neighbors]

    def rpc_find_value(self, sender: Address, nodeid: object, key: object) -> Any:
        source = self._contact(sender, nodeid)
        if not valid_id(key):
            raise ValueError("bad key")
        assert isinstance(key, bytes)
        blobs = self.record_store.answer(key, now=self.clock())
        if not blobs:
            return self.rpc_find_node(sender, nodeid, key)
        self.welcome_if_new(source)
        return {"value": blobs}

    def rpc_prove(self, sender: Address, nodeid: object, nonce: object) -> list[object] | None:
        """Answer a challenge. The challenger is not welcomed here: a proof costs a signature,
        and welcoming would make every challenge trigger a counter-challenge."""
        if self.identity is None or self.client_mode:
            return None
        return answer_challenge(self.identity, nonce, sender, self.network_id or b"")

    def rpc_record(self, sender: Address, nodeid: object) -> bytes | None:
        return None if self.own_record is None else self.own_record.blob

    # --- outgoing calls, answers shape-checked --------------------------------------------

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self._call(address, "find_node", self.wire_id, node_to_find.id)
        clean = self._drop_unresponsive(sanitize_nodes_answer(result, exclude=self._exclude))
        return self.handle_call_response(clean, node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self._call(address, "find_value", self.wire_id, node_to_find.id)
        clean = self._drop_unresponsive(sanitize_value_answer(result, exclude=self._exclude))
        return self.handle_call_response(clean, node_to_ask)

    async def call_ping(self, node_to_ask: Node) -> Any:
        address = (node_to_ask.ip, node_to_ask.port)
        ok, answer = await self._call(address, "ping", self.wire_id)
        result = (True, answer) if ok and answer == node_to_ask.id else (False, None)
        return self.handle_call_response(result, node_to_ask)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> Any:
        """Store at a proven node only; (answered, accepted)."""
        if not await self.verify(node_to_ask):
            return False, False
        address = (node_to_ask.ip, node_to_ask.port)
        ok, answer = await self._call(address, "store", self.wire_id, key, value)
        return self.handle_call_response((ok, answer is True), node_to_ask)

    async def call_record(self, node_to_ask: Node) -> Any:
        """The node's own record blob, unverified (the caller checks it against the id)."""
        address = (node_to_ask.ip, node_to_ask.port)
        ok, answer = await self._call(address, "record", self.wire_id)
        return (True, answer) if ok and isinstance(answer, bytes) else (False, None)

    def handle_call_response(self, result: Any, node: Node) -> Any:
        if result[0]:
            self._failures.pop(node.id, None)
            self.welcome_if_new(node)
            return result
        failures = self._failures.pop(node.id, 0) + 1
        if failures < FAILURES_TO_EVICT:
            self._failures[node.id] = failures
            while len(self._failures) > MAX_UNRESPONSIVE:
                self._failures.popitem(last=False)
            return result
        self._mark_unresponsive((node.ip, node.port))
        self.router.remove_contact(node)
        return result

    async def _call_patiently(self, address: Address, name: str, *args: Any) -> Any:
        """`_call`, sent again on silence (not on a bad answer), up to `ATTEMPTS` times."""
        result: Any = (False, None)
        for _ in range(ATTEMPTS):
            result = await self._call(address, name, *args)
            if result[0]:
                break
        return result

    def _mark_unresponsive(self, addr: Address) -> None:
        self._unresponsive[addr] = self._monotonic() + UNRESPONSIVE_TTL_S
        self._unresponsive.move_to_end(addr)
        while len(self._unresponsive) > MAX_UNRESPONSIVE:
            self._unresponsive.popitem(last=False)

    def is_unresponsive(self, addr: Address) -> bool:
        until = self._unresponsive.get(addr)
        if until is None:
            return False
        if until < self._monotonic():
            del self._unresponsive[addr]
            return False
        return True

    def _drop_unresponsive(self, result: Any) -> Any:
        ok, answer = result
        if ok and isinstance(answer, list) and self._unresponsive:
            return True, [c for c in answer if not self.is_unresponsive((c[1], c[2]))]
        return result

    async def ping_address(self, address: Address) -> bytes | None:
        """The id a node at *address* claims (bootstrap: we know the address, not the id)."""
        ok, answer = await self._call_patiently(address, "ping", self.wire_id)
        return answer if ok and valid_id(answer) and answer not in self._exclude else None

    # --- admission: proof first, then the routing table ------------------------------------

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
            ok, answer = await self._call_patiently(addr, "prove", self.wire_id, nonce)
        result = (
            check_proof(answer, node_id=node.id, nonce=nonce, network_id=self.network_id or b"")
            if ok
            else ProofResult(False, "no answer")
        )
        if (
            result.ok
            and result.observed is not None
            and not self.self_addresses.accepts(result.observed, node.id)
        ):
            result = ProofResult(False, f"proof names {result.observed}, not our address")
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
        for future, timer, _addr in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        for task in [*self._background, *self._verifying.values()]:
            task.cancel()
