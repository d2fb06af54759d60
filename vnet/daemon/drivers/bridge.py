"""The lab's bridge: a switch instance in the datapath, told over its control socket."""

from __future__ import annotations

from typing import Any

from vnet.daemon.resources import BridgeResource
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.datapath import protocol


class BridgeDriver:
    """Each datapath message about bridges is built here and nowhere else."""

    kind = BridgeResource.kind

    def __init__(self, datapath: DatapathSupervisor) -> None:
        self.datapath = datapath

    async def create(self, bridge: BridgeResource) -> None:
        await self.datapath.call(protocol.AddBridge(bridge.lab, bridge.vlans))

    async def delete(self, bridge: BridgeResource) -> None:
        await self.datapath.call(protocol.DelBridge(bridge.lab))

    async def exists(self, bridge: BridgeResource) -> bool:
        answer = await self.datapath.call(protocol.Ping())
        return bridge.lab in answer.get("bridges", ())

    def describe(self, bridge: BridgeResource) -> dict[str, Any]:
        return {"bridge": bridge.lab, "vlans": [v.vid for v in bridge.vlans]}
