"""Ethernet and 802.1Q framing: just the bytes the switch looks at, no full parsing.

Two TPIDs make a VLAN tag, as for the kernel, IEEE 802.1Q, the Linux bridge and Open vSwitch:
0x8100, the C-tag (802.1Q), and 0x88a8, the S-tag (802.1ad, "QinQ").  Any other value, the
pre-standard 0x9100 and 0x9200 among them, is only an EtherType: the frame is untagged.
"""

from __future__ import annotations

import struct

from vnet.packet.vnethdr import shift_vnet_hdr

ETH_HLEN = 14
ETH_ALEN = 6
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_HLEN = 4
VID_MASK = 0x0FFF
C_TAG = b"\x81\x00"  # the TPIDs as they stand in a frame's EtherType field
S_TAG = b"\x88\xa8"
TAG_ETHERTYPES = (C_TAG, S_TAG)
BROADCAST = b"\xff" * ETH_ALEN
ZERO_MAC = b"\x00" * ETH_ALEN
_TAG = struct.Struct("!HH")


def mac_to_bytes(mac: str) -> bytes:
    """``"02:00:5e:10:00:01"`` (or with ``-``) to 6 bytes; ValueError when malformed."""
    parts = mac.replace("-", ":").split(":")
    if len(parts) != ETH_ALEN or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"not a MAC address: {mac!r} (expected six hex bytes: 02:00:00:aa:bb:cc)")
    return bytes(int(p, 16) for p in parts)


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def is_multicast(mac: bytes) -> bool:
    """The I/G bit: group (multicast or broadcast) addresses."""
    return bool(mac[0] & 1)


def make_tci(vid: int, pcp: int = 0) -> int:
    return (pcp & 7) << 13 | (vid & VID_MASK)


def tci_vid(tci: int) -> int:
    return tci & VID_MASK


def tci_pcp(tci: int) -> int:
    return tci >> 13


def insert_tag(frame: bytes, tci: int, tpid: int = ETH_P_8021Q) -> bytes:
    """``frame`` with an outer tag after the MAC addresses."""
    return frame[:12] + _TAG.pack(tpid, tci) + frame[12:]


def split_outer_tag(frame: bytes) -> tuple[bytes, int | None]:
    """Remove an in-band outer 802.1Q tag: ``(frame_without_it, tci)``, or ``(frame, None)``."""
    if len(frame) >= ETH_HLEN + VLAN_HLEN and frame[12:14] == C_TAG:
        return frame[:12] + frame[16:], int.from_bytes(frame[14:16], "big")
    return frame, None


def c_tag_beside(hdr: bytes, frame: bytes, tpid: int, tci: int
                 ) -> tuple[bytes, bytes, int | None]:
    """A frame the kernel took an outer tag (``tpid``, ``tci``) off, as the switch takes it:
    ``(vnet_hdr, frame, tci)`` with the tag's TCI beside the frame if it was an 802.1Q C-tag,
    else the tag back in band (and the header's offsets moved with it) and ``tci`` None.

    The kernel moves 802.1ad S-tags out as it does C-tags and tells them apart only by the
    TPID beside the TCI; the switch sees only C-tags beside a frame, so an S-tag cannot pass
    for a C-tag of the same VID.  ``tpid`` 0 (the kernel did not say) is taken for 802.1Q."""
    if tpid == ETH_P_8021Q or tpid == 0:
        return hdr, frame, tci
    return shift_vnet_hdr(hdr, VLAN_HLEN), insert_tag(frame, tci, tpid), None
