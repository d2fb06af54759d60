"""VXLAN (RFC 7348) bytes: the 8-byte header (pure, no I/O).

vnet's overlay is the kernel's ``vxlan`` device (docs/benchmarks.md says why), which builds
the outer headers and per-flow source ports itself; this codec serves the Python reference
tunnel of ``vnet.bench.overlay`` and tools that read VXLAN.  VNIs come from the topology
(``Topology.vni_of``).

Header (RFC 7348 §5)::

    flags (8: I = 0x08) | reserved (24) | VNI (24) | reserved (8)

``parse_header`` is strict by default (reserved bits must be zero: vnet only talks to vnet,
and a non-zero bit means a different protocol — VXLAN-GPE, GBP — or corruption);
``strict=False`` ignores them as RFC 7348 says a receiver should.
"""

from __future__ import annotations

import struct

VXLAN_PORT = 4789
HEADER_LEN = 8
FLAG_I = 0x08
MAX_VNI = 2**24 - 1
IPV4_HLEN, UDP_HLEN = 20, 8
OVERHEAD_IPV4 = IPV4_HLEN + UDP_HLEN + HEADER_LEN + 14  # 50: inner MTU 1450 on a 1500 link

_HEADER = struct.Struct("!II")
_FIRST_WORD = FLAG_I << 24


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
