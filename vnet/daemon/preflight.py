"""What only the host can tell about a topology before ``vnet up`` changes anything: its
uplinks exist, its NAT subnets do not overlap the host's own addresses (pyroute2, blocking)."""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

from vnet.daemon import naming
from vnet.errors import HostError
from vnet.topology import Topology


def check_host(topology: Topology) -> None:
    problems = []
    with IPRoute() as ipr:
        for network in topology.networks:
            if network.uplink and not ipr.link_lookup(ifname=network.uplink):
                problems.append(f"network {network.name}: uplink {network.uplink} does not exist "
                                f"on this host; name an existing interface (ip link)")
        host_networks = [(a.get("IFA_LABEL") or str(a.get("index")),
                          ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
                         for a in ipr.get_addr(family=socket.AF_INET)]
    own = {naming.gateway_ifname(topology.name, n.name)  # this lab's, from an earlier `up`
           for n in topology.networks}
    for network in topology.networks:
        if network.subnet is None:
            continue
        for label, iface in host_networks:
            if label in own:
                continue
            if network.mode == "nat" and iface.network.overlaps(network.subnet):
                problems.append(f"network {network.name}: subnet {network.subnet} overlaps "
                                f"{iface} on the host's {label}; choose another subnet")
    if problems:
        raise HostError("\n".join(problems))
