"""VXLAN (RFC 7348) bytes: the 8-byte header, per-flow UDP source ports, VNIs per network,
and outer IPv4 + UDP headers for a datapath that sends through a raw socket (pure, no I/O).

Header (RFC 7348 §5)::

    flags (8: I = 0x08) | reserved (24) | VNI (24) | reserved (8)

``parse_header`` is strict by default (reserved bits must be zero: vnet only talks to vnet,
and a non-zero bit means a different protocol — VXLAN-GPE, GBP — or corruption);
``strict=False`` ignores them as RFC 7348 says a receiver should.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
import zlib
from array import array
from collections.abc import Mapping

VXLAN_PORT = 4789
HEADER_LEN = 8
FLAG_I = 0x08
MAX_VNI = 2**24 - 1
SOURCE_PORT_MIN, SOURCE_PORT_MAX = 49152, 65535   # RFC 7348 §5: the dynamic range
IPV4_HLEN, UDP_HLEN = 20, 8
OVERHEAD_IPV4 = IPV4_HLEN + UDP_HLEN + HEADER_LEN + 14  # 50: inner MTU 1450 on a 1500 link

_HEADER = struct.Struct("!II")
_FIRST_WORD = FLAG_I << 24
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_PROTO_UDP = 17
_PORTED = (6, 17, 132)   # TCP, UDP, SCTP: the first 4 bytes are the ports


class VxlanError(ValueError):
    """A datagram that is not the VXLAN vnet sends, or a VNI plan that cannot work."""


def pack_header(vni: int) -> bytes:
    if not 0 <= vni <= MAX_VNI:
        raise VxlanError(f"VNI {vni} outside 0..{MAX_VNI}")
    return _HEADER.pack(_FIRST_WORD, vni << 8)


def parse_header(data: bytes | memoryview, strict: bool = True) -> int:
    """The VNI of a VXLAN datagram's header (the inner frame follows at ``HEADER_LEN``)."""
    if len(data) < HEADER_LEN:
        raise VxlanError(f"VXLAN datagram of {len(data)} bytes: shorter than the "
                         f"{HEADER_LEN}-byte header")
    first: int
    second: int
    first, second = _HEADER.unpack_from(data)
    if not first & _FIRST_WORD:
        raise VxlanError(f"VXLAN flags 0x{first >> 24:02x}: the I flag (0x08, a valid VNI) "
                         "is not set")
    if strict:
        if first >> 24 != FLAG_I:
            raise VxlanError(f"VXLAN flags 0x{first >> 24:02x}: only the I flag (0x08) may be "
                             "set (is the peer sending VXLAN-GPE or GBP?)")
        if first & 0xFFFFFF or second & 0xFF:
            raise VxlanError("VXLAN reserved bits are not zero")
    return second >> 8


def encapsulate(vni: int, frame: bytes) -> bytes:
    return pack_header(vni) + frame


def decapsulate(datagram: bytes, strict: bool = True) -> tuple[int, bytes]:
    """``(vni, inner frame)``; the inner frame must at least hold an Ethernet header."""
    vni = parse_header(datagram, strict)
    if len(datagram) < HEADER_LEN + 14:
        raise VxlanError(f"VXLAN datagram of {len(datagram)} bytes carries no Ethernet frame")
    return vni, datagram[HEADER_LEN:]


# -- the UDP source port ----------------------------------------------------------------------

def flow_key(frame: bytes) -> bytes:
    """The bytes that identify the inner frame's flow: MACs and EtherType, and for IPv4/IPv6
    the addresses and protocol, plus the ports of TCP/UDP/SCTP (not of IPv4 fragments, whose
    later pieces carry none, so that all pieces of a datagram take the same path)."""
    if len(frame) < 14:
        return frame
    offset, ethertype = 12, frame[12:14]
    while ethertype in (b"\x81\x00", b"\x88\xa8") and len(frame) >= offset + 6:
        offset += 4
        ethertype = frame[offset:offset + 2]
    l3 = offset + 2
    key = frame[:12] + ethertype
    if ethertype == b"\x08\x00" and len(frame) >= l3 + 20:
        ihl = (frame[l3] & 0x0F) * 4
        proto = frame[l3 + 9]
        key += frame[l3 + 9:l3 + 10] + frame[l3 + 12:l3 + 20]
        fragment = int.from_bytes(frame[l3 + 6:l3 + 8], "big") & 0x3FFF
        if proto in _PORTED and not fragment and len(frame) >= l3 + ihl + 4:
            key += frame[l3 + ihl:l3 + ihl + 4]
    elif ethertype == b"\x86\xdd" and len(frame) >= l3 + 40:
        proto = frame[l3 + 6]
        key += frame[l3 + 6:l3 + 7] + frame[l3 + 8:l3 + 40]
        if proto in _PORTED and len(frame) >= l3 + 44:
            key += frame[l3 + 40:l3 + 44]
    return key


def source_port(frame: bytes) -> int:
    """The outer UDP source port for ``frame``: a hash of its flow in 49152..65535, so that
    ECMP and RSS spread flows while each flow keeps one path (RFC 7348 §5).  CRC-32, not
    ``hash()``: the same on every host and every run."""
    span = SOURCE_PORT_MAX - SOURCE_PORT_MIN + 1
    return SOURCE_PORT_MIN + zlib.crc32(flow_key(frame)) % span


# -- VNIs per network: derived by the topology (vnet.topology.assign_vnis) -----------------

def vni_conflicts(plans: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Messages for VNIs used by networks of two labs: one host's overlay demultiplexes by
    VNI alone, so labs that share hosts need distinct VNIs (give one of them ``vni:``)."""
    seen: dict[int, tuple[str, str]] = {}
    problems: list[str] = []
    for lab, plan in sorted(plans.items()):
        for network, vni in sorted(plan.items()):
            other = seen.setdefault(vni, (lab, network))
            if other[0] != lab:
                problems.append(f"VNI {vni} is used by network {other[1]!r} of lab "
                                f"{other[0]!r} and network {network!r} of lab {lab!r}; set "
                                "a distinct vni: on one of them")
    return problems


# -- outer IPv4 + UDP -------------------------------------------------------------------------

def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit one's complement checksum of RFC 1071 (``initial``: a partial sum)."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    words = array("H", bytes(data))
    if sys.byteorder == "little":
        words.byteswap()
    total = sum(words) + initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def outer_ipv4_udp(source: str, destination: str, source_port: int, payload: bytes, *,
                   destination_port: int = VXLAN_PORT, ttl: int = 64, tos: int = 0,
                   ident: int = 0, dont_fragment: bool = True, udp_checksum: bool = False
                   ) -> bytes:
    """The 28 bytes of IPv4 + UDP headers that carry ``payload`` (VXLAN header + frame).

    The UDP checksum is zero unless asked for (RFC 7348 §5: SHOULD be zero over IPv4; the
    inner frame has its own checks, and summing every frame in Python costs); the IPv4 header
    checksum is always right.
    """
    src = ipaddress.IPv4Address(source).packed
    dst = ipaddress.IPv4Address(destination).packed
    udp_length = UDP_HLEN + len(payload)
    total = IPV4_HLEN + udp_length
    if total > 0xFFFF:
        raise VxlanError(f"an IPv4 datagram of {total} bytes is too large")
    flags = 0x4000 if dont_fragment else 0
    header = _IPV4.pack(0x45, tos, total, ident & 0xFFFF, flags, ttl, _PROTO_UDP, 0, src, dst)
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    checksum = 0
    if udp_checksum:
        pseudo = src + dst + struct.pack("!BBH", 0, _PROTO_UDP, udp_length)
        udp = _UDP.pack(source_port, destination_port, udp_length, 0)
        checksum = internet_checksum(pseudo + udp + payload) or 0xFFFF
    return header + _UDP.pack(source_port, destination_port, udp_length, checksum)
