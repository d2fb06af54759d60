"""Frame bytes: Ethernet/802.1Q helpers and the virtio-net header (pure, no I/O)."""

from vnet.packet.ethernet import (
    BROADCAST,
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    c_tag_beside,
    insert_tag,
    is_multicast,
    mac_to_bytes,
    mac_to_str,
    make_tci,
    split_outer_tag,
    tci_pcp,
    tci_vid,
)
from vnet.packet.vnethdr import VNET_HDR_LEN, VnetHdr, parse_vnet_hdr, shift_vnet_hdr

__all__ = ["BROADCAST", "ETH_HLEN", "ETH_P_8021AD", "ETH_P_8021Q", "VNET_HDR_LEN", "VnetHdr",
           "c_tag_beside", "insert_tag", "is_multicast", "mac_to_bytes", "mac_to_str", "make_tci",
           "parse_vnet_hdr", "shift_vnet_hdr", "split_outer_tag", "tci_pcp", "tci_vid"]
