"""Whom the overlay accepts VXLAN from: the lab's nftables table ``inet vnet-overlay-LAB``.

The kernel's vxlan netdevs accept a datagram for their VNI from any source, learning or not,
so without a filter anyone who reaches UDP port 4789 could put frames into a lab's network.
The table drops (and counts) every VXLAN datagram of one of the lab's VNIs whose source is
not a declared peer of that network.  It matches the VNI (24 bits at bit 32 of the VXLAN
header, which follows the 8-byte UDP header) rather than the port alone, because one UDP
socket serves every lab's vxlan netdevs: a lab's table must not drop another lab's peers.
VNIs are unique on a host (the kernel refuses a second netdev with the same VNI), and a
datagram for a VNI no netdev has is dropped by the kernel anyway.
"""

from __future__ import annotations

from typing import Any

from vnet.daemon.drivers.base import BlockingDriver
from vnet.daemon.resources import OverlayFilterResource
from vnet.host import nft
from vnet.packet.vxlan import VXLAN_PORT

FAMILY = "inet"
VNI_FIELD = "@th,96,24"  # transport header + 8 (UDP) + 4 bytes (VXLAN flags, reserved): 24 bits


def table_name(lab: str) -> str:
    return f"vnet-overlay-{lab}"


def ruleset(overlay_filter: OverlayFilterResource) -> str:
    """The whole table (pure), to load with ``nft -f`` after ``nft.no_table``."""
    rules = [f"udp dport {VXLAN_PORT} {VNI_FIELD} {vni} {overlay_filter.family} saddr != "
             f"{{ {', '.join(peers)} }} counter drop"
             for vni, peers in overlay_filter.rules]
    return "\n".join([
        f"table {FAMILY} {table_name(overlay_filter.lab)} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        *[f"    {rule}" for rule in rules],
        "  }",
        "}"]) + "\n"


class OverlayFilterDriver(BlockingDriver[OverlayFilterResource]):
    kind = OverlayFilterResource.kind

    def create_blocking(self, overlay_filter: OverlayFilterResource) -> None:
        nft.nft(nft.no_table(FAMILY, table_name(overlay_filter.lab)) + ruleset(overlay_filter))

    def delete_blocking(self, overlay_filter: OverlayFilterResource) -> None:
        nft.nft(nft.no_table(FAMILY, table_name(overlay_filter.lab)))

    def exists_blocking(self, overlay_filter: OverlayFilterResource) -> bool:
        return nft.table_exists(FAMILY, table_name(overlay_filter.lab))

    def describe(self, overlay_filter: OverlayFilterResource) -> dict[str, Any]:
        return {"table": f"{FAMILY} {table_name(overlay_filter.lab)}",
                "accepts": {str(vni): list(peers) for vni, peers in overlay_filter.rules}}
