"""A lab's NAT: its nftables table ``ip vnet-LAB`` (``natrules``), replaced whole in one
transaction, and the host's IP forwarding held on while the table exists (``forwarding``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vnet.daemon import forwarding, natrules
from vnet.daemon.drivers.base import BlockingDriver
from vnet.daemon.resources import NatResource
from vnet.host import nft

FAMILY = "ip"


class NatDriver(BlockingDriver[NatResource]):
    kind = NatResource.kind

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir  # where ``forwarding`` remembers who holds ip_forward

    def create_blocking(self, nat: NatResource) -> None:
        # One transaction: make sure the (recorded, so ours) table is empty, then fill it.
        nft.nft(nft.no_table(FAMILY, natrules.table_name(nat.lab)) + nat.ruleset)
        forwarding.hold(self.state_dir, nat.lab)

    def delete_blocking(self, nat: NatResource) -> None:
        nft.nft(nft.no_table(FAMILY, natrules.table_name(nat.lab)))
        forwarding.release(self.state_dir, nat.lab)

    def exists_blocking(self, nat: NatResource) -> bool:
        return nft.table_exists(FAMILY, natrules.table_name(nat.lab))

    def describe(self, nat: NatResource) -> dict[str, Any]:
        return {"table": f"{FAMILY} {natrules.table_name(nat.lab)}"}
