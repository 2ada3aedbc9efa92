"""NAT-PMP's bytes, sans-IO (p2p/reach/natpmp.py): the requests exactly as RFC 6886 lays them
out, and the readers' refusal of every answer that is not a valid one to the request: short or
long datagrams, another version or opcode, result codes, another port, unusable addresses,
zero ports and lifetimes; the retransmission schedule, the epoch rule, the route table."""

from __future__ import annotations

import struct

import pytest

from p2p.reach import natpmp
from p2p.reach.natpmp import Epoch, NatPmpError, NatPmpRefused


def external_answer(ip: bytes = bytes([203, 0, 113, 7]), *, epoch: int = 100, **over: int) -> bytes:
    head = struct.pack(
        "!BBHI", over.get("version", 0), over.get("op", 128), over.get("result", 0), epoch
    )
    return head + ip


def map_answer(
    op: int = 130, internal: int = 8469, external: int = 8469, lifetime: int = 3600, **over: int
) -> bytes:
    return struct.pack(
        "!BBHIHHI",
        over.get("version", 0),
        op,
        over.get("result", 0),
        7,
        internal,
        external,
        lifetime,
    )


def test_requests_are_laid_out_as_the_rfc_says() -> None:
    assert natpmp.external_address_request() == b"\x00\x00"
    tcp = natpmp.map_request("TCP", 8469, 40000, 3600)
    assert tcp == bytes([0, 2, 0, 0]) + struct.pack("!HHI", 8469, 40000, 3600)
    assert natpmp.map_request("UDP", 1, 65535, 1)[:2] == b"\x00\x01"
    assert natpmp.delete_request("UDP", 8468) == bytes([0, 1, 0, 0]) + struct.pack(
        "!HHI", 8468, 0, 0
    )


@pytest.mark.parametrize(
    ("proto", "internal", "external", "lifetime"),
    [
        ("SCTP", 1, 1, 1),
        ("TCP", 0, 1, 1),
        ("TCP", 70000, 1, 1),
        ("TCP", 1, 0, 60),
        ("UDP", 1, 1, -1),
    ],
)
def test_bad_requests_are_refused_before_sending(
    proto: str, internal: int, external: int, lifetime: int
) -> None:
    with pytest.raises(ValueError):
        natpmp.map_request(proto, internal, external, lifetime)


def test_a_good_external_address_answer_is_read() -> None:
    assert natpmp.read_external_address(external_answer()) == natpmp.ExternalAddress(
        100, "203.0.113.7"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x80\x00",
        external_answer()[:11],  # short
        external_answer() + b"\x00",  # long
        external_answer(op=129),  # an answer to another request
        external_answer(op=0),  # our own request echoed
        external_answer(bytes(4)),  # 0.0.0.0: no external address yet
        external_answer(bytes([127, 0, 0, 1])),
        external_answer(bytes([224, 0, 0, 1])),
        external_answer(bytes([255, 255, 255, 255])),
    ],
)
def test_invalid_external_address_answers_are_rejected(data: bytes) -> None:
    with pytest.raises(NatPmpError):
        natpmp.read_external_address(data)


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5, 999])
def test_result_codes_are_refusals_with_their_code(code: int) -> None:
    with pytest.raises(NatPmpRefused) as refused:
        natpmp.read_external_address(external_answer(result=code))
    assert refused.value.code == code
    with pytest.raises(NatPmpRefused):  # a refusal may come short ("unsupported version")
        natpmp.read_mapped(map_answer(result=code)[:8], "TCP", 8469)


def test_a_good_mapping_answer_is_read_and_its_lifetime_bounded() -> None:
    got = natpmp.read_mapped(map_answer(external=40001, lifetime=7200), "TCP", 8469)
    assert got == natpmp.Mapped(7, "TCP", 8469, 40001, 7200)
    udp = natpmp.read_mapped(map_answer(op=129, internal=8468), "UDP", 8468)
    assert udp.proto == "UDP" and udp.external_port == 8469
    forever = natpmp.read_mapped(map_answer(lifetime=0xFFFFFFFF), "TCP", 8469)
    assert forever.lifetime_s == natpmp.MAX_LIFETIME_S


@pytest.mark.parametrize(
    "data",
    [
        map_answer()[:15],
        map_answer() + b"\x00" * 4,
        map_answer(op=129),  # the UDP answer to a TCP request
        map_answer(op=2),
        map_answer(internal=8470),  # about another port
        map_answer(external=0),
        map_answer(lifetime=0),
    ],
)
def test_invalid_mapping_answers_are_rejected(data: bytes) -> None:
    with pytest.raises(NatPmpError):
        natpmp.read_mapped(data, "TCP", 8469)


def test_a_deletion_answer_carries_zero_port_and_lifetime() -> None:
    gone = natpmp.read_mapped(map_answer(external=0, lifetime=0), "TCP", 8469, deleting=True)
    assert (gone.external_port, gone.lifetime_s) == (0, 0)


def test_the_retransmission_schedule_doubles_from_250_ms_and_is_bounded() -> None:
    assert list(natpmp.retry_waits()) == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(list(natpmp.retry_waits(50))) == natpmp.RFC_MAX_TRIES
    assert sum(natpmp.retry_waits(natpmp.RFC_MAX_TRIES)) == 127.75
    assert list(natpmp.retry_waits(0)) == [0.25]


def test_an_epoch_that_went_back_or_lagged_means_a_restart() -> None:
    seen = Epoch(1000, seen_at=50.0)
    assert not seen.restarted(1000, 50.0)
    assert not seen.restarted(1100, 150.0)  # grew with the clock
    assert not seen.restarted(1086, 150.0)  # a slow gateway clock, within 7/8 and 2 s
    assert seen.restarted(999, 51.0)  # went back
    assert seen.restarted(1010, 150.0)  # grew by far less than the time that passed
    assert seen.restarted(3, 50.5)


ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
"""


def test_the_default_gateway_is_read_from_the_route_table() -> None:
    assert natpmp.default_gateway(ROUTES) == "192.0.2.1"
    no_default = ROUTES.splitlines()[:2]
    assert natpmp.default_gateway("\n".join(no_default)) is None
    down = ROUTES.replace("\t0003\t", "\t0002\t")  # not up
    assert natpmp.default_gateway(down) is None
    assert natpmp.default_gateway("garbage\nx 00000000 zz 3\n") is None
    assert natpmp.default_gateway("") is None


def test_another_version_says_the_gateway_does_not_speak_natpmp() -> None:
    pcp_unsupported = bytes([2, 0x80, 0, 1]) + bytes(20)  # a PCP-only gateway's answer
    for data in (external_answer(version=2), pcp_unsupported):
        with pytest.raises(natpmp.NatPmpUnsupported):
            natpmp.read_external_address(data)
    with pytest.raises(natpmp.NatPmpUnsupported):
        natpmp.read_mapped(map_answer(version=1), "TCP", 8469)
