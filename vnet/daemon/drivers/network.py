"""Networks: nothing to create, only to describe (a network's VLAN lives in the lab's bridge,
its gateway in a gateway resource; the resource records what ``vnet status`` shows)."""

from __future__ import annotations

from typing import Any

from vnet.daemon.resources import NetworkResource


class NetworkDriver:
    kind = NetworkResource.kind

    async def create(self, network: NetworkResource) -> None:
        """Nothing in the kernel is the network's own."""

    async def delete(self, network: NetworkResource) -> None:
        """Nothing to delete: see ``create``."""

    async def exists(self, network: NetworkResource) -> bool:
        return True

    def describe(self, network: NetworkResource) -> dict[str, Any]:
        uplink: str | dict[str, str] | None = dict(network.uplinks) or network.uplink
        return {"name": network.network, "vlan": network.vlan, "mode": network.mode,
                "uplink": uplink}
