"""Namespace nodes: a namespace ``vnet-LAB-NODE`` and one veth pair per NIC, the node's end
named as in the topology (``eth0``), the host's end ``vn`` + hash (``naming.host_ifname``),
marked ``vnet:LAB:NODE:NIC`` and closed to the host's own stack (``nft.keep_host_stack_off``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from vnet.daemon.drivers.base import BlockingDriver
from vnet.daemon.drivers.port_ends import open_port_ends
from vnet.daemon.resources import NetnsNodeResource, VethSpec
from vnet.host import links, netns, nft, rtnl

# Every group may open ICMP echo ("ping") sockets in a node, as on most desktop
# distributions: a new namespace has "1 0" (none may), so a non-root operator's
# ``vnet exec NODE -- ping`` failed where ping cannot gain CAP_NET_RAW (NoNewPrivileges in
# vnetd's unit).  The sysctl is per namespace: the host's own stays as it is.
PING_GROUP_RANGE = ("net.ipv4.ping_group_range", "0 2147483647")
LOOPBACK_IFINDEX = 1   # the kernel's, in every namespace (include/net/flow.h)

class NetnsNodeDriver(BlockingDriver[NetnsNodeResource]):
    """Made in two stages (``reconciler.Staged``), so that a wave's port tables are one nft
    transaction: each node's namespace, veths and addresses, its side up but the host's
    ends down (no carrier: no frame passes yet); then, for the whole wave, the port tables
    and the host ends up.  Alone (a rollback, a restore) the two run one after the other."""

    kind = NetnsNodeResource.kind
    concurrent = True   # its resources share nothing: a wave of them runs at once

    def create_blocking(self, node: NetnsNodeResource) -> None:
        self.first_blocking(node)
        failed = self.together_blocking([node])[0]
        if failed is not None:
            raise failed

    async def create_first(self, node: NetnsNodeResource) -> None:
        await asyncio.to_thread(self.first_blocking, node)

    async def create_together(self, nodes: Sequence[NetnsNodeResource]
                              ) -> list[Exception | None]:
        return await asyncio.to_thread(self.together_blocking, nodes)

    def first_blocking(self, node: NetnsNodeResource) -> None:
        """The namespace, its sysctls, each NIC's veth pair and the node's side of it."""
        sysctls = [PING_GROUP_RANGE]
        if not node.ipv6:
            # No IPv6 unless asked: router solicitations and MLD reports would be noise on
            # every link, and a packet test asserting "no other packets" would see them.
            sysctls += [("net.ipv6.conf.all.disable_ipv6", "1"),
                        ("net.ipv6.conf.default.disable_ipv6", "1")]
        ipr = links.host_iproute()
        links.refuse_taken(ipr, _host_ends(node), "node")
        netns.create(node.netns, sysctls)
        indexes = []
        for nic in node.nics:
            # The node's end has its MAC (and its MTU, in a network that spans hosts) from
            # birth, so no frame can carry a temporary one, and goes up last, after its
            # addresses (below).  The host's end is marked as ours now, beside the
            # wave's other nodes, so the second stage (one thread for the wave) only ups it.
            mtu = {"mtu": nic.mtu} if nic.mtu is not None else {}
            index, peer = links.add_veth(
                ipr, nic.host_ifname, {"ifname": nic.nic, "net_ns_fd": node.netns,
                                       "address": nic.mac, **mtu}, **mtu)
            links.mark_port_end(ipr, index, nic.host_ifname, nic.alias)
            indexes.append(peer)
        # the node's side in one exchange: loopback, then each NIC's addresses, the NIC up
        # (after its addresses), its default route
        rtnl.run_in(node.netns, [rtnl.link_up(LOOPBACK_IFINDEX, "lo")] + [
            request for nic, index in zip(node.nics, indexes, strict=True)
            for request in _nic_requests(nic, index)])

    def together_blocking(self, nodes: Sequence[NetnsNodeResource]) -> list[Exception | None]:
        """The port tables of every node's host ends in one nft transaction, then those
        ends up (marked as ours in the first stage); each node's error (None: made)."""
        return open_port_ends([[nic.host_ifname for nic in node.nics] for node in nodes])

    def delete_blocking(self, node: NetnsNodeResource) -> None:
        ipr = links.host_iproute()
        for nic in node.nics:
            nft.forget_port_table(nic.host_ifname)
            links.delete_owned_link(ipr, nic.host_ifname, nic.alias)
        netns.remove(node.netns)

    def exists_blocking(self, node: NetnsNodeResource) -> bool:
        if not netns.is_live(node.netns):  # an empty file under /run/netns is no namespace
            return False
        return links.all_present(links.host_iproute(), (nic.host_ifname for nic in node.nics))

    def describe(self, node: NetnsNodeResource) -> dict[str, Any]:
        return {"name": node.node, "kind": "netns", "netns": node.netns,
                "state": "running" if netns.is_live(node.netns) else "missing",
                "nics": [{"name": n.nic, "mac": n.mac,
                          "ip": ["dhcp"] if n.dhcp else list(n.addresses),
                          "ifname": n.host_ifname, "mtu": n.mtu or 1500} for n in node.nics]}


def _nic_requests(nic: VethSpec, index: int) -> list[rtnl.Request]:
    requests = [rtnl.address_add(index, nic.nic, address) for address in nic.addresses]
    requests.append(rtnl.link_up(index, nic.nic))
    if nic.gateway is not None:
        requests.append(rtnl.default_route(nic.gateway, index, nic.nic))
    return requests


def _host_ends(node: NetnsNodeResource) -> list[str]:
    return [nic.host_ifname for nic in node.nics]
