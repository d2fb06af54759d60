"""Switch ports: a port of the lab's bridge on a host-side netdev, told to the datapath."""

from __future__ import annotations

import socket
from typing import Any

from vnet.daemon.naming import is_uplink_port
from vnet.daemon.resources import PortResource
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.datapath import protocol
from vnet.errors import DatapathError, DatapathGone, HostError


class PortDriver:
    """Each datapath message about ports is built here and nowhere else."""

    kind = PortResource.kind
    concurrent = True   # its resources share nothing: a wave of them runs at once
    # A port needs only its netdev, which a node's first stage makes (the host end, still
    # down): a wave of ports runs beside the nodes' second stage (``reconciler``).
    after_first_stage = True

    def __init__(self, datapath: DatapathSupervisor) -> None:
        self.datapath = datapath

    async def create(self, port: PortResource) -> None:
        try:
            await self.datapath.call(protocol.AddPort(
                port.lab, port.name, port.ifname, port.mode, vlan=port.vlan,
                allowed=port.allowed, native=port.native,
                kernel_flows=not is_uplink_port(port.name)))   # an uplink's tc is the host's
        except DatapathGone:
            raise
        except DatapathError:
            if not _interface_exists(port.ifname):  # the usual reason, said in words
                raise HostError(f"interface {port.ifname} does not exist on this host"
                                ) from None
            raise

    async def delete(self, port: PortResource) -> None:
        await self.datapath.call(protocol.DelPort(port.lab, port.name))

    async def exists(self, port: PortResource) -> bool:
        stats = await self.datapath.call(protocol.GetStats(port.lab))
        return port.name in stats.get(port.lab, {})

    def describe(self, port: PortResource) -> dict[str, Any]:
        """The port's part of a NIC's status (its counters come from the datapath)."""
        return {"port": port.name, "ifname": port.ifname, "mode": port.mode,
                "vlans": port.vlans, "native": port.native}


def _interface_exists(ifname: str) -> bool:
    """In vnetd's namespace, which is the datapath's (it is vnetd's child)."""
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True
