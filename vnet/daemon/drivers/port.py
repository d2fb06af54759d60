"""Switch ports: a port of the lab's bridge on a host-side netdev, told to the datapath."""

from __future__ import annotations

from typing import Any

from vnet.daemon.resources import PortResource
from vnet.daemon.supervisor import DatapathSupervisor


class PortDriver:
    """Each datapath message about ports is built here and nowhere else."""

    kind = PortResource.kind

    def __init__(self, datapath: DatapathSupervisor) -> None:
        self.datapath = datapath

    async def create(self, port: PortResource) -> None:
        await self.datapath.call("add_port", bridge=port.lab, name=port.name,
                                 ifname=port.ifname, mode=port.mode, vlan=port.vlan,
                                 allowed=list(port.allowed), native=port.native)

    async def delete(self, port: PortResource) -> None:
        await self.datapath.call("del_port", bridge=port.lab, name=port.name)

    async def exists(self, port: PortResource) -> bool:
        stats = await self.datapath.call("stats", bridge=port.lab)
        return port.name in stats.get(port.lab, {})

    def describe(self, port: PortResource) -> dict[str, Any]:
        """The port's part of a NIC's status (its counters come from the datapath)."""
        return {"port": port.name, "ifname": port.ifname, "mode": port.mode,
                "vlans": port.vlans, "native": port.native}
