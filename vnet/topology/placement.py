"""Where a lab's parts are: what each host realises, and which host each node MAC lives on.

Pure functions of a loaded ``Topology``, the same on every host, for vnetd (what to build
here, which hosts to flood a network's frames to) and the bus (a host that advertises a MAC
the topology places on another host is refused).

A host *has* a network when a node NIC on that host carries it, when it holds the network's
NAT gateway, or when it has an uplink of it (bridged).  A lab without ``hosts`` is
standalone: all of it belongs to the local host, whatever that host is called, and nothing
crosses to another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vnet.topology.model import FrozenMap, Network, Node, Topology
from vnet.topology.report import quote


@dataclass(frozen=True)
class NicPlace:
    """One node NIC in one network it carries, on its host (None: a lab without hosts)."""

    host: str | None
    network: str
    mac: str
    node: str
    nic: str


@dataclass(frozen=True)
class HostPart:
    """What one host realises of a lab.

    ``host`` is None for a standalone lab (no ``hosts``): then every node, network, gateway
    and uplink is here and ``peers`` is empty.  ``uplinks`` are (network, interface) pairs
    on this host; ``peers`` maps each network here to the other hosts that have it, in the
    file's host order: where its broadcast and unknown-unicast frames go.
    """

    host: str | None
    nodes: tuple[Node, ...]
    networks: tuple[Network, ...]
    gateways: tuple[Network, ...]
    uplinks: tuple[tuple[str, str], ...]
    peers: Mapping[str, tuple[str, ...]]


def uplink_on(network: Network, host: str | None) -> str | None:
    """The interface ``network`` leads out of on ``host`` (None: a lab without hosts)."""
    if host is None:
        return network.uplink
    if network.uplinks:
        return network.uplinks.get(host)
    return network.uplink if host == network.host else None


def nic_places(t: Topology) -> tuple[NicPlace, ...]:
    """Every (host, network, MAC) of a node NIC, in file order; a trunk NIC gives one per
    network it carries.  Gateway ports and hosts behind bridged uplinks are not placed."""
    return tuple(NicPlace(node.host, network, nic.mac, node.name, nic.name)
                 for node in t.nodes for nic in node.nics for network in nic.networks)


def mac_hosts(t: Topology) -> dict[str, str | None]:
    """MAC -> the host its node runs on (MACs are unique in a lab: the loader checked)."""
    return {place.mac: place.host for place in nic_places(t)}


def has_network(t: Topology, host: str, network: Network) -> bool:
    """Whether ``host`` of a multi-host lab has ``network`` (see the module's docstring)."""
    if network.mode == "nat" and network.host == host:
        return True
    if host in network.uplinks:
        return True
    return any(node.host == host and network.name in nic.networks
               for node in t.nodes for nic in node.nics)


def network_hosts(t: Topology) -> dict[str, tuple[str, ...]]:
    """Network name -> the hosts that have it, in the file's host order (all empty in a lab
    without hosts: there, everything is the local host's)."""
    return {network.name: tuple(h.name for h in t.hosts if has_network(t, h.name, network))
            for network in t.networks}


def part_for_host(t: Topology, host: str | None) -> HostPart:
    """The part of ``t`` that ``host`` realises.

    A lab without hosts is all local, for any ``host`` (None included).  In a lab with hosts,
    ``host`` must be one of them: otherwise ``KeyError``, whose message says which it has.
    """
    if not t.hosts:
        return HostPart(
            host=None, nodes=t.nodes, networks=t.networks,
            gateways=tuple(n for n in t.networks if n.mode == "nat"),
            uplinks=tuple((n.name, n.uplink) for n in t.networks if n.uplink is not None),
            peers=FrozenMap())
    names = [h.name for h in t.hosts]
    if host not in names:
        raise KeyError(f"lab {quote(t.name)} runs on hosts {', '.join(names)}, not on "
                       f"{quote(host)}: start vnetd with one of these host names")
    spread = network_hosts(t)
    networks = tuple(n for n in t.networks if host in spread[n.name])
    uplinks = tuple((n.name, uplink) for n in networks
                    if (uplink := uplink_on(n, host)) is not None)
    return HostPart(
        host=host, nodes=tuple(n for n in t.nodes if n.host == host), networks=networks,
        gateways=tuple(n for n in networks if n.mode == "nat" and n.host == host),
        uplinks=uplinks,
        peers=FrozenMap({n.name: tuple(h for h in spread[n.name] if h != host)
                         for n in networks}))
