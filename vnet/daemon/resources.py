"""What a lab consists of on one host, and the plan that turns what is into what should be.

A lab is a set of *resources* (a bridge in the datapath, a namespace node with its veths, a
switch port, ...).  ``desired_resources`` derives them from a topology; ``plan`` compares
them with what the state file records and returns what to delete and what to create.  Both
are pure, so reconciliation is unit-tested without root; ``vnet.daemon.realize`` does the I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from vnet.daemon import naming
from vnet.topology import Nic, Node, Topology


@dataclass(frozen=True)
class VlanSpec:
    vid: int
    mac_aging: float
    mac_limit: int


@dataclass(frozen=True)
class BridgeResource:
    """The lab's switch instance in the datapath (one per lab, so labs never share VLANs)."""

    kind: ClassVar[str] = "bridge"
    lab: str
    vlans: tuple[VlanSpec, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.lab)


@dataclass(frozen=True)
class VethSpec:
    nic: str             # the interface name inside the node
    host_ifname: str     # the datapath's end, in the host namespace
    mac: str
    addresses: tuple[str, ...]
    alias: str


@dataclass(frozen=True)
class NetnsNodeResource:
    """A ``kind: netns`` node: a namespace and one veth pair per NIC."""

    kind: ClassVar[str] = "netns-node"
    lab: str
    node: str
    netns: str
    nics: tuple[VethSpec, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, f"{self.lab}/{self.node}")

    @property
    def ipv6(self) -> bool:
        return any(":" in address for nic in self.nics for address in nic.addresses)


@dataclass(frozen=True)
class PortResource:
    """A switch port on a host-side netdev, access (``vlan``) or trunk (``allowed``/``native``)."""

    kind: ClassVar[str] = "port"
    lab: str
    name: str
    ifname: str
    mode: Literal["access", "trunk"]
    vlan: int | None = None
    allowed: tuple[int, ...] = ()
    native: int | None = None
    node: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, f"{self.lab}/{self.name}")


Resource = BridgeResource | NetnsNodeResource | PortResource
# Creation order; deletion runs in reverse.
KIND_ORDER = {BridgeResource.kind: 0, NetnsNodeResource.kind: 1, PortResource.kind: 2}


def desired_resources(topology: Topology) -> list[Resource]:
    lab = topology.name
    resources: list[Resource] = [BridgeResource(lab, tuple(
        VlanSpec(n.vlan, n.mac_aging, n.mac_limit) for n in topology.networks))]
    for node in topology.nodes:
        if node.kind == "netns":
            resources.append(_netns_node(lab, node))
        resources.extend(_port(topology, node, nic) for nic in node.nics)
    return resources


def _netns_node(lab: str, node: Node) -> NetnsNodeResource:
    return NetnsNodeResource(lab, node.name, naming.netns_name(lab, node.name), tuple(
        VethSpec(nic=nic.name, host_ifname=naming.host_ifname(lab, node.name, nic.name),
                 mac=nic.mac, addresses=(str(nic.ip),) if nic.ip is not None else (),
                 alias=naming.owner_alias(lab, node.name, nic.name))
        for nic in node.nics))


def _port(topology: Topology, node: Node, nic: Nic) -> PortResource:
    lab = topology.name
    name = naming.port_name(node.name, nic.name)
    ifname = naming.host_ifname(lab, node.name, nic.name)
    if not nic.is_trunk:
        assert nic.network is not None
        return PortResource(lab, name, ifname, "access", vlan=topology.vlan_of(nic.network),
                            node=node.name)
    native = topology.vlan_of(nic.native) if nic.native else None
    allowed = tuple(sorted(topology.vlan_of(n) for n in nic.trunk))
    return PortResource(lab, name, ifname, "trunk", allowed=allowed, native=native,
                        node=node.name)


@dataclass(frozen=True)
class Plan:
    delete: list[Resource] = field(default_factory=list)  # in deletion order
    create: list[Resource] = field(default_factory=list)  # in creation order

    @property
    def empty(self) -> bool:
        return not self.delete and not self.create


def plan(desired: list[Resource], realised: list[Resource]) -> Plan:
    """Delete what is realised but no longer desired (or changed), create what is missing.

    A port lives on a node's netdev and in the lab's bridge: when either is re-created the
    port must be too, even if the port itself did not change, or the datapath would hold a
    socket on a dead netdev or lose the port with the old bridge.
    """
    desired_set = set(desired)
    to_delete = [r for r in realised if r not in desired_set]
    rebuilt_nodes = {(r.lab, r.node) for r in to_delete if isinstance(r, NetnsNodeResource)}
    rebuilt_bridges = {r.lab for r in to_delete if isinstance(r, BridgeResource)}
    to_delete += [r for r in realised if isinstance(r, PortResource) and r in desired_set
                  and ((r.lab, r.node) in rebuilt_nodes or r.lab in rebuilt_bridges)]
    kept = set(realised) - set(to_delete)
    to_create = [r for r in desired if r not in kept]
    return Plan(delete=sorted(to_delete, key=lambda r: -KIND_ORDER[r.kind]),
                create=sorted(to_create, key=lambda r: KIND_ORDER[r.kind]))


def to_dict(resource: Resource) -> dict[str, Any]:
    return {"kind": resource.kind, **asdict(resource)}


def from_dict(data: dict[str, Any]) -> Resource:
    data = dict(data)
    kind = data.pop("kind")
    if kind == BridgeResource.kind:
        return BridgeResource(data["lab"], tuple(VlanSpec(**v) for v in data["vlans"]))
    if kind == NetnsNodeResource.kind:
        nics = tuple(VethSpec(**{**n, "addresses": tuple(n["addresses"])}) for n in data["nics"])
        return NetnsNodeResource(data["lab"], data["node"], data["netns"], nics)
    if kind == PortResource.kind:
        return PortResource(**{**data, "allowed": tuple(data.get("allowed", ()))})
    raise ValueError(f"unknown resource kind {kind!r} in the state file")
