"""The datagram layer of the DHT protocol: intake of what strangers send, requests we send.

`DatagramRpc` replaces rpcudp's datagram handling (it sits before `KademliaProtocol` in
`GpunetProtocol`'s bases, so its methods win):
- **Intake.** Every datagram passes a per-source token bucket (`p2p.dht.rate_limit`), a size
  check and a bound on tasks in flight, and is parsed inside a try block: a stranger's garbage is
  an expected event, never a crash (FACTS: trio-asyncio re-raises unhandled asyncio errors into
  the nursery). Only the RPCs in `RPC_NAMES` are callable; upstream calls any `rpc_*` attribute.
  An answer over `MAX_ANSWER_DATAGRAM` is not sent.
- **No amplifier.** An answer to a source that has not proven it receives at its address is at
  most `AMPLIFICATION_FACTOR` × the request (`p2p.dht.address_cookies`): the RPCs in
  `SIZED_RPCS` take an optional trailing cookie and get `answer_limit` from here, and any other
  answer over the budget is not sent. The source is proven by a valid cookie or by being a
  contact that answered our challenge from that address (`_source_proven`).
- **Requests.** `request` sends one, not rpcudp's `__getattr__` magic, and a reply is taken only
  from the address the request went to (upstream matches by message id alone, so anyone who sees
  or guesses an id could answer). `_timeout` and `_accept_response` skip futures already done: a
  trio-side cancellation cancels the future, and upstream's timeout would later call
  `set_result` on it (InvalidStateError, crash). A `SIZED_RPCS` request carries the cookie that
  address gave us, and when the answer is a small form (`p2p.dht.answer_budget`) it is sent once
  more with the fresh cookie; callers see the ordinary answer shape either way.

Wire format (rpcudp's, kept for compatibility): `0x00` request or `0x01` reply, a 20-byte
message id, then msgpack — `[name, [args...]]` for a request, the answer for a reply.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack

from p2p.dht.address_cookies import (
    AMPLIFICATION_FACTOR,
    AddressCookies,
    CookieJar,
    CookieStats,
)
from p2p.dht.answer_budget import answer_budget, unwrap_small_answer
from p2p.dht.rate_limit import SourceRateLimiter
from p2p.dht.stats import ProtocolStats

log = logging.getLogger(__name__)

MAX_DATAGRAM = 16 * 1024  # requests are <= 8 KiB (rpcudp's own bound); answers are ours
MAX_ANSWER_DATAGRAM = 64 * 1024
MAX_REQUEST_PAYLOAD = 8192  # rpcudp's bound on an outgoing request, kept for old peers
MAX_TASKS_IN_FLIGHT = 256
# A challenge or a bootstrap ping is sent up to ATTEMPTS times before silence counts (UDP loses
# datagrams; a lost proof would keep a node out for identity_proof.FAILED_TTL_S).
ATTEMPTS = 3
RPC_NAMES = frozenset({"ping", "store", "find_node", "find_value", "prove", "record"})
# RPCs whose answer can outgrow 3× the request, with their number of arguments before the
# optional cookie. The others (ping, store, prove) answer a few dozen bytes.
SIZED_RPCS = {"find_node": 2, "find_value": 2, "record": 1}

Address = tuple[str, int]
Outstanding = tuple[asyncio.Future[Any], asyncio.TimerHandle, Address]

REQUEST = b"\x00"
REPLY = b"\x01"


class DatagramRpc:
    """Datagrams in (bounded, parsed defensively, dispatched to `rpc_*`) and requests out."""

    transport: Any
    stats: ProtocolStats
    rate_limiter: SourceRateLimiter
    tasks_in_flight: int
    _wait_timeout: float
    _outstanding: dict[bytes, Outstanding]
    cookies: AddressCookies
    cookie_jar: CookieJar
    cookie_stats: CookieStats

    def _init_datagrams(self, *, wait_timeout: float, rate_limiter: SourceRateLimiter) -> None:
        self._wait_timeout = wait_timeout
        self.rate_limiter = rate_limiter
        self.stats = ProtocolStats()
        self.tasks_in_flight = 0
        self._outstanding = {}
        self.cookies = AddressCookies()
        self.cookie_jar = CookieJar()
        self.cookie_stats = CookieStats()
        # Told the host of every request sent (p2p/reach/strangers.py), on the loop's thread.
        self.on_request_sent: Callable[[str], None] | None = None

    def _source_proven(self, source: Address) -> bool:
        """Has *source* shown, other than by a cookie, that it receives at its address?"""
        return False

    def _issue_cookie(self, source: Address) -> bytes:
        return self.cookies.issue(source, now=self._monotonic())

    # compatibility with the counters tests and tools read
    @property
    def dropped_datagrams(self) -> int:
        return self.stats.datagrams_dropped

    # --- intake ----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        source: Address = (addr[0], addr[1])
        # Replies to our own requests are not limited (we asked; their number is bounded by
        # ours). Everything else — requests, unsolicited "replies" — spends the source's tokens.
        solicited = data[:1] == REPLY and data[1:21] in self._outstanding
        if not solicited and not self.rate_limiter.allow(source, self._monotonic()):
            self.stats.rate_limited += 1
            return
        if not 22 <= len(data) <= MAX_ANSWER_DATAGRAM or (
            data[:1] == REQUEST and len(data) > MAX_DATAGRAM
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
            if data[:1] == REQUEST:
                await self._accept_request(msg_id, payload, addr, len(data))
            elif data[:1] == REPLY:
                self._accept_response(msg_id, payload, addr)
            else:
                self.stats.datagrams_dropped += 1
        except Exception as exc:  # a stranger's garbage is an expected event
            self.stats.datagrams_dropped += 1
            log.debug("dropped datagram from %s: %r", addr, exc)

    async def _accept_request(
        self, msg_id: bytes, data: Any, address: Address, request_bytes: int
    ) -> None:
        if not (isinstance(data, list) and len(data) == 2):
            raise ValueError("request is not [name, args]")
        name, args = data
        if not (isinstance(name, str) and name in RPC_NAMES and isinstance(args, list)):
            raise ValueError("unknown rpc or bad arguments")
        handler = getattr(self, f"rpc_{name}")
        proven = self._source_proven(address)
        if name in SIZED_RPCS:
            if len(args) == SIZED_RPCS[name] + 1:
                cookie = args.pop()
                proven = proven or self.cookies.check(cookie, address, now=self._monotonic())
            limit = None if proven else answer_budget(request_bytes)
            response = handler(address, *args, answer_limit=limit)
        else:
            response = handler(address, *args)  # wrong arity: TypeError, dropped by the caller
        if inspect.isawaitable(response):
            response = await response
        reply = REPLY + msg_id + msgpack.packb(response, use_bin_type=True)
        if len(reply) > MAX_ANSWER_DATAGRAM:
            raise ValueError("answer too large")
        if not proven and len(reply) > AMPLIFICATION_FACTOR * request_bytes:
            self.cookie_stats.refused_answers += 1  # the class rule, whatever the RPC
            raise ValueError("answer over the unproven source's budget")
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

    # --- requests --------------------------------------------------------------------------

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def request(self, address: Address, name: str, *args: Any) -> asyncio.Future[Any]:
        """Send request *name* to *address*; the future gives (answered, answer).

        For `SIZED_RPCS` the cookie *address* gave us goes along, and a small answer costs one
        more exchange with the fresh cookie (at most one: a second small answer is used as is)."""
        if name not in SIZED_RPCS:
            return self._request_once(address, name, args)
        return asyncio.ensure_future(self._request_with_cookie(address, name, args))

    async def _request_with_cookie(self, address: Address, name: str, args: tuple[Any, ...]) -> Any:
        address = (address[0], address[1])
        cookie = self.cookie_jar.get(address, now=self._monotonic())
        first = args if cookie is None else (*args, cookie)
        result = await self._request_once(address, name, first)
        fresh, unwrapped = self._take_cookie(address, result)
        if fresh is None:
            return result
        self.cookie_stats.cookie_retries += 1
        result = await self._request_once(address, name, (*args, fresh))
        fresh, unwrapped = self._take_cookie(address, result)
        return result if fresh is None else (True, unwrapped)

    def _take_cookie(self, address: Address, result: Any) -> tuple[bytes | None, object]:
        """A small answer's cookie (kept for *address*) and its ordinary shape."""
        ok, answer = result
        if not ok:
            return None, answer
        fresh, unwrapped = unwrap_small_answer(answer)
        if fresh is not None:
            self.cookie_jar.put(address, fresh, now=self._monotonic())
        return fresh, unwrapped

    def _request_once(
        self, address: Address, name: str, args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
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
        if self.on_request_sent is not None:
            self.on_request_sent(str(address[0]))
        self.transport.sendto(REQUEST + msg_id + payload, address)
        return future

    async def request_patiently(self, address: Address, name: str, *args: Any) -> Any:
        """`request`, sent again on silence (not on a bad answer), up to `ATTEMPTS` times."""
        result: Any = (False, None)
        for _ in range(ATTEMPTS):
            result = await self.request(address, name, *args)
            if result[0]:
                break
        return result

    def _cancel_requests(self) -> None:
        for future, timer, _addr in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()

    def _monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def _spawn(self, coro: Coroutine[Any, Any, Any], bucket: set[asyncio.Future[Any]]) -> None:
        task = asyncio.ensure_future(coro)
        bucket.add(task)
        task.add_done_callback(bucket.discard)
