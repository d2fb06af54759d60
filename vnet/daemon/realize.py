"""The kernel side of resources: namespace nodes and their veths, through pyroute2.

Thin on purpose: what to create comes from ``vnet.daemon.resources``; this module only
creates and deletes, checks that it never takes over or deletes a stranger's object, and is
safe to call again on a half-created resource (deletion tolerates absence).
"""

from __future__ import annotations

import ipaddress
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnet.daemon.resources import NetnsNodeResource, VethSpec
from vnet.errors import HostError
from vnet.host import netns

log = logging.getLogger("vnet.realize")


def create_netns_node(node: NetnsNodeResource) -> None:
    with IPRoute() as ipr:
        for nic in node.nics:
            if ipr.link_lookup(ifname=nic.host_ifname):
                raise HostError(f"interface {nic.host_ifname} already exists and vnet's state "
                                f"does not record it; remove it or rename the lab or node")
    netns.create(node.netns)
    if not node.ipv6:
        # No IPv6 unless asked: router solicitations and MLD reports would be noise on every
        # link, and a packet test asserting "no other packets" would see them.
        for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
            netns.write_sysctl(node.netns, key, "1")
    with IPRoute() as ipr:
        for nic in node.nics:
            ipr.link("add", ifname=nic.host_ifname, kind="veth",
                     peer={"ifname": nic.nic, "net_ns_fd": node.netns})
            index = ipr.link_lookup(ifname=nic.host_ifname)[0]
            ipr.link("set", index=index, ifalias=nic.alias, state="up")
    with IPRoute(netns=node.netns) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        for nic in node.nics:
            _configure_nic(ns, nic)


def _configure_nic(ns: IPRoute, nic: VethSpec) -> None:
    index = ns.link_lookup(ifname=nic.nic)[0]
    ns.link("set", index=index, address=nic.mac)
    for address in nic.addresses:
        iface = ipaddress.ip_interface(address)
        ns.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    ns.link("set", index=index, state="up")


def delete_netns_node(node: NetnsNodeResource) -> None:
    with IPRoute() as ipr:
        for nic in node.nics:
            _delete_owned_link(ipr, nic.host_ifname, nic.alias)
    netns.remove(node.netns)


def _delete_owned_link(ipr: IPRoute, ifname: str, alias: str) -> None:
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        return
    link = ipr.get_links(indexes[0])[0]
    if link.get("IFLA_IFALIAS") != alias:
        log.warning("not deleting %s: it is not marked %r, so vnet did not create it",
                    ifname, alias)
        return
    try:
        ipr.link("del", index=indexes[0])
    except NetlinkError as err:
        if err.code != 19:  # ENODEV: it went with its namespace peer meanwhile
            raise


def netns_node_alive(node: NetnsNodeResource) -> bool:
    return netns.exists(node.netns)
