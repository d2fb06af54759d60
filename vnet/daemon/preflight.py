"""What only the host can tell about a topology before ``vnet up`` changes anything: its
uplinks exist, its NAT subnets do not overlap the host's own addresses, (a multi-host lab
whose networks span hosts) which interface holds the host's underlay address, whose MTU
bounds the overlay's (pyroute2, blocking), and that no other lab on this host already uses
one of its VNIs (``refuse_vni_clashes``, pure, from the lab records)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute

from vnet.daemon import naming
from vnet.daemon.overlayplan import DEFAULT_UNDERLAY_MTU, overlay_plan
from vnet.daemon.resources import OverlayResource, Resource, refuse_foreign_lab
from vnet.daemon.state import LabRecord
from vnet.errors import HostError
from vnet.topology import Topology
from vnet.topology.placement import part_for_host
from vnet.topology.values import DERIVED_VNI_MIN


@dataclass(frozen=True)
class HostFacts:
    """What ``desired_resources`` needs to know of this host."""

    underlay_mtu: int = DEFAULT_UNDERLAY_MTU


def check_host(topology: Topology, host: str | None = None) -> HostFacts:
    """Refuse what this host (``host``: this vnetd's name) cannot realise of ``topology``,
    every problem at once; else the facts its resources depend on."""
    refuse_foreign_lab(topology, host)
    part = part_for_host(topology, host)
    problems = []
    with IPRoute() as ipr:
        for name, uplink in part.uplinks:
            if not ipr.link_lookup(ifname=uplink):
                problems.append(f"network {name}: uplink {uplink} does not exist "
                                f"on this host; name an existing interface (ip link)")
        addresses = [(a.get("IFA_LABEL") or str(a.get("index")), a["index"],
                      ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
                     for family in (socket.AF_INET, socket.AF_INET6)
                     for a in ipr.get_addr(family=family)]
        underlay_mtu = DEFAULT_UNDERLAY_MTU
        if host is not None and overlay_plan(topology, host):
            local = ipaddress.ip_address(topology.host(host).address)
            holders = [index for _, index, iface in addresses if iface.ip == local]
            if holders:
                underlay_mtu = int(ipr.get_links(holders[0])[0].get("IFLA_MTU"))
            else:
                problems.append(
                    f"host {host}: its underlay address {local} (the topology's hosts:) is on "
                    f"no interface of this host, so VXLAN to the other hosts has no way out; "
                    f"add it to the interface that leads to them (ip addr add {local}/PREFIX "
                    f"dev IFACE) or correct hosts.{host}.address")
    own = {naming.gateway_ifname(topology.name, n.name)  # this lab's, from an earlier `up`
           for n in topology.networks}
    for network in part.gateways:
        if network.subnet is None:
            continue
        for label, _, iface in addresses:
            if label in own or iface.version != 4:
                continue
            if iface.network.overlaps(network.subnet):
                problems.append(f"network {network.name}: subnet {network.subnet} overlaps "
                                f"{iface} on the host's {label}; choose another subnet")
    if problems:
        raise HostError("\n".join(problems))
    return HostFacts(underlay_mtu)


def vni_clashes(lab: str, overlays: Iterable[OverlayResource],
                recorded: Iterable[OverlayResource]) -> list[str]:
    """Why ``lab``'s ``overlays`` cannot be made next to the ``recorded`` ones of this host's
    other labs: one sentence per network whose VNI another lab's network already has.

    VNIs are unique within a lab (the loader, ``assign_vnis``) but not across labs, and the
    kernel demultiplexes VXLAN by VNI alone (one UDP socket on port 4789 for every vxlan
    netdev of the namespace, whatever its local address): it refuses a second netdev with a
    VNI in use, and each lab's overlay filter matches its VNIs."""
    taken = {o.vni: o for o in recorded if o.lab != lab}
    problems = []
    for overlay in overlays:
        other = taken.get(overlay.vni)
        if other is None:
            continue
        problems.append(
            f"network {overlay.network} of lab {lab} has VNI {overlay.vni}, which network "
            f"{other.network} of lab {other.lab} already uses on this host (VXLAN tells "
            f"networks apart by VNI alone); set vni: on network {overlay.network} in "
            f"{lab}'s file (or on {other.network} in {other.lab}'s) to a value that no other "
            f"lab on these hosts uses, e.g. one below {DERIVED_VNI_MIN}, which derived VNIs "
            f"never take")
    return problems


def refuse_vni_clashes(lab: str, desired: Iterable[Resource],
                       records: Iterable[LabRecord]) -> None:
    """Refuse ``lab``'s ``desired`` resources if one of its VNIs is another recorded lab's
    (``vni_clashes``), before anything is changed."""
    recorded = [r for record in records for r in record.resources
                if isinstance(r, OverlayResource)]
    problems = vni_clashes(lab, [r for r in desired if isinstance(r, OverlayResource)],
                           recorded)
    if problems:
        raise HostError("\n".join(problems))
