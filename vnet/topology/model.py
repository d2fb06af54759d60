"""The topology model: frozen, typed dataclasses that the rest of vnet codes against.

A ``Topology`` is only ever built by the loader, after every check passed, so code that
receives one may rely on its invariants: every network a NIC names exists, VLANs and MACs
are unique, NAT networks have a subnet and a gateway, paths are resolved; in a lab with
``hosts``, every node and NAT gateway names a declared host and every bridged uplink says on
which host it is (``vnet.topology.placement`` answers what a host asks of a lab).  The
objects are frozen and hashable so that they can be compared (reconcile: "did this
change?") and used as dictionary keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    ip_address,
)
from pathlib import Path
from typing import Literal, TypeVar

from vnet.switch.ports import DEFAULT_MAC_AGING, DEFAULT_MAC_LIMIT
from vnet.topology.report import quote
from vnet.topology.values import assign_vnis, parse_broker

Mode = Literal["isolated", "nat", "bridged"]
Kind = Literal["netns", "vm"]
Restart = Literal["no", "on-failure", "always"]
Proto = Literal["tcp", "udp"]
Check = Literal["ping", "tcp", "arp"]

DEFAULT_MEMORY = 64 * 2**20
DEFAULT_KERNEL = "builtin:tiny"
DEFAULT_TOPIC_ROOT = "vnet/v1"
DEFAULT_WINDOW = 3.0    # seconds an expectation waits for a reply (vnet test)

V = TypeVar("V")


class FrozenMap(Mapping[str, V]):
    """A read-only, hashable mapping: ``types.MappingProxyType`` is not hashable, and a
    frozen dataclass that holds one could not be hashed either."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, V] | None = None) -> None:
        self._items: dict[str, V] = dict(items or {})

    def __getitem__(self, key: str) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


@dataclass(frozen=True)
class Dhcp:
    """The DHCP service of a NAT network: a dynamic range and static leases by node name."""

    range_start: IPv4Address
    range_end: IPv4Address
    leases: Mapping[str, IPv4Address] = FrozenMap()


@dataclass(frozen=True)
class Forward:
    """A host port forwarded (DNAT) to ``node:node_port`` inside a NAT network."""

    proto: Proto
    port: int
    node: str
    node_port: int


@dataclass(frozen=True)
class Network:
    """A network is one VLAN on the lab's switch; ``mode`` says what it reaches beyond it.

    In a lab with hosts, ``host`` is the host that holds a NAT network's gateway (and its
    ``uplink``), and a bridged network's uplinks are ``uplinks`` (host -> interface) instead
    of ``uplink``; ``placement.uplink_on`` answers for either.  ``vni`` is the file's
    ``vni:`` (None: derived, see ``Topology.vni_of``).
    """

    name: str
    vlan: int
    mode: Mode = "isolated"
    subnet: IPv4Network | None = None
    gateway: IPv4Address | None = None
    uplink: str | None = None
    host: str | None = None
    uplinks: Mapping[str, str] = FrozenMap()
    vni: int | None = None
    tagged: bool = False
    dhcp: Dhcp | None = None
    forwards: tuple[Forward, ...] = ()
    reach: tuple[str, ...] = ()   # NAT networks this one may open connections to
    mac_aging: float = DEFAULT_MAC_AGING   # the switch's defaults (vnet.switch.ports)
    mac_limit: int = DEFAULT_MAC_LIMIT


@dataclass(frozen=True)
class Nic:
    """A node's NIC: an access port (``network``) or a trunk (``trunk`` + ``native``)."""

    name: str
    mac: str
    network: str | None = None
    trunk: tuple[str, ...] = ()
    native: str | None = None
    ip: IPv4Interface | IPv6Interface | None = None
    dhcp: bool = False

    @property
    def is_trunk(self) -> bool:
        return self.network is None

    @property
    def networks(self) -> tuple[str, ...]:
        """Every network this NIC carries: the access network, or the trunk's networks plus
        the native network when the trunk list does not already hold it."""
        if self.network is not None:
            return (self.network,)
        if self.native is not None and self.native not in self.trunk:
            return (*self.trunk, self.native)
        return self.trunk


def forward_address(network: Network, node: str, nics: Iterable[Nic]) -> IPv4Address | None:
    """The address a forward into ``network`` reaches ``node`` at: the static IPv4 address
    of its access NIC there, else its DHCP lease; None if it has neither (a forward then
    cannot be made: the loader refuses the file)."""
    for nic in nics:
        if nic.network == network.name and isinstance(nic.ip, IPv4Interface):
            return nic.ip.ip
    if network.dhcp is not None and node in network.dhcp.leases:
        return network.dhcp.leases[node]
    return None


@dataclass(frozen=True)
class Disk:
    """A guest's virtio-blk disk image."""

    path: Path
    readonly: bool = False


@dataclass(frozen=True)
class Node:
    """A network-namespace container (``netns``) or a KVM guest (``vm``).

    The VM fields keep their defaults on netns nodes (the loader refuses them there).
    ``memory`` is in bytes; ``kernel`` is ``builtin:NAME`` or an absolute path when the
    topology came from a file.
    """

    name: str
    kind: Kind
    nics: tuple[Nic, ...]
    host: str | None = None
    vcpus: int = 1
    memory: int = DEFAULT_MEMORY
    kernel: str = DEFAULT_KERNEL
    cmdline: str | None = None
    initrd: Path | None = None
    disk: Disk | None = None
    restart: Restart = "on-failure"


@dataclass(frozen=True)
class Host:
    """A machine that runs vnetd in a multi-host lab; ``address`` (normalised text) is the
    underlay address its datapath sends and receives VXLAN on."""

    name: str
    address: str
    description: str | None = None

    @property
    def ip(self) -> IPv4Address | IPv6Address:
        return ip_address(self.address)


@dataclass(frozen=True)
class Bus:
    """The MQTT broker that connects the hosts of a lab: ``broker`` is the URL the file gave
    (checked), ``host``/``port``/``tls`` its parts.  Credentials and TLS files are not here:
    they belong to each host's vnetd configuration."""

    broker: str
    topic_root: str = DEFAULT_TOPIC_ROOT

    @property
    def host(self) -> str:
        return parse_broker(self.broker)[0]

    @property
    def port(self) -> int:
        return parse_broker(self.broker)[1]

    @property
    def tls(self) -> bool:
        return parse_broker(self.broker)[2]


@dataclass(frozen=True)
class Expectation:
    """One line of the file's ``expect:`` block: what must (``want``) or must not reach what.

    ``target`` is a node name or an IP address (``target_is_node`` says which); ``port`` is
    the TCP port of a ``tcp`` check, ``vlan`` the VLAN ID an ``arp`` check sends tagged in
    from a trunk.  ``window`` bounds the wait: a positive check passes at the first reply
    within it, a negative one when none comes within it."""

    source: str
    target: str
    check: Check
    want: bool = True
    target_is_node: bool = True
    port: int | None = None
    vlan: int | None = None
    window: float = DEFAULT_WINDOW

    def describe(self) -> str:
        """``alice -> bob ping``, ``alice -> carol no ping``, ``web -> 1.2.3.4 tcp/80``..."""
        what = {"ping": "ping", "tcp": f"tcp/{self.port}", "arp": "arp"}[self.check]
        vlan = f" vlan {self.vlan}" if self.vlan is not None else ""
        return f"{self.source} -> {self.target} {'' if self.want else 'no '}{what}{vlan}"


@dataclass(frozen=True)
class Topology:
    """A whole lab, as the file declared it, in the file's order."""

    name: str
    networks: tuple[Network, ...]
    nodes: tuple[Node, ...]
    hosts: tuple[Host, ...] = ()
    bus: Bus | None = None
    source: Path | None = None
    expect: tuple[Expectation, ...] = ()

    def network(self, name: str) -> Network:
        for network in self.networks:
            if network.name == name:
                return network
        raise KeyError(f"lab {quote(self.name)} has no network {quote(name)}")

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"lab {quote(self.name)} has no node {quote(name)}")

    def forward_address(self, network: Network, node: str) -> IPv4Address | None:
        """Where a forward into ``network`` to ``node`` goes (see ``forward_address``)."""
        return forward_address(network, node, self.node(node).nics)

    def vlan_of(self, network_name: str) -> int:
        return self.network(network_name).vlan

    def vni_of(self, network_name: str) -> int:
        """The network's VXLAN VNI: its ``vni:``, else derived (``values.assign_vnis``), the
        same on every host."""
        if network_name not in self.vnis:
            self.network(network_name)  # its KeyError names the lab
        return self.vnis[network_name]

    @cached_property
    def vnis(self) -> Mapping[str, int]:
        """Every network's VNI (``vni_of``), computed once: ``assign_vnis`` looks at all the
        networks, and a plan asks for each of them."""
        return FrozenMap(assign_vnis(self.name, ((n.name, n.vni) for n in self.networks)))

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"lab {quote(self.name)} has no host {quote(name)}")
