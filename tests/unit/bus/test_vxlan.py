"""VXLAN bytes against scapy's reading of them: header, outer IPv4/UDP, source ports, VNIs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from vnet.packet.vxlan import (
    HEADER_LEN,
    MAX_VNI,
    OVERHEAD_IPV4,
    SOURCE_PORT_MAX,
    SOURCE_PORT_MIN,
    VXLAN_PORT,
    VxlanError,
    decapsulate,
    encapsulate,
    outer_ipv4_udp,
    pack_header,
    parse_header,
    source_port,
    vni_conflicts,
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


@pytest.mark.parametrize("udp_checksum", [False, True])
@pytest.mark.parametrize("size", [0, 1, 60, 1450])
def test_outer_headers_parse_in_scapy_with_right_checksums(udp_checksum, size):
    frame = inner(size)
    payload = encapsulate(5000, frame)
    outer = outer_ipv4_udp("192.0.2.1", "192.0.2.2", 50123, payload, ttl=17, tos=0x10,
                           ident=4242, udp_checksum=udp_checksum)
    datagram = outer + payload
    packet = IP(datagram)
    assert (packet.src, packet.dst, packet.ttl, packet.tos, packet.id) == (
        "192.0.2.1", "192.0.2.2", 17, 0x10, 4242)
    assert packet.flags == "DF" and packet.len == len(datagram)
    recomputed = IP(datagram)
    del recomputed.chksum
    assert IP(bytes(recomputed)).chksum == packet.chksum
    udp = packet[UDP]
    assert (udp.sport, udp.dport, udp.len) == (50123, VXLAN_PORT, len(datagram) - 20)
    if udp_checksum:
        again = IP(datagram)
        del again[UDP].chksum
        assert IP(bytes(again))[UDP].chksum == udp.chksum != 0
        assert in4_chksum(17, packet, bytes(udp)) == 0     # the receiver's check
    else:
        assert udp.chksum == 0
    assert packet[VXLAN].vni == 5000
    assert bytes(packet[VXLAN].payload) == frame


def test_overhead_is_fifty_bytes():
    payload = encapsulate(1, INNER)
    assert len(outer_ipv4_udp("192.0.2.1", "192.0.2.2", 50000, payload) + payload) + 14 \
        == len(INNER) + OVERHEAD_IPV4   # the outer Ethernet header counts too


def flows() -> list[bytes]:
    out = []
    for i in range(2000):
        out.append(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                         / IP(src="10.0.0.1", dst=f"10.0.{i // 250}.{i % 250 + 1}")
                         / UDP(sport=1000 + i, dport=53)))
    return out


def test_source_port_is_in_range_per_flow_and_spreads():
    ports = [source_port(f) for f in flows()]
    assert all(SOURCE_PORT_MIN <= p <= SOURCE_PORT_MAX for p in ports)
    assert len(set(ports)) > 1800                      # 2000 flows in 16384 ports
    # the same flow with other payload bytes keeps its port
    a = Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=1, dport=2)
    assert source_port(bytes(a / Raw(b"one"))) == source_port(bytes(a / Raw(b"other")))


def test_source_port_sees_through_vlan_tags_and_ipv6_and_ignores_ports_of_fragments():
    base = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    tagged = [source_port(bytes(base / Dot1Q(vlan=10) / IP(dst="10.0.0.2")
                                / UDP(sport=p, dport=53))) for p in range(50)]
    assert len(set(tagged)) > 40
    v6 = [source_port(bytes(base / IPv6(dst="fd00::2") / TCP(sport=p))) for p in range(50)]
    assert len(set(v6)) > 40
    first = IP(dst="10.0.0.2", flags="MF", id=7) / UDP(sport=1, dport=2)
    later = IP(dst="10.0.0.2", frag=10, id=7, proto=17) / Raw(b"z" * 16)
    assert source_port(bytes(base / first)) == source_port(bytes(base / later))
    assert SOURCE_PORT_MIN <= source_port(b"\x00" * 3) <= SOURCE_PORT_MAX


def test_vni_conflicts_across_labs():
    assert vni_conflicts({"a": {"x": 1, "y": 2}, "b": {"z": 3}}) == []
    [problem] = vni_conflicts({"a": {"x": 1}, "b": {"z": 1}})
    assert "VNI 1" in problem and "'a'" in problem and "'b'" in problem
