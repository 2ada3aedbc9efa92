"""PCP (RFC 6887), sans-IO: the MAP and ANNOUNCE requests a node sends to its default gateway on
UDP port 5351 (NAT-PMP's port: a PCP server tells the two apart by the version byte), and strict
readers of the answers. `natpmp_client.py` sends them (its `Pcp` dialect).

PCP is NAT-PMP's successor: newer routers and carrier NATs speak it, some no longer answer
NAT-PMP. Every answer is hostile input, read only if: version 2, the answer bit and the
request's opcode, a size from 24 (ANNOUNCE) or 60 (MAP) bytes up to `MAX_DATAGRAM`, a multiple
of 4 (options may follow the opcode's fields: they are not read, this client asks for none);
for MAP the request's nonce, protocol and internal port, an IPv4-mapped external address that
is usable, a port and (except for a deletion) a lifetime that are not zero, the lifetime cut to
`MAX_LIFETIME_S`. A result code other than success raises `PcpRefused` with its name; an answer
of another version (a NAT-PMP-only gateway says "unsupported version" in NAT-PMP's format)
raises `PcpUnsupported`.

Wire formats (big-endian), request header: version=2, R=0|opcode, reserved(16), lifetime(32),
client IP(128, IPv4-mapped); answer header: version, R=1|opcode, reserved(8), result(8),
lifetime(32), epoch(32), reserved(96). MAP fields: nonce(96), protocol(8: 6 TCP, 17 UDP),
reserved(24), internal port(16), external port(16), external IP(128). A MAP with lifetime 0 and
the mapping's nonce deletes it.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from p2p.reach.natpmp import MAX_DATAGRAM, MAX_LIFETIME_S

VERSION = 2
OP_ANNOUNCE = 0
OP_MAP = 1
ANSWER_BIT = 0x80
PROTOCOLS = {"TCP": 6, "UDP": 17}
HEADER_SIZE = 24
MAP_SIZE = HEADER_SIZE + 36
NONCE_SIZE = 12
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"

RESULT_NAMES = {
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}


class PcpError(Exception):
    """An answer that is not a valid PCP answer to our request (it is ignored)."""


class PcpUnsupported(Exception):
    """The gateway answered in another protocol version: it does not speak PCP."""


class PcpRefused(Exception):
    """The gateway answered with a result code other than success."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"PCP result {code} ({RESULT_NAMES.get(code, 'unknown code')})")


@attrs.frozen
class Announced:
    epoch: int


@attrs.frozen
class PcpMapped:
    epoch: int
    proto: str
    internal_port: int
    external_port: int
    external_ip: str
    lifetime_s: int


def _mapped_ipv4(ip: str) -> bytes:
    return _MAPPED_PREFIX + ipaddress.IPv4Address(ip).packed


def _header(opcode: int, lifetime_s: int, client_ip: str) -> bytes:
    if not 0 <= lifetime_s <= 0xFFFFFFFF:
        raise ValueError(f"lifetime {lifetime_s} out of range")
    return struct.pack("!BBHI", VERSION, opcode, 0, lifetime_s) + _mapped_ipv4(client_ip)


def announce_request(client_ip: str) -> bytes:
    """ANNOUNCE: does the gateway speak PCP, and its epoch (RFC 6887 14.1)."""
    return _header(OP_ANNOUNCE, 0, client_ip)


def map_request(
    proto: str,
    internal_port: int,
    external_port: int,
    lifetime_s: int,
    *,
    client_ip: str,
    nonce: bytes,
) -> bytes:
    """MAP *proto* *internal_port* of *client_ip* (the request's own source address), the
    external port a suggestion (0: none), no preferred external address; lifetime 0 deletes the
    mapping of *nonce*."""
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {proto!r} is neither UDP nor TCP")
    if len(nonce) != NONCE_SIZE:
        raise ValueError("a PCP mapping nonce has 12 bytes")
    if not 1 <= internal_port <= 65535 or not 0 <= external_port <= 65535:
        raise ValueError(f"ports {internal_port}/{external_port} out of range")
    body = nonce + struct.pack("!B3xHH", PROTOCOLS[proto], internal_port, external_port)
    return _header(OP_MAP, lifetime_s, client_ip) + body + _mapped_ipv4("0.0.0.0")


def _read_header(data: bytes, opcode: int, size: int) -> tuple[int, int]:
    """(lifetime, epoch) of a successful answer to *opcode* of at least *size* bytes."""
    if len(data) < 4:
        raise PcpError(f"a {len(data)}-byte datagram is no PCP answer")
    if data[0] != VERSION:
        raise PcpUnsupported(f"the gateway answers in protocol version {data[0]}, not PCP")
    if data[1] != opcode | ANSWER_BIT:
        raise PcpError(f"answer with opcode byte {data[1]:#x}, expected {opcode | ANSWER_BIT:#x}")
    if len(data) < HEADER_SIZE or len(data) > MAX_DATAGRAM or len(data) % 4:
        raise PcpError(f"a PCP answer of {len(data)} bytes")
    if data[3] != 0:
        raise PcpRefused(data[3])
    if len(data) < size:
        raise PcpError(f"answer of {len(data)} bytes, opcode {opcode} has at least {size}")
    lifetime, epoch = struct.unpack_from("!II", data, 4)
    return int(lifetime), int(epoch)


def read_announce(data: bytes) -> Announced:
    return Announced(_read_header(data, OP_ANNOUNCE, HEADER_SIZE)[1])


def read_map(
    data: bytes, proto: str, internal_port: int, nonce: bytes, *, deleting: bool = False
) -> PcpMapped:
    """The gateway's answer to `map_request(proto, internal_port, ..., nonce=nonce)`."""
    lifetime, epoch = _read_header(data, OP_MAP, MAP_SIZE)
    got_nonce = data[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE]
    number, internal, external = struct.unpack_from("!B3xHH", data, HEADER_SIZE + NONCE_SIZE)
    if got_nonce != nonce:
        raise PcpError("answer for another mapping (its nonce differs)")
    if number != PROTOCOLS[proto] or internal != internal_port:
        raise PcpError(f"answer for protocol {number} port {internal}, not {proto} {internal_port}")
    raw_ip = data[HEADER_SIZE + 20 : MAP_SIZE]
    if deleting:
        return PcpMapped(epoch, proto, internal, external, "", 0)
    if raw_ip[:12] != _MAPPED_PREFIX:
        raise PcpError("the gateway assigned an external address that is not IPv4")
    ip = ipaddress.IPv4Address(raw_ip[12:])
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
        raise PcpError(f"the gateway assigned an unusable external address ({ip})")
    if external == 0 or lifetime == 0:
        raise PcpError("the gateway assigned port 0 or a lifetime of 0 s")
    return PcpMapped(epoch, proto, internal, external, str(ip), min(lifetime, MAX_LIFETIME_S))
