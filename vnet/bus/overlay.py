"""Who floods where, and whom the overlay accepts: from the desired topologies and liveness.

Broadcast and unknown unicast of a network are replicated head-end (one VXLAN copy per
remote host) to every *alive* host that has that network (``vnet.topology.network_hosts``:
a node NIC in it, its NAT gateway or a bridged uplink of it); hosts that are offline, lost or
expired get nothing.  The overlay accepts VXLAN only from the addresses of alive hosts, as
the topology declares them (``hosts: {H: {address}}``: an address a host's own status claims
is not trusted for this).  Both are pure functions; the datapath applies the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from vnet.bus.liveness import PeerTable
from vnet.topology.model import Topology
from vnet.topology.placement import network_hosts

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def flood_targets(topologies: Iterable[Topology], local_host: str, alive: Iterable[str]
                  ) -> dict[tuple[str, str], frozenset[str]]:
    """(lab, network) -> the remote hosts to head-end replicate that network's floods to."""
    alive_set = frozenset(alive) - {local_host}
    return {(t.name, network): frozenset(hosts) & alive_set
            for t in topologies for network, hosts in network_hosts(t).items()}


@dataclass(frozen=True)
class OverlayPeers:
    """The overlay's allow list: source address -> the host it belongs to."""

    by_address: dict[IPAddress, str]

    def allows(self, source: str | IPAddress) -> bool:
        return self.host_of(source) is not None

    def host_of(self, source: str | IPAddress) -> str | None:
        """The alive host that owns ``source`` (an IPv4-mapped IPv6 address counts as its
        IPv4 address), or ``None``: drop the datagram."""
        try:
            address = ipaddress.ip_address(source) if isinstance(source, str) else source
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return self.by_address.get(address)

    def __hash__(self) -> int:
        return hash(frozenset(self.by_address.items()))


def overlay_peers(topologies: Iterable[Topology], peers: PeerTable) -> OverlayPeers:
    """The addresses the overlay accepts VXLAN from: those of the alive peers."""
    declared: dict[str, str] = {}
    for topology in topologies:
        for host in topology.hosts:
            if host.address is not None:
                declared.setdefault(host.name, host.address)
    by_address: dict[IPAddress, str] = {}
    for peer in peers:
        if peer.alive and peer.host in declared:
            by_address[ipaddress.ip_address(declared[peer.host])] = peer.host
    return OverlayPeers(by_address)
