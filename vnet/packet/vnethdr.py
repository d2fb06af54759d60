"""The ``virtio_net_hdr`` that precedes frames on PACKET_VNET_HDR sockets and TAP fds.

It describes GSO super-frames and partial checksums by offsets from the frame's start, so
when the switch inserts or removes a VLAN tag those offsets move by the tag's 4 bytes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

VNET_HDR_LEN = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
_HDR = struct.Struct("<BBHHHH")


class VnetHdr(NamedTuple):
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    def pack(self) -> bytes:
        return _HDR.pack(*self)


def parse_vnet_hdr(hdr: bytes) -> VnetHdr:
    return VnetHdr(*_HDR.unpack_from(hdr))


def shift_vnet_hdr(hdr: bytes, delta: int) -> bytes:
    """Move the frame-relative offsets by ``delta`` bytes; the same object if none apply."""
    flags, gso_type = hdr[0], hdr[1]
    if not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and gso_type == VIRTIO_NET_HDR_GSO_NONE:
        return hdr
    h = parse_vnet_hdr(hdr)
    csum_start = h.csum_start + delta if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM else h.csum_start
    hdr_len = h.hdr_len + delta if gso_type != VIRTIO_NET_HDR_GSO_NONE and h.hdr_len else \
        h.hdr_len
    return h._replace(csum_start=max(csum_start, 0), hdr_len=max(hdr_len, 0)).pack()
