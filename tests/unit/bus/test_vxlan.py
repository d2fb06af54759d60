"""VXLAN bytes against scapy's reading of them: header, outer IPv4/UDP, source ports, VNIs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from vnet.packet.vxlan import (
    HEADER_LEN,
    MAX_VNI,
    VxlanError,
    decapsulate,
    encapsulate,
    pack_header,
    parse_header,
)


def inner(size: int = 20) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80)
                 / Raw(b"x" * size))


INNER = inner()


@given(st.integers(0, MAX_VNI))
def test_header_round_trip_and_scapy_agrees(vni):
    header = pack_header(vni)
    assert len(header) == HEADER_LEN
    assert parse_header(header) == vni
    parsed = VXLAN(header)
    assert (parsed.vni, parsed.flags) == (vni, 0x08)
    assert bytes(VXLAN(vni=vni, flags=0x08)) == header


@pytest.mark.parametrize("header, words", [
    (b"\x08\x00\x00", "shorter than"),
    (b"\x00\x00\x00\x00\x00\x00\x01\x00", "I flag"),
    (b"\x0c\x00\x00\x00\x00\x00\x01\x00", "only the I flag"),
    (b"\x08\x00\x00\x01\x00\x00\x01\x00", "reserved bits"),
    (b"\x08\x00\x00\x00\x00\x00\x01\x01", "reserved bits"),
])
def test_strict_parse_errors(header, words):
    with pytest.raises(VxlanError, match=words):
        parse_header(header)


def test_lenient_parse_ignores_reserved_bits_as_the_rfc_says():
    assert parse_header(b"\x0c\x00\x00\x01\x00\x00\x01\xff", strict=False) == 1
    with pytest.raises(VxlanError, match="I flag"):
        parse_header(b"\x04\x00\x00\x00\x00\x00\x01\x00", strict=False)


def test_encapsulate_decapsulate():
    assert decapsulate(encapsulate(77, INNER)) == (77, INNER)
    with pytest.raises(VxlanError, match="no Ethernet frame"):
        decapsulate(pack_header(77) + b"\x00" * 5)
    with pytest.raises(VxlanError, match="outside"):
        pack_header(MAX_VNI + 1)
