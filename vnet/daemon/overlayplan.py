"""What a host's overlay carries, from the topology alone (static placement; pure).

Every network of a multi-host lab that this host has and that *spans* hosts (another host
has it too) crosses between them in VXLAN: one kernel vxlan netdev per network, VNI
``Topology.vni_of``, sent from this host's address (``hosts:``).  Its broadcast and unknown
unicast go head-end to every *peer* (each other host of the overlay: one all-zeros FDB entry
each); each node NIC MAC on another host gets a unicast FDB entry to that host, and where the
file gives the NIC's IPv4 address a neighbour entry too.  So does a NAT network's gateway,
which lives on the network's ``host`` with a MAC derived from its name
(``naming.gateway_mac``) and the network's gateway address.

Bridged networks: a host with its own uplink reaches the LAN directly.  The overlay carries
the network only between the hosts *without* an uplink and one *designated forwarder*, the
first host in file order with an uplink for it; the other uplink hosts stay out of that
network's overlay, so no frame goes LAN -> overlay -> LAN.  Their nodes' MACs are behind the
LAN, so hosts without an uplink send to them through the designated forwarder.

ARP proxy (``arp_proxy``): with it the vxlan netdev answers ARP requests from its neighbour
entries and *consumes* every other ARP frame (kernel ``arp_reduce``: an ARP request for an
address it has no entry for, and every ARP reply, never cross; measured on this kernel).  So
it is on only where the file gives every address of the network: an isolated or NAT network
each of whose NICs is an access NIC with a static IPv4 address (or a DHCP lease the file
fixes); a NAT network's gateway address and MAC are known too.  A LAN behind an uplink, a DHCP
client without a fixed lease or a trunk brings addresses the file does not know: there ARP
crosses the overlay as any broadcast does.

The bus service reuses these plans, withdrawing the peers that are not alive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, ip_address

from vnet.daemon import naming
from vnet.topology.model import FrozenMap, Network, Nic, Topology
from vnet.topology.placement import network_hosts, nic_places, uplink_on

DEFAULT_UNDERLAY_MTU = 1500
# What VXLAN adds in front of an inner Ethernet frame: outer IP + UDP (8) + VXLAN (8) +
# the inner Ethernet header (14): 50 bytes over IPv4, 70 over IPv6.
OVERHEAD = {4: 50, 6: 70}


@dataclass(frozen=True)
class RemoteMac:
    """A node NIC's MAC on another host: frames to it go to ``address`` (the underlay
    address of ``peer``, the overlay host it is reached through); ``ip``, where the file
    gives it, is its IPv4 address (a neighbour entry for the ARP proxy)."""

    peer: str
    address: str
    ip: str | None
    node: str          # NODE.NIC, for logs and status


@dataclass(frozen=True)
class OverlayPlan:
    """One network's overlay on one host."""

    network: str
    ifname: str
    vni: int
    vlan: int
    local: str                      # this host's underlay address
    peers: Mapping[str, str]        # peer host -> its underlay address, in file order
    macs: Mapping[str, RemoteMac]   # remote MAC -> where it is
    mtu: int                        # of the vxlan netdev and of the NICs in the network
    arp_proxy: bool

    @property
    def peer_addresses(self) -> tuple[str, ...]:
        return tuple(self.peers.values())

    @property
    def fdb(self) -> dict[str, tuple[str, str | None]]:
        """MAC -> (peer address, IP or None): what ``set_remote_macs`` takes."""
        return {mac: (remote.address, remote.ip) for mac, remote in self.macs.items()}


def address_family(topology: Topology) -> int:
    """4 or 6: the family of the lab's underlay (one per lab, the loader checked)."""
    return ip_address(topology.hosts[0].address).version if topology.hosts else 4


def overlay_mtu(topology: Topology, underlay_mtu: int) -> int:
    """The MTU of a spanning network's netdevs, so that no VXLAN datagram is fragmented."""
    return underlay_mtu - OVERHEAD[address_family(topology)]


def designated_forwarder(topology: Topology, network: Network) -> str | None:
    """The bridged ``network``'s uplink host that joins its overlay (see the module's
    docstring); None when no host has an uplink for it."""
    for host in network_hosts(topology)[network.name]:
        if uplink_on(network, host) is not None:
            return host
    return None


def overlay_members(topology: Topology, network: Network) -> tuple[str, ...]:
    """The hosts of ``network``'s overlay, in file order: every host that has it, except the
    uplink hosts of a bridged network other than its designated forwarder."""
    hosts = network_hosts(topology)[network.name]
    if network.mode != "bridged":
        return hosts
    forwarder = designated_forwarder(topology, network)
    return tuple(h for h in hosts if h == forwarder or uplink_on(network, h) is None)


def known_ipv4(topology: Topology, network: Network, node: str, nic: Nic) -> str | None:
    """The IPv4 address the file gives ``nic`` in ``network``: its static address on an
    access NIC, or its DHCP lease when the network's ``dhcp: leases`` fixes it."""
    if nic.network != network.name:
        return None
    if isinstance(nic.ip, IPv4Interface):
        return str(nic.ip.ip)
    if nic.dhcp and network.dhcp is not None and node in network.dhcp.leases:
        return str(network.dhcp.leases[node])
    return None


def arp_proxy_safe(topology: Topology, network: Network) -> bool:
    """Whether the file gives every address of ``network`` (see the module's docstring)."""
    if network.mode == "bridged":
        return False
    return all(known_ipv4(topology, network, node.name, nic) is not None
               for node in topology.nodes for nic in node.nics
               if network.name in nic.networks)


def remote_gateway(topology: Topology, network: Network, host: str,
                   addresses: Mapping[str, str]) -> tuple[str, RemoteMac] | None:
    """A NAT ``network``'s gateway as (MAC, where) when it lives on another host than
    ``host`` (its ``network.host``), else None."""
    if network.mode != "nat" or network.host in (None, host) or network.gateway is None:
        return None
    return (naming.gateway_mac(topology.name, network.name),
            RemoteMac(network.host, addresses[network.host], str(network.gateway),
                      naming.gateway_port_name(network.name)))


def overlay_plan(topology: Topology, host: str,
                 underlay_mtu: int = DEFAULT_UNDERLAY_MTU) -> dict[str, OverlayPlan]:
    """Network name -> its overlay on ``host``, for every network of ``host`` that spans
    hosts, in file order.  A lab without hosts has no overlay; a ``host`` that is not one of
    the lab's is a ``KeyError``."""
    if not topology.hosts:
        return {}
    addresses = {h.name: h.address for h in topology.hosts}
    if host not in addresses:
        raise KeyError(f"lab {topology.name!r} has no host {host!r}")
    places = nic_places(topology)
    plans: dict[str, OverlayPlan] = {}
    for network in topology.networks:
        members = overlay_members(topology, network)
        if host not in members or len(members) < 2:
            continue
        forwarder = designated_forwarder(topology, network)
        macs: dict[str, RemoteMac] = {}
        for place in places:
            if place.network != network.name or place.host in (host, None):
                continue
            if place.host in members:
                peer = place.host
            elif forwarder is not None and uplink_on(network, host) is None:
                peer = forwarder    # behind another host's uplink: on the LAN
            else:
                continue            # this host reaches it on the LAN itself
            nic = next(n for n in topology.node(place.node).nics if n.name == place.nic)
            macs[place.mac] = RemoteMac(peer, addresses[peer],
                                        known_ipv4(topology, network, place.node, nic),
                                        naming.port_name(place.node, place.nic))
        gateway = remote_gateway(topology, network, host, addresses)
        if gateway is not None:
            macs[gateway[0]] = gateway[1]
        plans[network.name] = OverlayPlan(
            network=network.name, ifname=naming.overlay_ifname(topology.name, network.name),
            vni=topology.vni_of(network.name), vlan=network.vlan, local=addresses[host],
            peers=FrozenMap({h: addresses[h] for h in members if h != host}),
            macs=FrozenMap(macs), mtu=overlay_mtu(topology, underlay_mtu),
            arp_proxy=arp_proxy_safe(topology, network))
    return plans
