"""PCP's bytes, sans-IO (p2p/reach/pcp.py): MAP and ANNOUNCE requests as RFC 6887 lays them out,
and the readers' refusal of every answer that is not a valid one to the request: sizes, the
version (a NAT-PMP-only gateway), opcode, result codes, another mapping's nonce, protocol or
port, addresses that are not usable IPv4, zero ports and lifetimes."""

from __future__ import annotations

import struct

import pytest

from p2p.reach import pcp
from p2p.reach.pcp import PcpError, PcpRefused, PcpUnsupported

NONCE = bytes(range(12))
MAPPED = bytes(10) + b"\xff\xff"


def answer(
    *,
    version: int = 2,
    op: int = 0x81,
    result: int = 0,
    lifetime: int = 3600,
    nonce: bytes = NONCE,
    proto: int = 6,
    internal: int = 8469,
    external: int = 8469,
    ip: bytes = MAPPED + bytes([203, 0, 113, 7]),
    extra: bytes = b"",
) -> bytes:
    head = struct.pack("!BBBBII", version, op, 0, result, lifetime, 77) + bytes(12)
    body = nonce + struct.pack("!B3xHH", proto, internal, external) + ip
    return head + body + extra


def test_requests_are_laid_out_as_the_rfc_says() -> None:
    req = pcp.map_request("TCP", 8469, 40000, 3600, client_ip="10.1.0.2", nonce=NONCE)
    assert len(req) == 60
    assert req[:8] == bytes([2, 1, 0, 0]) + struct.pack("!I", 3600)
    assert req[8:24] == MAPPED + bytes([10, 1, 0, 2])
    assert req[24:36] == NONCE and req[36] == 6 and req[37:40] == bytes(3)
    assert req[40:44] == struct.pack("!HH", 8469, 40000) and req[44:] == MAPPED + bytes(4)
    assert pcp.map_request("UDP", 1, 0, 0, client_ip="10.1.0.2", nonce=NONCE)[36] == 17
    announce = pcp.announce_request("10.1.0.2")
    assert len(announce) == 24 and announce[:2] == b"\x02\x00"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"proto": "SCTP"},
        {"nonce": b"short"},
        {"internal_port": 0},
        {"external_port": 70000},
        {"lifetime_s": -1},
    ],
)
def test_bad_requests_are_refused_before_sending(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "proto": "TCP",
        "internal_port": 8469,
        "external_port": 8469,
        "lifetime_s": 60,
        "client_ip": "10.1.0.2",
        "nonce": NONCE,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        pcp.map_request(**args)  # type: ignore[arg-type]


def test_a_good_answer_is_read_options_skipped_and_the_lifetime_bounded() -> None:
    got = pcp.read_map(answer(external=40001), "TCP", 8469, NONCE)
    assert got == pcp.PcpMapped(77, "TCP", 8469, 40001, "203.0.113.7", 3600)
    with_option = answer(extra=bytes([1, 0, 0, 4]) + bytes(4))
    assert pcp.read_map(with_option, "TCP", 8469, NONCE).external_port == 8469
    forever = pcp.read_map(answer(lifetime=0xFFFFFFFF), "TCP", 8469, NONCE)
    assert forever.lifetime_s == pcp.MAX_LIFETIME_S
    assert pcp.read_announce(answer(op=0x80)[:24]) == pcp.Announced(77)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x81\x00",
        answer()[:59],  # short
        answer()[:58],
        answer(extra=b"\x00\x00"),  # not a multiple of 4
        answer(extra=bytes(1100)),  # beyond any answer's size
        answer(op=0x01),  # our own request echoed
        answer(op=0x80),  # an ANNOUNCE answer to a MAP
        answer(nonce=bytes(12)),  # another mapping's
        answer(proto=17),  # the UDP mapping's answer
        answer(internal=8470),
        answer(ip=bytes(16)),  # an IPv6 address (::)
        answer(ip=MAPPED + bytes(4)),  # 0.0.0.0
        answer(ip=MAPPED + bytes([127, 0, 0, 1])),
        answer(ip=MAPPED + bytes([240, 0, 0, 1])),
        answer(external=0),
        answer(lifetime=0),
    ],
)
def test_invalid_answers_are_rejected(data: bytes) -> None:
    with pytest.raises(PcpError):
        pcp.read_map(data, "TCP", 8469, NONCE)


@pytest.mark.parametrize("code", [1, 2, 8, 11, 12, 200])
def test_result_codes_are_refusals_with_their_code(code: int) -> None:
    with pytest.raises(PcpRefused) as refused:
        pcp.read_map(answer(result=code, lifetime=30), "TCP", 8469, NONCE)
    assert refused.value.code == code


def test_another_version_says_the_gateway_does_not_speak_pcp() -> None:
    natpmp_unsupported = struct.pack("!BBHI", 0, 129, 1, 5)  # RFC 6886's 8-byte answer
    for data in (natpmp_unsupported, answer(version=1)):
        with pytest.raises(PcpUnsupported):
            pcp.read_map(data, "TCP", 8469, NONCE)
        with pytest.raises(PcpUnsupported):
            pcp.read_announce(data)


def test_a_deletion_answer_carries_zero_port_and_lifetime() -> None:
    gone = pcp.read_map(
        answer(external=0, lifetime=0, ip=bytes(16)), "TCP", 8469, NONCE, deleting=True
    )
    assert (gone.external_port, gone.lifetime_s) == (0, 0)
