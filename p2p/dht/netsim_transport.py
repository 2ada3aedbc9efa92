"""An in-process datagram network for the real kademlia + gpunet protocol code: no sockets, and
time is virtual, so thousands of nodes run on a laptop and a 3 s RPC timeout costs no waiting.

- `VirtualTimeLoop` is asyncio's own selector loop with a selector that never blocks: when the
  loop would wait for `timeout` seconds, the virtual clock jumps by `timeout` instead. Every
  `call_later`, `asyncio.sleep` and RPC timeout in kademlia/rpcudp/gpunet code runs unchanged, in
  order, instantly. (Nothing here does real I/O; a real file descriptor would never be ready.)
- `SimNetwork` delivers `sendto` datagrams to the protocol registered at the destination address
  after a random latency, or drops them (loss, dead or unknown destination). Source addresses
  are the sender's registered address, so address-bound checks (id proofs, reply source) are
  exercised as on a real network.

Used by tools/netsim.py and by tests that need many nodes or a controllable clock.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Mapping
from typing import Any

import attrs

Address = tuple[str, int]


class _NeverReadySelector(selectors.BaseSelector):
    """Registers file objects (the loop's self-pipe) but reports none ready; advances time."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self.now = 0.0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("virtual time: nothing scheduled and nothing to wait for")
        self.now += max(0.0, timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _NeverReadySelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


@attrs.define
class LinkModel:
    """One-way latency drawn uniformly from [min, max] seconds; independent loss."""

    latency_min: float = 0.010
    latency_max: float = 0.100
    loss: float = 0.0


@attrs.define
class SimTransport:
    network: SimNetwork
    address: Address
    closed: bool = False

    def sendto(self, data: bytes, addr: Any) -> None:
        if not self.closed:
            self.network.send(self.address, bytes(data), (addr[0], addr[1]))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.address if name == "sockname" else default

    def close(self) -> None:
        self.closed = True
        self.network.detach(self.address)


@attrs.define
class SimNetwork:
    loop: asyncio.AbstractEventLoop
    links: LinkModel = attrs.field(factory=LinkModel)
    rng: random.Random = attrs.field(factory=random.Random)
    endpoints: dict[Address, asyncio.DatagramProtocol] = attrs.field(factory=dict)
    dead: set[Address] = attrs.field(factory=set)
    sent: int = 0
    delivered: int = 0
    dropped: int = 0

    def attach(self, protocol: asyncio.DatagramProtocol, address: Address) -> SimTransport:
        if address in self.endpoints:
            raise ValueError(f"address in use: {address}")
        transport = SimTransport(self, address)
        self.endpoints[address] = protocol
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport

    def detach(self, address: Address) -> None:
        self.endpoints.pop(address, None)

    def send(self, src: Address, data: bytes, dst: Address) -> None:
        self.sent += 1
        if src in self.dead or self.rng.random() < self.links.loss:
            self.dropped += 1
            return
        delay = self.rng.uniform(self.links.latency_min, self.links.latency_max)
        self.loop.call_later(delay, self._deliver, src, data, dst)

    def _deliver(self, src: Address, data: bytes, dst: Address) -> None:
        protocol = self.endpoints.get(dst)
        if protocol is None or dst in self.dead:
            self.dropped += 1
            return
        self.delivered += 1
        protocol.datagram_received(data, src)
