"""NAT-PMP and PCP port mapping in trio (the protocols' rules are `natpmp.py` and `pcp.py`, one
`Dialect` each): the node asks its default gateway (from /proc/net/route, the one place that
reads it) on UDP port 5351 whether it speaks the protocol (NAT-PMP: its external address; PCP:
ANNOUNCE), maps its UDP (DHT) and TCP (session) ports, renews the lease at half its lifetime,
re-maps at once when the gateway's epoch says it restarted, and deletes both mappings when it
stops — also when cancelled, in a shielded cleanup with a deadline. Same contract as UPnP's
`hold_upnp_mappings` (port_mapping.py): `on_change` gets each grant and renewal (None once
lost), `task_status.started` the first outcome. PCP uses NAT-PMP's retransmission schedule
(250 ms doubling), not RFC 6887's 3 s first wait: on a LAN the gateway answers in
milliseconds, and a silent one must not hold up the node's start.

The socket is connected to the gateway, so the kernel drops datagrams from anyone else (RFC
6886 3.1: answers count only from the gateway), and a gateway that does not run NAT-PMP usually
answers with ICMP port unreachable: a refused connection ends the attempt at once rather than
after the whole retransmission schedule.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import attrs
import trio

from p2p.reach import natpmp, pcp
from p2p.reach.natpmp import Epoch, Mapped, NatPmpError, NatPmpRefused, NatPmpUnsupported
from p2p.reach.pcp import PcpError, PcpRefused, PcpUnsupported
from p2p.reach.port_mapping import (
    CLEANUP_TIMEOUT_S,
    DEFAULT_LEASE_S,
    REDISCOVER_S,
    MappingClaim,
    OnChange,
    PortMapping,
    PortMappingError,
    renew_after,
)

log = logging.getLogger(__name__)

NATPMP = "NAT-PMP"  # the protocols' names in logs and `MappingClaim`
PCP = "PCP"
ROUTE_TABLE = Path("/proc/net/route")
# Between renewals, the external address is asked for this often: a changed address or a
# restarted gateway (its epoch) is noticed within this, not half a lease later.
EPOCH_CHECK_S = 120.0
DELETE_TRIES = 3  # at shutdown: 1.75 s at most per mapping, within CLEANUP_TIMEOUT_S

T = TypeVar("T")
FindGateway = Callable[[], str | None]


def read_default_gateway() -> str | None:
    """The IPv4 default gateway of this machine's main routing table, or None."""
    try:
        return natpmp.default_gateway(ROUTE_TABLE.read_text())
    except OSError:
        return None


class NoNatPmp(Exception):
    """The gateway did not answer (silent, or ICMP port unreachable), or answered in another
    protocol version: it does not speak this dialect."""


class Gateway:
    """A UDP socket connected to the gateway's port 5351; one request at a time."""

    def __init__(self, sock: trio.socket.SocketType, address: str) -> None:
        self.sock = sock
        self.address = address
        self.epoch: Epoch | None = None
        self.restarted = False  # an answer's epoch said so (the holder reads and clears it)

    @classmethod
    async def open(
        cls, address: str, port: int = natpmp.PORT, local_host: str | None = None
    ) -> Gateway:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if local_host not in (None, "", "0.0.0.0"):
                await sock.bind((local_host, 0))  # the gateway maps the request's source address
            await sock.connect((address, port))
        except OSError:
            sock.close()
            raise
        return cls(sock, address)

    @property
    def local_ip(self) -> str:
        return str(self.sock.getsockname()[0])

    def close(self) -> None:
        self.sock.close()

    async def ask(
        self, request: bytes, read: Callable[[bytes], T], tries: int = natpmp.MAX_TRIES
    ) -> T:
        """Send *request* on the retransmission schedule until *read* accepts an answer;
        answers that are no valid answer to it are skipped (a refusal raises)."""
        for wait in natpmp.retry_waits(tries):
            try:
                await self.sock.send(request)
            except ConnectionRefusedError:
                raise NoNatPmp(f"{self.address} refuses port 5351") from None
            with trio.move_on_after(wait):
                while True:
                    try:
                        data = await self.sock.recv(natpmp.MAX_DATAGRAM)
                    except ConnectionRefusedError:
                        raise NoNatPmp(f"{self.address} refuses port 5351") from None
                    try:
                        answer = read(data)
                    except (NatPmpError, PcpError) as exc:
                        log.debug("port mapping: ignoring an answer from %s: %s", self.address, exc)
                        continue
                    except (NatPmpUnsupported, PcpUnsupported) as exc:
                        raise NoNatPmp(str(exc)) from None
                    self._saw_epoch(getattr(answer, "epoch", None))
                    return answer
        raise NoNatPmp(f"{self.address} did not answer")

    def _saw_epoch(self, seconds: int | None) -> None:
        if seconds is None:
            return
        now = trio.current_time()
        if self.epoch is not None and self.epoch.restarted(seconds, now):
            self.restarted = True
        self.epoch = Epoch(seconds, now)


class Dialect(Protocol):
    """What the holder asks of NAT-PMP and PCP alike."""

    name: str

    async def probe(self, gw: Gateway) -> str | None:
        """Raise NoNatPmp unless the gateway speaks it; its external address if it says."""
        ...

    async def map(
        self, gw: Gateway, proto: str, internal: int, external: int, lifetime_s: int
    ) -> Granted: ...

    async def delete(self, gw: Gateway, proto: str, internal: int) -> None: ...


@attrs.frozen
class Granted:
    external_port: int
    lifetime_s: int
    external_ip: str | None  # None: the dialect tells it apart (NAT-PMP's opcode 0)


class NatPmpDialect:
    name = NATPMP

    async def probe(self, gw: Gateway) -> str | None:
        found = await gw.ask(natpmp.external_address_request(), natpmp.read_external_address)
        return found.ip

    async def map(
        self, gw: Gateway, proto: str, internal: int, external: int, lifetime_s: int
    ) -> Granted:
        got: Mapped = await gw.ask(
            natpmp.map_request(proto, internal, external, lifetime_s),
            lambda data: natpmp.read_mapped(data, proto, internal),
        )
        return Granted(got.external_port, got.lifetime_s, None)

    async def delete(self, gw: Gateway, proto: str, internal: int) -> None:
        await gw.ask(
            natpmp.delete_request(proto, internal),
            lambda data: natpmp.read_mapped(data, proto, internal, deleting=True),
            tries=DELETE_TRIES,
        )


class PcpDialect:
    """PCP MAP (pcp.py); ANNOUNCE is its probe and its check between renewals (the epoch). One
    nonce per mapping for the holder's life: renewals and the deletion name it."""

    name = PCP

    def __init__(self) -> None:
        self.nonces: dict[tuple[str, int], bytes] = {}

    def _nonce(self, proto: str, internal: int) -> bytes:
        return self.nonces.setdefault((proto, internal), secrets.token_bytes(pcp.NONCE_SIZE))

    async def probe(self, gw: Gateway) -> str | None:
        await gw.ask(pcp.announce_request(gw.local_ip), pcp.read_announce)
        return None

    async def map(
        self, gw: Gateway, proto: str, internal: int, external: int, lifetime_s: int
    ) -> Granted:
        nonce = self._nonce(proto, internal)
        got = await gw.ask(
            pcp.map_request(
                proto, internal, external, lifetime_s, client_ip=gw.local_ip, nonce=nonce
            ),
            lambda data: pcp.read_map(data, proto, internal, nonce),
        )
        return Granted(got.external_port, got.lifetime_s, got.external_ip)

    async def delete(self, gw: Gateway, proto: str, internal: int) -> None:
        nonce = self._nonce(proto, internal)
        await gw.ask(
            pcp.map_request(proto, internal, 0, 0, client_ip=gw.local_ip, nonce=nonce),
            lambda data: pcp.read_map(data, proto, internal, nonce, deleting=True),
            tries=DELETE_TRIES,
        )


_FAILURES = (NoNatPmp, NatPmpRefused, PcpRefused, PortMappingError, OSError)


async def _map_both(
    gw: Gateway,
    dialect: Dialect,
    ports: tuple[int, int],
    lease_s: int,
    previous: PortMapping | None,
) -> PortMapping:
    udp_port, tcp_port = ports
    ip = await dialect.probe(gw)
    udp = await dialect.map(
        gw, "UDP", udp_port, previous.udp_port if previous else udp_port, lease_s
    )
    try:
        tcp = await dialect.map(
            gw, "TCP", tcp_port, previous.tcp_port if previous else tcp_port, lease_s
        )
        ip = ip or tcp.external_ip or udp.external_ip
        if ip is None:
            raise PortMappingError("the gateway named no external address")
    except _FAILURES:
        if previous is None:  # not half a mapping left behind on the gateway
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(CLEANUP_TIMEOUT_S),
                contextlib.suppress(*_FAILURES),
            ):
                await dialect.delete(gw, "UDP", udp_port)
        raise
    lifetime = min(udp.lifetime_s, tcp.lifetime_s)
    url = f"{dialect.name.lower()}://{gw.address}"
    return PortMapping(ip, udp.external_port, tcp.external_port, lifetime, url)


async def _remove(
    gw: Gateway, dialect: Dialect, ports: tuple[int, int], mapping: PortMapping
) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT_S):
        for proto, port in zip(("UDP", "TCP"), ports, strict=True):
            try:
                await dialect.delete(gw, proto, port)
            except _FAILURES as exc:
                log.debug("%s: removing %s %d: %s", dialect.name, proto, port, exc)
        log.info(
            "port mapping: removed %s (UDP %d, TCP %d) by %s",
            mapping.external_ip,
            mapping.udp_port,
            mapping.tcp_port,
            dialect.name,
        )


async def hold_natpmp_mappings(
    udp_port: int,
    tcp_port: int,
    *,
    on_change: OnChange = lambda _mapping: None,
    internal_host: str | None = None,
    lease_s: int = DEFAULT_LEASE_S,
    find_gateway: FindGateway = read_default_gateway,
    gateway_port: int = natpmp.PORT,
    rediscover_s: float = REDISCOVER_S,
    epoch_check_s: float = EPOCH_CHECK_S,
    claim: MappingClaim | None = None,
    use_pcp: bool = False,
    task_status: trio.TaskStatus[PortMapping | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Map *udp_port* and *tcp_port* by NAT-PMP (by PCP with *use_pcp*: `hold_pcp_mappings`) and
    hold the mappings until cancelled (the contract of port_mapping.py's `hold_upnp_mappings`;
    *lease_s* 0 is not a lease here and counts as the default)."""
    report: trio.TaskStatus[PortMapping | None] | None = task_status
    lease_s = lease_s if lease_s > 0 else DEFAULT_LEASE_S
    dialect: Dialect = PcpDialect() if use_pcp else NatPmpDialect()
    told = False
    while True:
        address = find_gateway()
        gw: Gateway | None = None
        try:
            if address is None:
                raise NoNatPmp("no default gateway")
            gw = await Gateway.open(address, gateway_port, internal_host)
            await dialect.probe(gw)  # the gateway speaks it: only now claim the router
            if claim is not None and not claim.take(dialect.name):
                log.info(
                    "port mapping: the router maps by %s already; %s stays off",
                    claim.holder,
                    dialect.name,
                )
            else:
                try:
                    ports = (udp_port, tcp_port)
                    await _hold(gw, dialect, ports, lease_s, epoch_check_s, on_change, report)
                finally:
                    if claim is not None:
                        claim.release(dialect.name)
                report = None
        except NoNatPmp as exc:
            if not told:  # (PCP at debug: NAT-PMP's line says the same of port 5351)
                level = logging.DEBUG if use_pcp else logging.INFO
                log.log(level, "port mapping: no %s (%s)", dialect.name, exc)
                told = True
        except (NatPmpRefused, PcpRefused, PortMappingError, OSError) as exc:
            log.warning("port mapping: %s at %s: %s; nothing mapped", dialect.name, address, exc)
        finally:
            if gw is not None:
                gw.close()
        if report is not None:
            report.started(None)
            report = None
        await trio.sleep(rediscover_s)


hold_pcp_mappings = partial(hold_natpmp_mappings, use_pcp=True)


async def _hold(
    gw: Gateway,
    dialect: Dialect,
    ports: tuple[int, int],
    lease_s: int,
    epoch_check_s: float,
    on_change: OnChange,
    report: trio.TaskStatus[PortMapping | None] | None,
) -> None:
    """Map, report, renew (and re-map after a restart) until a renewal fails; the mappings are
    removed on the way out, cancellation included."""
    mapping = await _map_both(gw, dialect, ports, lease_s, None)
    gw.restarted = False
    try:
        log.info(
            "port mapping: %s at %s maps %s UDP %d -> %d and TCP %d -> %d (lease %d s)",
            dialect.name,
            gw.address,
            mapping.external_ip,
            mapping.udp_port,
            ports[0],
            mapping.tcp_port,
            ports[1],
            mapping.lease_s,
        )
        on_change(mapping)
        if report is not None:
            report.started(mapping)
        renew_at = trio.current_time() + renew_after(mapping.lease_s)
        while True:
            await trio.sleep(max(0.0, min(epoch_check_s, renew_at - trio.current_time())))
            try:
                if trio.current_time() < renew_at:
                    ip = await dialect.probe(gw)  # the cheap check between renewals
                    if ip in (None, mapping.external_ip) and not gw.restarted:
                        continue
                    log.info("port mapping: the gateway restarted or its address changed")
                renewed = await _map_both(gw, dialect, ports, lease_s, mapping)
            except _FAILURES as exc:
                log.warning("port mapping: %s renewal failed (%s); mapping lost", dialect.name, exc)
                on_change(None)
                return
            gw.restarted = False
            if renewed != mapping:
                log.info("port mapping: now %s (UDP %d, TCP %d)", *_ports(renewed))
            mapping = renewed
            renew_at = trio.current_time() + renew_after(mapping.lease_s)
            on_change(mapping)
    finally:
        await _remove(gw, dialect, ports, mapping)


def _ports(mapping: PortMapping) -> tuple[str, int, int]:
    return mapping.external_ip, mapping.udp_port, mapping.tcp_port
