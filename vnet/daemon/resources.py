"""What a lab consists of on one host, and the plan that turns what is into what should be.

A lab is a set of *resources* (a bridge in the datapath, a namespace node with its veths, a
switch port, ...).  ``desired_resources`` derives them from a topology; ``plan`` compares
them with what the state file records and returns what to delete and what to create.  Both
are pure, so reconciliation is unit-tested without root; ``vnet.daemon.realize`` does the I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, ClassVar, Literal

from vnet.daemon import naming, natrules
from vnet.errors import VnetError
from vnet.switch import VlanOptions
from vnet.topology import Network, Nic, Node, Topology


@dataclass(frozen=True)
class BridgeResource:
    """The lab's switch instance in the datapath (one per lab, so labs never share VLANs)."""

    kind: ClassVar[str] = "bridge"
    lab: str
    vlans: tuple[VlanOptions, ...]  # as the datapath's AddBridge carries them

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
    gateway: str | None = None  # default route (NICs in NAT networks)
    dhcp: bool = False          # address from the network's DHCP server


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
class GatewayResource:
    """A NAT network's gateway: a veth pair in the host namespace, one end holding the
    gateway address (the host's leg in the network), the other a port of the switch."""

    kind: ClassVar[str] = "gateway"
    lab: str
    network: str
    ifname: str          # holds the gateway address
    port_ifname: str     # the datapath's end
    address: str         # gateway/prefix
    alias: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, f"{self.lab}/{self.network}")

    @property
    def node(self) -> str:
        return naming.gateway_owner(self.network)


@dataclass(frozen=True)
class NatResource:
    """The lab's nftables table (masquerade, forwards, isolation) and IP forwarding on."""

    kind: ClassVar[str] = "nat"
    lab: str
    ruleset: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.lab)


@dataclass(frozen=True)
class DhcpResource:
    """A dnsmasq serving DHCP (and DNS for the lab's names) on a NAT network's gateway."""

    kind: ClassVar[str] = "dhcp"
    lab: str
    network: str
    interface: str
    gateway: str
    subnet: str
    range_start: str
    range_end: str
    hosts: tuple[tuple[str, str, str], ...]  # (mac, ip, name): static leases

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, f"{self.lab}/{self.network}")


@dataclass(frozen=True)
class TapSpec:
    nic: str
    ifname: str          # the persistent TAP in the host namespace: the runner's NIC
    mac: str
    ip: str | None               # ADDR/PREFIX, "dhcp" (the guest asks), or None
    alias: str
    gateway: str | None = None   # the default route's next hop, on a NAT network


@dataclass(frozen=True)
class VmNodeResource:
    """A ``kind: vm`` node: its TAPs, and a runner process that vnetd supervises."""

    kind: ClassVar[str] = "vm-node"
    lab: str
    node: str
    taps: tuple[TapSpec, ...]
    memory: int
    vcpus: int
    kernel: str
    cmdline: str
    restart: str
    disk: str | None = None
    disk_readonly: bool = False
    initrd: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, f"{self.lab}/{self.node}")


@dataclass(frozen=True)
class DhcpLeaseResource:
    """A node NIC's address from DHCP, asked for once its switch port exists."""

    kind: ClassVar[str] = "dhcp-lease"
    lab: str
    node: str
    netns: str
    nic: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, f"{self.lab}/{self.node}.{self.nic}")


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


Resource = (BridgeResource | GatewayResource | NatResource | DhcpResource | NetnsNodeResource
            | VmNodeResource | PortResource | DhcpLeaseResource)
# Creation order; deletion runs in reverse.
KIND_ORDER = {BridgeResource.kind: 0, GatewayResource.kind: 1, NatResource.kind: 2,
              DhcpResource.kind: 3, NetnsNodeResource.kind: 4, VmNodeResource.kind: 4,
              PortResource.kind: 5, DhcpLeaseResource.kind: 6}
_CLASSES: dict[str, type[Resource]] = {
    c.kind: c for c in (BridgeResource, GatewayResource, NatResource, DhcpResource,
                        NetnsNodeResource, VmNodeResource, PortResource, DhcpLeaseResource)}


def desired_resources(topology: Topology) -> list[Resource]:
    lab = topology.name
    resources: list[Resource] = [BridgeResource(lab, tuple(
        VlanOptions(n.vlan, n.mac_aging, n.mac_limit) for n in topology.networks))]
    nat_networks = [n for n in topology.networks if n.mode == "nat"]
    for network in nat_networks:
        resources.extend(_gateway(topology, network))
    if nat_networks:
        resources.append(NatResource(lab, natrules.ruleset(lab, [
            _nat_network(topology, n) for n in nat_networks])))
    resources.extend(_dhcp(topology, n) for n in nat_networks if n.dhcp is not None)
    for node in topology.nodes:
        if node.kind == "netns":
            resources.append(_netns_node(topology, node))
            resources.extend(DhcpLeaseResource(lab, node.name, naming.netns_name(lab, node.name),
                                               nic.name) for nic in node.nics if nic.dhcp)
        else:
            resources.append(_vm_node(topology, node))
        resources.extend(_port(topology, node, nic) for nic in node.nics)
    resources.extend(_uplink_ports(topology))
    return resources


def _netns_node(topology: Topology, node: Node) -> NetnsNodeResource:
    lab = topology.name
    return NetnsNodeResource(lab, node.name, naming.netns_name(lab, node.name), tuple(
        VethSpec(nic=nic.name, host_ifname=naming.host_ifname(lab, node.name, nic.name),
                 mac=nic.mac, addresses=(str(nic.ip),) if nic.ip is not None else (),
                 alias=naming.owner_alias(lab, node.name, nic.name),
                 gateway=_default_gateway(topology, nic), dhcp=nic.dhcp)
        for nic in node.nics))


def _vm_node(topology: Topology, node: Node) -> VmNodeResource:
    lab = topology.name
    return VmNodeResource(lab, node.name, tuple(
        TapSpec(nic.name, naming.host_ifname(lab, node.name, nic.name), nic.mac,
                "dhcp" if nic.dhcp else str(nic.ip) if nic.ip is not None else None,
                naming.owner_alias(lab, node.name, nic.name), _default_gateway(topology, nic))
        for nic in node.nics),
        node.memory, node.vcpus, node.kernel, node.cmdline or "", node.restart,
        str(node.disk.path) if node.disk else None, node.disk.readonly if node.disk else False,
        str(node.initrd) if node.initrd else None)


def _default_gateway(topology: Topology, nic: Nic) -> str | None:
    if nic.network is None or nic.dhcp:  # DHCP hands out the route itself
        return None
    network = topology.network(nic.network)
    if network.mode == "nat" and network.gateway is not None and nic.ip is not None:
        return str(network.gateway)
    return None


def _gateway(topology: Topology, network: Network) -> list[Resource]:
    lab = topology.name
    assert network.subnet is not None and network.gateway is not None
    owner = naming.gateway_owner(network.name)
    gateway = GatewayResource(
        lab, network.name, naming.host_ifname(lab, owner, "gw"),
        naming.host_ifname(lab, owner, "port"),
        f"{network.gateway}/{network.subnet.prefixlen}", naming.owner_alias(lab, owner, "gw"))
    port = PortResource(lab, naming.port_name(owner, "port"), gateway.port_ifname, "access",
                        vlan=network.vlan, node=owner)
    return [gateway, port]


def _nat_network(topology: Topology, network: Network) -> natrules.NatNetwork:
    assert network.subnet is not None
    forwards = tuple(natrules.PortForward(f.proto, f.port, _address_in(topology, f.node, network),
                                          f.node_port) for f in network.forwards)
    owner = naming.gateway_owner(network.name)
    return natrules.NatNetwork(network.name, network.subnet,
                               naming.host_ifname(topology.name, owner, "gw"), network.uplink,
                               forwards, network.reach)


def _address_in(topology: Topology, node_name: str, network: Network) -> IPv4Address:
    """The address a forward's target node has in ``network`` (static, or its DHCP lease)."""
    for nic in topology.node(node_name).nics:
        if nic.network == network.name:
            if isinstance(nic.ip, IPv4Interface):
                return nic.ip.ip
            if network.dhcp is not None and node_name in network.dhcp.leases:
                return network.dhcp.leases[node_name]
    raise VnetError(f"network {network.name}: a forward goes to node {node_name}, which has no "
                    f"fixed IPv4 address there; give its NIC an ip: or a DHCP lease "
                    f"(dhcp: {{leases: {{{node_name}: ADDRESS}}}})")


def _dhcp(topology: Topology, network: Network) -> DhcpResource:
    assert network.dhcp is not None and network.subnet is not None
    hosts = []
    for node_name, address in sorted(network.dhcp.leases.items()):
        for nic in topology.node(node_name).nics:
            if nic.network == network.name:
                hosts.append((nic.mac, str(address), node_name))
    owner = naming.gateway_owner(network.name)
    return DhcpResource(topology.name, network.name,
                        naming.host_ifname(topology.name, owner, "gw"), str(network.gateway),
                        str(network.subnet), str(network.dhcp.range_start),
                        str(network.dhcp.range_end), tuple(hosts))


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


def _uplink_ports(topology: Topology) -> list[PortResource]:
    """One switch port per uplink of the lab's bridged networks: an access port when one
    untagged network uses it, else a trunk of its tagged networks (native: the untagged one)."""
    uplinks: dict[str, list[Network]] = {}
    for network in topology.networks:
        if network.mode == "bridged" and network.uplink:
            uplinks.setdefault(network.uplink, []).append(network)
    ports = []
    for uplink, networks in sorted(uplinks.items()):
        name = naming.port_name("uplink", uplink)
        untagged = [n.vlan for n in networks if not n.tagged]
        tagged = tuple(sorted(n.vlan for n in networks if n.tagged))
        if not tagged:
            ports.append(PortResource(topology.name, name, uplink, "access", vlan=untagged[0],
                                      node=""))
        else:
            ports.append(PortResource(topology.name, name, uplink, "trunk", allowed=tagged,
                                      native=untagged[0] if untagged else None, node=""))
    return ports


@dataclass(frozen=True)
class Plan:
    delete: list[Resource] = field(default_factory=list)  # in deletion order
    create: list[Resource] = field(default_factory=list)  # in creation order

    @property
    def empty(self) -> bool:
        return not self.delete and not self.create


def plan(desired: list[Resource], realised: list[Resource]) -> Plan:
    """Delete what is realised but no longer desired (or changed), create what is missing.

    Ports and leases live on a node's netdevs, and ports in the lab's bridge: when the node
    or the bridge is re-created they must be too, even if they did not change themselves, or
    the datapath would hold a socket on a dead netdev or lose the port with the old bridge.
    """
    desired_set = set(desired)
    to_delete = [r for r in realised if r not in desired_set]
    rebuilt_nodes = {(r.lab, r.node) for r in to_delete
                     if isinstance(r, NetnsNodeResource | VmNodeResource | GatewayResource)}
    rebuilt_bridges = {r.lab for r in to_delete if isinstance(r, BridgeResource)}
    to_delete += [r for r in realised if isinstance(r, PortResource | DhcpLeaseResource)
                  and r in desired_set and ((r.lab, r.node) in rebuilt_nodes or (
                      isinstance(r, PortResource) and r.lab in rebuilt_bridges))]
    kept = set(realised) - set(to_delete)
    to_create = [r for r in desired if r not in kept]
    return Plan(delete=sorted(to_delete, key=lambda r: -KIND_ORDER[r.kind]),
                create=sorted(to_create, key=lambda r: KIND_ORDER[r.kind]))


def to_dict(resource: Resource) -> dict[str, Any]:
    return {"kind": resource.kind, **asdict(resource)}


def from_dict(data: dict[str, Any]) -> Resource:
    data = dict(data)
    cls = _CLASSES.get(data.pop("kind"))
    if cls is None:
        raise ValueError("unknown resource kind in the state file")
    if cls is BridgeResource:
        return BridgeResource(data["lab"], tuple(VlanOptions(**v) for v in data["vlans"]))
    if cls is NetnsNodeResource:
        nics = tuple(VethSpec(**{**n, "addresses": tuple(n["addresses"])}) for n in data["nics"])
        return NetnsNodeResource(data["lab"], data["node"], data["netns"], nics)
    if cls is PortResource:
        return PortResource(**{**data, "allowed": tuple(data.get("allowed", ()))})
    if cls is DhcpResource:
        return DhcpResource(**{**data, "hosts": tuple(tuple(h) for h in data["hosts"])})
    if cls is VmNodeResource:
        return VmNodeResource(**{**data, "taps": tuple(TapSpec(**t) for t in data["taps"])})
    return cls(**data)
