"""Port mapping on the home router (UPnP-IGD through the `miniupnpc` library): a volunteer
behind a router that speaks UPnP becomes dialable without configuring anything. The mapping
record (`PortMapping`) and `MappingClaim` are shared with NAT-PMP (`natpmp_client.py`);
`mapping_race.py` runs both and takes whichever grants first.

`hold_upnp_mappings` discovers the router, reads its external address, maps the node's UDP
(DHT) and TCP (session) ports for a lease, renews the lease well before it ends, and removes
both mappings when it stops — also when it is cancelled, in a shielded cleanup with a deadline.
What it holds is reported through a callback (`on_change`), so the reachability state publishes
the mapped address; `None` means "nothing mapped" (no router answered, or a mapping was lost).

miniupnpc's calls block (SSDP discovery, SOAP over HTTP), so each runs in a worker thread under
a deadline; an abandoned call finishes on its own thread while the next one waits its turn on
the client's lock. The router is a network input like any other: its answers are checked
(an external address that is no IPv4 address, a port out of range) and a failing or slow
router costs a log line, never the node.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 3600
DISCOVER_MS = 2000  # SSDP: how long to wait for routers to answer the multicast search
CALL_TIMEOUT_S = 10.0  # one SOAP call to the router (miniupnpc's own HTTP timeouts are longer)
CLEANUP_TIMEOUT_S = 5.0  # removing the mappings at shutdown, both protocols together
REDISCOVER_S = 600.0  # no router, or a lost mapping: look again this much later
RENEW_FRACTION = 0.5  # renew when this much of the lease has passed
MIN_RENEW_S = 1.0
ALTERNATIVE_PORTS = 4  # random external ports tried when the node's own is taken
DESCRIPTION = "gpunet node"
UPNP = "UPnP"  # the protocol's name in logs and `MappingClaim`
# UPnP error texts miniupnpc raises with (strupnperror), and what they make us do.
CONFLICT = "ConflictInMappingEntry"
PERMANENT_ONLY = "OnlyPermanentLeasesSupported"


class PortMappingError(Exception):
    """The router refused or failed a call; the message is the router's error text."""


@attrs.frozen
class PortMapping:
    """What the router maps for this node: its external address and the external ports that
    lead to the node's UDP (DHT) and TCP (session) ports."""

    external_ip: str
    udp_port: int
    tcp_port: int
    lease_s: int  # 0: the router only grants permanent mappings (still removed at shutdown)
    igd: str = ""  # the router's control URL, for logs

    @property
    def session_address(self) -> str:
        return f"{self.external_ip}:{self.tcp_port}"

    @property
    def dht_address(self) -> str:
        return f"{self.external_ip}:{self.udp_port}"


@attrs.define
class MappingClaim:
    """Which protocol maps the node's ports: the first to take the claim, right before its
    first request to map. The other keeps off the router: on many routers (miniupnpd) both
    protocols' mappings of one port are one rule, and removing one would remove the other."""

    holder: str | None = None

    def take(self, name: str) -> bool:
        if self.holder in (None, name):
            self.holder = name
            return True
        return False

    def release(self, name: str) -> None:
        if self.holder == name:
            self.holder = None


def renew_after(lease_s: int, permanent_check_s: float = REDISCOVER_S) -> float:
    """Seconds until a mapping of *lease_s* is renewed (a permanent one is re-checked now and
    then: routers reboot and forget)."""
    if lease_s <= 0:
        return permanent_check_s
    return max(MIN_RENEW_S, lease_s * RENEW_FRACTION)


def checked_external_ip(text: Any) -> str:
    """The router's answer for its external address, if it is a usable IPv4 address."""
    try:
        addr = ipaddress.IPv4Address(str(text))
    except ValueError:
        raise PortMappingError(
            f"the router reports no usable external address ({text!r:.40})"
        ) from None
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
        raise PortMappingError(f"the router reports an unusable external address ({addr})")
    return str(addr)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Igd(Protocol):
    """The blocking calls to one router (run in worker threads)."""

    control_url: str
    lan_address: str

    def external_ip(self) -> str: ...

    def add(
        self, proto: str, external: int, internal_host: str, internal: int, lease_s: int
    ) -> None: ...

    def delete(self, proto: str, external: int) -> None: ...


class MiniupnpcIgd:
    """One router found by miniupnpc's SSDP discovery. A lock serialises the calls: an
    abandoned call (its deadline passed) still owns the library object until it returns."""

    def __init__(self, upnp: Any, control_url: str) -> None:
        self._upnp = upnp
        self._lock = threading.Lock()
        self.control_url = control_url
        self.lan_address = str(upnp.lanaddr)

    @classmethod
    def discover(cls, delay_ms: int = DISCOVER_MS) -> MiniupnpcIgd | None:
        import miniupnpc

        upnp = miniupnpc.UPnP()
        upnp.discoverdelay = delay_ms
        try:
            found = upnp.discover()
        except Exception as exc:  # with no answer at all it raises, oddly, Exception("Success")
            log.debug("UPnP discovery: %s", exc)
            return None
        if found <= 0:
            return None
        try:
            url = upnp.selectigd()
        except Exception as exc:  # miniupnpc raises plain Exception("No UPnP device...")
            log.debug("UPnP devices answered, none is a usable IGD: %s", exc)
            return None
        return cls(upnp, str(url))

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            try:
                return fn(*args)
            except Exception as exc:  # the library's only error type
                raise PortMappingError(str(exc)[:200]) from None

    def external_ip(self) -> str:
        return str(self._call(self._upnp.externalipaddress))

    def add(
        self, proto: str, external: int, internal_host: str, internal: int, lease_s: int
    ) -> None:
        ok = self._call(
            self._upnp.addportmapping,
            external,
            proto,
            internal_host,
            internal,
            DESCRIPTION,
            "",
            lease_s,
        )
        if ok is False:
            raise PortMappingError("the router refused the mapping")

    def delete(self, proto: str, external: int) -> None:
        self._call(self._upnp.deleteportmapping, external, proto)


Discover = Callable[[], Igd | None]
OnChange = Callable[[PortMapping | None], None]


async def _in_thread(fn: Callable[..., Any], *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


async def _map_one(
    igd: Igd, proto: str, internal_host: str, port: int, lease_s: int, first_choice: int
) -> tuple[int, int]:
    """Map *proto* *port*; the external port and the lease granted. The node's own port first,
    then a few random ones when another host holds it."""
    candidates = [first_choice] + [
        1024 + secrets.randbelow(64511) for _ in range(ALTERNATIVE_PORTS)
    ]
    last: PortMappingError | None = None
    for external in candidates:
        try:
            await _in_thread(igd.add, proto, external, internal_host, port, lease_s)
            return external, lease_s
        except PortMappingError as exc:
            last = exc
            if PERMANENT_ONLY in str(exc) and lease_s:
                lease_s = 0
                try:
                    await _in_thread(igd.add, proto, external, internal_host, port, 0)
                    return external, 0
                except PortMappingError as again:
                    last = again
            if CONFLICT not in str(last):
                break
    raise PortMappingError(f"{proto} port {port}: {last}")


async def _map_both(
    igd: Igd,
    internal_host: str,
    udp_port: int,
    tcp_port: int,
    lease_s: int,
    previous: PortMapping | None,
) -> PortMapping:
    external_ip = checked_external_ip(await _in_thread(igd.external_ip))
    udp, udp_lease = await _map_one(
        igd, "UDP", internal_host, udp_port, lease_s, previous.udp_port if previous else udp_port
    )
    try:
        tcp, tcp_lease = await _map_one(
            igd,
            "TCP",
            internal_host,
            tcp_port,
            lease_s,
            previous.tcp_port if previous else tcp_port,
        )
    except (PortMappingError, trio.TooSlowError):
        if previous is None:  # not half a mapping left behind on the router
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(CLEANUP_TIMEOUT_S),
                contextlib.suppress(PortMappingError, trio.TooSlowError),
            ):
                await _in_thread(igd.delete, "UDP", udp, timeout=CLEANUP_TIMEOUT_S)
        raise
    return PortMapping(external_ip, udp, tcp, min(udp_lease, tcp_lease), igd.control_url)


async def _remove(igd: Igd, mapping: PortMapping) -> None:
    """Delete both mappings, shielded from cancellation and bounded in time."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT_S):
        for proto, port in (("UDP", mapping.udp_port), ("TCP", mapping.tcp_port)):
            try:
                await _in_thread(igd.delete, proto, port, timeout=CLEANUP_TIMEOUT_S)
            except (PortMappingError, trio.TooSlowError) as exc:
                log.debug("port mapping: removing %s %d: %s", proto, port, exc)
        log.info(
            "port mapping: removed %s (UDP %d, TCP %d)",
            mapping.external_ip,
            mapping.udp_port,
            mapping.tcp_port,
        )


async def hold_upnp_mappings(
    udp_port: int,
    tcp_port: int,
    *,
    on_change: OnChange = lambda _mapping: None,
    internal_host: str | None = None,
    lease_s: int = DEFAULT_LEASE_S,
    discover: Discover = MiniupnpcIgd.discover,
    rediscover_s: float = REDISCOVER_S,
    claim: MappingClaim | None = None,
    task_status: trio.TaskStatus[PortMapping | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Map *udp_port* and *tcp_port* on the home router and hold the mappings until cancelled.

    *internal_host*: the node's bind address when it is a specific one (otherwise the address
    the router is reached from). *on_change* gets the mapping at each grant and renewal, and
    None when it is lost; `task_status.started` reports the first outcome (a mapping, or None:
    no router, or it refused) so that a caller may wait for it. With *claim*, the router is
    asked only while no other protocol holds it (looked at again after *rediscover_s*)."""
    if is_loopback(internal_host):
        log.debug("port mapping: off, the node listens on loopback only")
        task_status.started(None)
        return
    report: trio.TaskStatus[PortMapping | None] | None = task_status
    told_no_router = False
    while True:
        try:
            igd = await _in_thread(discover, timeout=DISCOVER_MS / 1000 + CALL_TIMEOUT_S)
            if igd is None:
                if not told_no_router:
                    log.info(
                        "port mapping: no UPnP-IGD router answered on the LAN in %.0f s; "
                        "nothing mapped by UPnP (looking again every %.0f min)",
                        DISCOVER_MS / 1000,
                        rediscover_s / 60,
                    )
                    told_no_router = True
            elif claim is not None and not claim.take(UPNP):
                log.info(
                    "port mapping: the router maps by %s already; UPnP stays off", claim.holder
                )
            else:
                wildcard = internal_host in (None, "", "0.0.0.0")
                host = igd.lan_address if wildcard or internal_host is None else internal_host
                try:
                    await _hold(igd, host, udp_port, tcp_port, lease_s, on_change, report)
                finally:
                    if claim is not None:
                        claim.release(UPNP)
                report = None  # _hold reported the first outcome
        except (PortMappingError, trio.TooSlowError) as exc:
            log.warning("port mapping: %s; nothing mapped", exc or "the router did not answer")
        if report is not None:
            report.started(None)
            report = None
        await trio.sleep(rediscover_s)


async def _hold(
    igd: Igd,
    internal_host: str,
    udp_port: int,
    tcp_port: int,
    lease_s: int,
    on_change: OnChange,
    report: trio.TaskStatus[PortMapping | None] | None,
) -> None:
    """Map, report, renew until a renewal fails; the mappings are removed on the way out,
    cancellation included."""
    mapping = await _map_both(igd, internal_host, udp_port, tcp_port, lease_s, None)
    try:
        log.info(
            "port mapping: %s maps %s UDP %d -> %s:%d and TCP %d -> %s:%d (lease %s)",
            igd.control_url,
            mapping.external_ip,
            mapping.udp_port,
            internal_host,
            udp_port,
            mapping.tcp_port,
            internal_host,
            tcp_port,
            f"{mapping.lease_s} s" if mapping.lease_s else "permanent",
        )
        on_change(mapping)
        if report is not None:
            report.started(mapping)
        while True:
            await trio.sleep(renew_after(mapping.lease_s))
            try:
                renewed = await _map_both(igd, internal_host, udp_port, tcp_port, lease_s, mapping)
            except (PortMappingError, trio.TooSlowError) as exc:
                log.warning("port mapping: renewing failed (%s); mapping lost", exc or "timeout")
                on_change(None)
                return
            if renewed != mapping:
                log.info(
                    "port mapping: now %s (UDP %d, TCP %d)",
                    renewed.external_ip,
                    renewed.udp_port,
                    renewed.tcp_port,
                )
            else:
                log.debug("port mapping: renewed for %d s", renewed.lease_s)
            mapping = renewed
            on_change(mapping)
    finally:
        await _remove(igd, mapping)
