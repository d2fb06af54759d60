"""NAT gateways: a veth pair in the host namespace, ``naming.gateway_ifname`` holding the
gateway address and ``naming.gateway_port_ifname`` a switch port (closed to the host's
stack), both marked ``vnet:LAB:@gw-NETWORK:gw``."""

from __future__ import annotations

import ipaddress
from typing import Any

from pyroute2 import IPRoute

from vnet.daemon.drivers.base import BlockingDriver
from vnet.daemon.resources import GatewayResource
from vnet.host import links, nft


class GatewayDriver(BlockingDriver[GatewayResource]):
    kind = GatewayResource.kind

    def create_blocking(self, gateway: GatewayResource) -> None:
        with IPRoute() as ipr:
            links.refuse_taken(ipr, (gateway.ifname, gateway.port_ifname), "network")
            # The gateway's MAC and MTU from birth, as a node NIC's (netns_node): the other
            # hosts of a spanning network know the MAC from the topology.
            mtu = {"mtu": gateway.mtu} if gateway.mtu is not None else {}
            mac = {"address": gateway.mac} if gateway.mac is not None else {}
            ipr.link("add", ifname=gateway.ifname, kind="veth", **mtu, **mac,
                     peer={"ifname": gateway.port_ifname, **mtu})
            iface = ipaddress.ip_interface(gateway.address)
            index = ipr.link_lookup(ifname=gateway.ifname)[0]
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            nft.keep_host_stack_off(gateway.port_ifname)
            for ifname in (gateway.port_ifname, gateway.ifname):  # up last
                links.bring_up_port_end(ipr, ifname, gateway.alias)

    def delete_blocking(self, gateway: GatewayResource) -> None:
        with IPRoute() as ipr:
            links.delete_owned_link(ipr, gateway.ifname, gateway.alias)
            nft.forget_port_table(gateway.port_ifname)
            links.delete_owned_link(ipr, gateway.port_ifname, gateway.alias)

    def exists_blocking(self, gateway: GatewayResource) -> bool:
        with IPRoute() as ipr:
            return links.all_present(ipr, (gateway.ifname, gateway.port_ifname))

    def describe(self, gateway: GatewayResource) -> dict[str, Any]:
        return {"network": gateway.network, "address": gateway.address,
                "ifname": gateway.ifname, "port_ifname": gateway.port_ifname,
                "mac": gateway.mac, "mtu": gateway.mtu or 1500}
