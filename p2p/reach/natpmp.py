"""NAT-PMP (RFC 6886), sans-IO: the requests a node sends to its default gateway on UDP port
5351, strict readers of the gateway's answers, the retransmission schedule and the epoch rule.
`natpmp_client.py` is the trio code around it.

NAT-PMP is the port mapping protocol of Apple's AirPort and of many routers that also run
miniupnpd; it answers in milliseconds where UPnP's SSDP discovery takes seconds. Every field of
an answer is hostile input: an answer is read only if it has exactly the size its opcode has,
version 0 (another version: `NatPmpUnsupported`), the opcode of the request plus 128, and (for
a mapping) the internal port asked for; a result code other than success becomes a
`NatPmpRefused` with the code's name; an external address must be a usable IPv4 address, a
port 1..65535, a lifetime at most `MAX_LIFETIME_S`.

Wire formats (all big-endian):

    external address request   version=0 opcode=0                                  2 bytes
    its answer                 version opcode=128 result(16) epoch(32) ipv4(32)    12 bytes
    mapping request            version=0 opcode=1 UDP|2 TCP reserved(16)=0
                               internal(16) suggested external(16) lifetime(32)    12 bytes
    its answer                 version opcode=128+op result(16) epoch(32)
                               internal(16) external(16) lifetime(32)              16 bytes

A mapping with lifetime 0 and suggested external port 0 deletes it (RFC 6886 3.4).
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections.abc import Iterator

import attrs

PORT = 5351
VERSION = 0
OP_EXTERNAL = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
ANSWER_BIT = 128
OPCODES = {"UDP": OP_MAP_UDP, "TCP": OP_MAP_TCP}
EXTERNAL_ANSWER_SIZE = 12
MAP_ANSWER_SIZE = 16
# The answers have fixed sizes; a datagram larger than this is read no further.
MAX_DATAGRAM = 1100
# A lease longer than a day is not believed (a router that says "forever" is re-asked daily).
MAX_LIFETIME_S = 86400
# RFC 6886 3.1: 250 ms, doubling, nine tries (127.75 s in all). The node stops at six
# (15.75 s): it also asks by UPnP, and a gateway silent for 8 s does not speak NAT-PMP.
FIRST_WAIT_S = 0.25
MAX_TRIES = 6
RFC_MAX_TRIES = 9
# RFC 6886 3.6: an epoch that grew by less than 7/8 of the elapsed time, less 2 s of slack,
# means the gateway restarted (and lost its mappings).
EPOCH_SLACK_S = 2.0
RTF_UP, RTF_GATEWAY = 0x1, 0x2  # /proc/net/route's flags

RESULT_NAMES = {
    1: "unsupported version",
    2: "not authorized or refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}


class NatPmpError(Exception):
    """An answer that is not a valid NAT-PMP answer to our request (it is ignored)."""


class NatPmpUnsupported(Exception):
    """The gateway answered in another protocol version (a PCP-only gateway does): it does not
    speak NAT-PMP."""


class NatPmpRefused(Exception):
    """The gateway answered with a result code other than success."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"NAT-PMP result {code} ({RESULT_NAMES.get(code, 'unknown code')})")


@attrs.frozen
class ExternalAddress:
    epoch: int  # the gateway's seconds since its mappings were last reset
    ip: str


@attrs.frozen
class Mapped:
    epoch: int
    proto: str  # "UDP" or "TCP"
    internal_port: int
    external_port: int  # 0 with lifetime 0: the mapping is gone
    lifetime_s: int


def _check_port(port: int, name: str, *, zero: bool = False) -> None:
    if not (0 if zero else 1) <= port <= 65535:
        raise ValueError(f"{name} {port} is not a port")


def external_address_request() -> bytes:
    return struct.pack("!BB", VERSION, OP_EXTERNAL)


def map_request(proto: str, internal_port: int, external_port: int, lifetime_s: int) -> bytes:
    """Ask for *proto* (UDP/TCP) *internal_port* at *external_port* (a suggestion, the gateway
    may pick another) for *lifetime_s*; lifetime 0 with external port 0 deletes."""
    if proto not in OPCODES:
        raise ValueError(f"protocol {proto!r} is neither UDP nor TCP")
    _check_port(internal_port, "internal port")
    _check_port(external_port, "external port", zero=lifetime_s == 0)
    if not 0 <= lifetime_s <= 0xFFFFFFFF:
        raise ValueError(f"lifetime {lifetime_s} out of range")
    return struct.pack(
        "!BBHHHI", VERSION, OPCODES[proto], 0, internal_port, external_port, lifetime_s
    )


def delete_request(proto: str, internal_port: int) -> bytes:
    return map_request(proto, internal_port, 0, 0)


def _epoch_of(data: bytes, opcode: int, size: int) -> int:
    """The epoch of a successful answer to *opcode*, which must be *size* bytes long."""
    if len(data) < 4:
        raise NatPmpError(f"a {len(data)}-byte datagram is no NAT-PMP answer")
    version, op, result = struct.unpack_from("!BBH", data)
    if version != VERSION:
        raise NatPmpUnsupported(f"the gateway answers in protocol version {version}, not NAT-PMP")
    if op != opcode | ANSWER_BIT:
        raise NatPmpError(f"answer with opcode {op}, expected {opcode | ANSWER_BIT}")
    # A refusal may come short (RFC 6886 3.5: "unsupported version" answers carry 8 bytes);
    # a success must have the full size.
    if result != 0:
        raise NatPmpRefused(result)
    if len(data) != size:
        raise NatPmpError(f"answer of {len(data)} bytes, opcode {op} has {size}")
    return int(struct.unpack_from("!I", data, 4)[0])


def read_external_address(data: bytes) -> ExternalAddress:
    """The gateway's answer to `external_address_request`."""
    epoch = _epoch_of(data, OP_EXTERNAL, EXTERNAL_ANSWER_SIZE)
    ip = ipaddress.IPv4Address(data[8:12])
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
        # 0.0.0.0 is what a gateway without an external address yet says (RFC 6886 3.2)
        raise NatPmpError(f"the gateway reports an unusable external address ({ip})")
    return ExternalAddress(epoch, str(ip))


def read_mapped(data: bytes, proto: str, internal_port: int, *, deleting: bool = False) -> Mapped:
    """The gateway's answer to `map_request(proto, internal_port, ...)`: an answer about another
    port or protocol, a zero port or lifetime for a mapping (or a lifetime beyond
    `MAX_LIFETIME_S`, which is cut to it) is rejected or bounded here."""
    epoch = _epoch_of(data, OPCODES[proto], MAP_ANSWER_SIZE)
    internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    if internal != internal_port:
        raise NatPmpError(f"answer for internal port {internal}, asked for {internal_port}")
    if not deleting:
        if external == 0:
            raise NatPmpError("the gateway mapped external port 0")
        if lifetime == 0:
            raise NatPmpError("the gateway granted a lifetime of 0 s")
    return Mapped(epoch, proto, internal, external, min(lifetime, MAX_LIFETIME_S))


def default_gateway(route_table: str) -> str | None:
    """The IPv4 default gateway in the text of /proc/net/route (the kernel prints each address
    as a 32-bit number in the machine's byte order), the first default route that has one."""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[1] != "00000000":
            continue
        try:
            flags, gateway = int(fields[3], 16), int(fields[2], 16)
        except ValueError:
            continue
        if flags & RTF_UP and flags & RTF_GATEWAY and gateway:
            return str(ipaddress.IPv4Address(gateway.to_bytes(4, sys.byteorder)))
    return None


def retry_waits(tries: int = MAX_TRIES) -> Iterator[float]:
    """How long to wait for an answer after each send: 250 ms, doubling (RFC 6886 3.1)."""
    tries = max(1, min(tries, RFC_MAX_TRIES))
    for n in range(tries):
        yield FIRST_WAIT_S * (2**n)


@attrs.frozen
class Epoch:
    """The gateway's epoch as last seen, and when (the local monotonic clock)."""

    seconds: int
    seen_at: float

    def restarted(self, seconds: int, now: float) -> bool:
        """Whether an answer's epoch of *seconds* at *now* says the gateway lost its state: it
        went back, or grew by clearly less than the time that passed (RFC 6886 3.6)."""
        elapsed = max(0.0, now - self.seen_at)
        if seconds < self.seconds:
            return True
        return seconds + EPOCH_SLACK_S < self.seconds + elapsed * 7 / 8
