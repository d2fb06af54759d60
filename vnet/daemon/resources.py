"""What a lab consists of on one host, and the plan that turns what is into what should be.

A lab is a set of *resources* (a bridge in the datapath, a namespace node with its veths, a
switch port, ...).  ``desired_resources`` derives them from a topology; ``plan`` compares
them with what the state file records and returns what to delete and what to create.  Both
are pure, so reconciliation is unit-tested without root; the drivers
(``vnet.daemon.drivers``, one per kind) do the I/O and ``vnet.daemon.reconciler`` applies a
plan through them.  A new kind is its dataclass here (a ``LabResource``), its place in
``KIND_ORDER`` and its driver.

A lab with ``hosts`` is realised in parts: each vnetd derives only its own host's part
(``vnet.topology.placement.part_for_host``) plus the overlay that joins it to the others
(``vnet.daemon.overlayplan``).  A lab without hosts is realised whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from ipaddress import IPv4Address
from typing import Any, ClassVar, Literal

from vnet.daemon import naming, natrules
from vnet.daemon.overlayplan import DEFAULT_UNDERLAY_MTU, OverlayPlan, address_family, overlay_plan
from vnet.errors import HostError, VnetError
from vnet.switch import VlanOptions
from vnet.switch.ports import vlan_members
from vnet.topology import Forward, Network, Nic, Node, Topology
from vnet.topology.placement import part_for_host


@dataclass(frozen=True)
class LabResource:
    """What every resource has: its lab, its ``kind`` and a ``key`` (kind, name) that is
    unique on the host and names it in logs and errors.  A subclass says both in its class
    line: ``class XResource(LabResource, kind="x", key="{lab}/{name}")``, the key a format
    of its fields."""

    kind: ClassVar[str]
    key_format: ClassVar[str]
    lab: str

    def __init_subclass__(cls, *, kind: str, key: str = "{lab}", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind, cls.key_format = kind, key

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.key_format.format(**vars(self)))


@dataclass(frozen=True)
class BridgeResource(LabResource, kind="bridge"):
    """The lab's switch instance in the datapath (one per lab, so labs never share VLANs)."""

    vlans: tuple[VlanOptions, ...]  # as the datapath's AddBridge carries them


@dataclass(frozen=True)
class NetworkResource(LabResource, kind="network", key="{lab}/{network}"):
    """A network of the lab as its file declares it: what ``vnet status`` shows of it.  It
    owns nothing in the kernel (its VLAN is the bridge's, its gateway a ``GatewayResource``),
    so its driver only describes it; a change to it rebuilds nothing else."""

    network: str
    vlan: int
    mode: str
    uplink: str | None = None
    uplinks: tuple[tuple[str, str], ...] = ()  # (host, interface), in a lab with hosts


@dataclass(frozen=True)
class VethSpec:
    nic: str             # the interface name inside the node
    host_ifname: str     # the datapath's end, in the host namespace
    mac: str
    addresses: tuple[str, ...]
    alias: str
    gateway: str | None = None  # default route (NICs in NAT networks)
    dhcp: bool = False          # address from the network's DHCP server
    mtu: int | None = None      # set on a NIC in a network that spans hosts (None: 1500)


@dataclass(frozen=True)
class NetnsNodeResource(LabResource, kind="netns-node", key="{lab}/{node}"):
    """A ``kind: netns`` node: a namespace and one veth pair per NIC."""

    node: str
    netns: str
    nics: tuple[VethSpec, ...]

    @property
    def ipv6(self) -> bool:
        return any(":" in address for nic in self.nics for address in nic.addresses)


@dataclass(frozen=True)
class GatewayResource(LabResource, kind="gateway", key="{lab}/{network}"):
    """A NAT network's gateway: a veth pair in the host namespace, one end holding the
    gateway address (the host's leg in the network), the other a port of the switch."""

    network: str
    ifname: str          # holds the gateway address
    port_ifname: str     # the datapath's end
    address: str         # gateway/prefix
    alias: str
    mac: str | None = None  # of ``ifname``, on a spanning network (None: the kernel's)
    mtu: int | None = None  # both ends, on a network that spans hosts (None: 1500)

    @property
    def node(self) -> str:
        return naming.gateway_owner(self.network)


@dataclass(frozen=True)
class NatResource(LabResource, kind="nat"):
    """The lab's nftables table (masquerade, forwards, isolation) and IP forwarding on."""

    ruleset: str


@dataclass(frozen=True)
class DhcpResource(LabResource, kind="dhcp", key="{lab}/{network}"):
    """A dnsmasq serving DHCP (and DNS for the lab's names) on a NAT network's gateway."""

    network: str
    interface: str
    gateway: str
    subnet: str
    range_start: str
    range_end: str
    hosts: tuple[tuple[str, str, str], ...]  # (mac, ip, name): static leases


@dataclass(frozen=True)
class TapSpec:
    nic: str
    ifname: str          # the persistent TAP in the host namespace: the runner's NIC
    mac: str
    ip: str | None               # ADDR/PREFIX, "dhcp" (the guest asks), or None
    alias: str
    gateway: str | None = None   # the default route's next hop, on a NAT network
    mtu: int | None = None       # of the TAP and the guest's NIC, on a spanning network


@dataclass(frozen=True)
class VmNodeResource(LabResource, kind="vm-node", key="{lab}/{node}"):
    """A ``kind: vm`` node: its TAPs, and a runner process that vnetd supervises."""

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


@dataclass(frozen=True)
class DhcpLeaseResource(LabResource, kind="dhcp-lease", key="{lab}/{node}.{nic}"):
    """A node NIC's address from DHCP, asked for once its switch port exists."""

    node: str
    netns: str
    nic: str


@dataclass(frozen=True)
class PortResource(LabResource, kind="port", key="{lab}/{name}"):
    """A switch port on a host-side netdev, access (``vlan``) or trunk (``allowed``/``native``)."""

    name: str
    ifname: str
    mode: Literal["access", "trunk"]
    vlan: int | None = None
    allowed: tuple[int, ...] = ()
    native: int | None = None
    node: str = ""

    @property
    def vlans(self) -> list[int]:
        """Every VLAN the port carries (the switch's rule, ``vlan_members``)."""
        return sorted(vlan_members(self.mode, self.vlan, self.allowed, self.native))


@dataclass(frozen=True)
class OverlayResource(LabResource, kind="overlay", key="{lab}/{network}"):
    """A network's VXLAN tunnel to the other hosts that have it: a kernel vxlan netdev in
    the host namespace (a switch port like a NIC's host end), its head-end replication list
    (``peers``, underlay addresses) and the remote MACs it knows (``macs``: MAC, peer
    address, IPv4 or None).  See ``vnet.daemon.overlayplan``."""

    network: str
    ifname: str
    vni: int
    local: str
    mtu: int
    peers: tuple[str, ...]
    macs: tuple[tuple[str, str, str | None], ...]
    arp_proxy: bool
    alias: str

    @property
    def node(self) -> str:
        return naming.overlay_owner(self.network)

    @property
    def remote_macs(self) -> dict[str, tuple[str, str | None]]:
        return {mac: (address, ip) for mac, address, ip in self.macs}


@dataclass(frozen=True)
class OverlayFilterResource(LabResource, kind="overlay-filter"):
    """The lab's nftables table ``inet vnet-overlay-LAB``: VXLAN datagrams of the lab's VNIs
    are accepted only from the declared peers of each (``rules``: VNI, peer addresses)."""

    family: Literal["ip", "ip6"]
    rules: tuple[tuple[int, tuple[str, ...]], ...]


Resource = (BridgeResource | NetworkResource | GatewayResource | NatResource | DhcpResource
            | NetnsNodeResource | VmNodeResource | PortResource | DhcpLeaseResource
            | OverlayResource | OverlayFilterResource)
# Creation order; deletion runs in reverse.
KIND_ORDER = {BridgeResource.kind: 0, NetworkResource.kind: 0, GatewayResource.kind: 1,
              OverlayFilterResource.kind: 1, OverlayResource.kind: 2, NatResource.kind: 2,
              DhcpResource.kind: 3, NetnsNodeResource.kind: 4, VmNodeResource.kind: 4,
              PortResource.kind: 5, DhcpLeaseResource.kind: 6}
_CLASSES: dict[str, type[Resource]] = {
    c.kind: c for c in (BridgeResource, NetworkResource, GatewayResource, NatResource,
                        DhcpResource, NetnsNodeResource, VmNodeResource, PortResource,
                        DhcpLeaseResource, OverlayResource, OverlayFilterResource)}


def desired_resources(topology: Topology, host: str | None = None,
                      underlay_mtu: int = DEFAULT_UNDERLAY_MTU, *,
                      netns_prefix: str = naming.NETNS_PREFIX) -> list[Resource]:
    """The resources of ``topology`` on this host.  ``host`` is this vnetd's name (its
    config's ``host:``, ``vnetd --host``): a lab with ``hosts`` gets that host's part and its
    overlay, whose MTU follows ``underlay_mtu`` (of the interface holding the host's
    address); a lab without hosts is realised whole, whatever ``host`` is.  Node namespaces
    are ``NETNS_PREFIX-LAB-NODE`` (the config's ``netns_prefix``)."""
    lab = topology.name
    refuse_foreign_lab(topology, host)
    part = part_for_host(topology, host)
    overlays = overlay_plan(topology, host, underlay_mtu) if host is not None else {}
    resources: list[Resource] = [BridgeResource(lab, tuple(
        VlanOptions(n.vlan, n.mac_aging, n.mac_limit) for n in part.networks))]
    resources.extend(NetworkResource(lab, n.name, n.vlan, n.mode, n.uplink,
                                     tuple(sorted(n.uplinks.items())))
                     for n in part.networks)
    for network in part.gateways:
        resources.extend(_gateway(topology, network, overlays))
    if part.gateways:
        resources.append(NatResource(lab, natrules.ruleset(lab, [
            _nat_network(topology, n) for n in part.gateways])))
    resources.extend(_dhcp(topology, n) for n in part.gateways if n.dhcp is not None)
    for node in part.nodes:
        if node.kind == "netns":
            namespace = naming.netns_name(lab, node.name, netns_prefix)
            resources.append(_netns_node(topology, node, namespace, overlays))
            resources.extend(DhcpLeaseResource(lab, node.name, namespace, nic.name)
                             for nic in node.nics if nic.dhcp)
        else:
            resources.append(_vm_node(topology, node, overlays))
        resources.extend(_port(topology, node, nic) for nic in node.nics)
    resources.extend(_uplink_ports(topology, [
        (topology.network(name), uplink) for name, uplink in part.uplinks]))
    resources.extend(_overlay(topology, plan) for plan in overlays.values())
    resources.extend(_overlay_ports(topology, overlays))
    if overlays:
        resources.append(OverlayFilterResource(
            lab, "ip" if address_family(topology) == 4 else "ip6",
            tuple((p.vni, p.peer_addresses) for p in overlays.values())))
    return resources


def keep_recorded_namespaces(desired: list[Resource], realised: list[Resource]
                             ) -> list[Resource]:
    """``desired`` with each node that is already up in the namespace its record names: a
    changed ``netns_prefix`` reaches only nodes created after it, instead of re-creating
    (and so restarting) every node of a lab at its next up."""
    names = {(r.lab, r.node): r.netns for r in realised if isinstance(r, NetnsNodeResource)}
    return [replace(r, netns=names[r.lab, r.node])
            if isinstance(r, NetnsNodeResource | DhcpLeaseResource) and (r.lab, r.node) in names
            else r for r in desired]


def refuse_foreign_lab(topology: Topology, host: str | None) -> None:
    """A lab with hosts is realised only by the vnetds of those hosts."""
    names = [h.name for h in topology.hosts]
    if names and host not in names:
        raise HostError(
            f"lab {topology.name!r} runs on hosts {', '.join(names)}, and this vnetd is host "
            f"{host!r} (its config's host:, or vnetd --host NAME): bring the lab up on each of "
            f"those hosts, by a vnetd started with --host set to that host's name")


def _overlay(topology: Topology, overlay: OverlayPlan) -> OverlayResource:
    """A spanning network's vxlan netdev (its switch port: ``_overlay_ports``)."""
    return OverlayResource(
        topology.name, overlay.network, overlay.ifname, overlay.vni, overlay.local,
        overlay.mtu, overlay.peer_addresses,
        tuple((mac, address, ip) for mac, (address, ip) in overlay.fdb.items()),
        overlay.arp_proxy, naming.overlay_alias(topology.name, overlay.network))


def _overlay_ports(topology: Topology, overlays: dict[str, OverlayPlan]) -> list[PortResource]:
    return [PortResource(topology.name, naming.overlay_port_name(o.network), o.ifname,
                         "access", vlan=o.vlan, node=naming.overlay_owner(o.network))
            for o in overlays.values()]


def _netns_node(topology: Topology, node: Node, namespace: str,
                overlays: dict[str, OverlayPlan] | None = None) -> NetnsNodeResource:
    lab = topology.name
    return NetnsNodeResource(lab, node.name, namespace, tuple(
        VethSpec(nic=nic.name, host_ifname=naming.host_ifname(lab, node.name, nic.name),
                 mac=nic.mac, addresses=(str(nic.ip),) if nic.ip is not None else (),
                 alias=naming.owner_alias(lab, node.name, nic.name),
                 gateway=_default_gateway(topology, nic), dhcp=nic.dhcp,
                 mtu=_nic_mtu(nic, overlays or {}))
        for nic in node.nics))


def _nic_mtu(nic: Nic, overlays: dict[str, OverlayPlan]) -> int | None:
    """A NIC that carries a network spanning hosts gets that overlay's MTU (the smallest, if
    several), so that none of its frames is too big for the vxlan netdev."""
    mtus = [overlays[n].mtu for n in nic.networks if n in overlays]
    return min(mtus) if mtus else None


def _vm_node(topology: Topology, node: Node,
             overlays: dict[str, OverlayPlan] | None = None) -> VmNodeResource:
    lab = topology.name
    return VmNodeResource(lab, node.name, tuple(
        TapSpec(nic.name, naming.host_ifname(lab, node.name, nic.name), nic.mac,
                "dhcp" if nic.dhcp else str(nic.ip) if nic.ip is not None else None,
                naming.owner_alias(lab, node.name, nic.name), _default_gateway(topology, nic),
                _nic_mtu(nic, overlays or {}))
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


def _gateway(topology: Topology, network: Network,
             overlays: dict[str, OverlayPlan] | None = None) -> list[Resource]:
    """A NAT network's gateway and its switch port.  On a network that spans hosts its MAC
    is derived, so that the other hosts know it from the topology (``overlayplan``), and its
    MTU is the overlay's, so the host's stack never sends the overlay a frame too big.
    Elsewhere both stay the kernel's, as before (a lab's first up after an upgrade changes
    nothing)."""
    lab = topology.name
    assert network.subnet is not None and network.gateway is not None
    overlay = (overlays or {}).get(network.name)
    gateway = GatewayResource(
        lab, network.name, naming.gateway_ifname(lab, network.name),
        naming.gateway_port_ifname(lab, network.name),
        f"{network.gateway}/{network.subnet.prefixlen}", naming.gateway_alias(lab, network.name),
        *((naming.gateway_mac(lab, network.name), overlay.mtu) if overlay is not None else ()))
    port = PortResource(lab, naming.gateway_port_name(network.name), gateway.port_ifname, "access",
                        vlan=network.vlan, node=gateway.node)
    return [gateway, port]


def _nat_network(topology: Topology, network: Network) -> natrules.NatNetwork:
    assert network.subnet is not None
    forwards = tuple(natrules.PortForward(f.proto, f.port, _forward_address(topology, f, network),
                                          f.node_port) for f in network.forwards)
    return natrules.NatNetwork(network.name, network.subnet,
                               naming.gateway_ifname(topology.name, network.name),
                               network.uplink, forwards, network.reach)


def _forward_address(topology: Topology, forward: Forward, network: Network) -> IPv4Address:
    address = topology.forward_address(network, forward.node)
    if address is None:  # the loader refuses such a file; a topology built otherwise may not
        raise VnetError(f"network {network.name}: a forward goes to node {forward.node}, which "
                        f"has no fixed IPv4 address there; give its NIC an ip: or a DHCP lease "
                        f"(dhcp: {{leases: {{{forward.node}: ADDRESS}}}})")
    return address


def _dhcp(topology: Topology, network: Network) -> DhcpResource:
    assert network.dhcp is not None and network.subnet is not None
    hosts = []
    for node_name, address in sorted(network.dhcp.leases.items()):
        for nic in topology.node(node_name).nics:
            if nic.network == network.name:
                hosts.append((nic.mac, str(address), node_name))
    return DhcpResource(topology.name, network.name,
                        naming.gateway_ifname(topology.name, network.name), str(network.gateway),
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


def _uplink_ports(topology: Topology, here: list[tuple[Network, str]]) -> list[PortResource]:
    """One switch port per uplink of the bridged networks among ``here`` (network, interface
    on this host): an access port when one untagged network uses it, else a trunk of its
    tagged networks (native: the untagged one)."""
    uplinks: dict[str, list[Network]] = {}
    for network, uplink in here:
        if network.mode == "bridged":
            uplinks.setdefault(uplink, []).append(network)
    ports = []
    for uplink, networks in sorted(uplinks.items()):
        name = naming.uplink_port_name(uplink)
        untagged = [n.vlan for n in networks if not n.tagged]
        tagged = tuple(sorted(n.vlan for n in networks if n.tagged))
        if not tagged:
            ports.append(PortResource(topology.name, name, uplink, "access", vlan=untagged[0],
                                      node=""))
        else:
            ports.append(PortResource(topology.name, name, uplink, "trunk", allowed=tagged,
                                      native=untagged[0] if untagged else None, node=""))
    return ports


def is_datapath_kind(resource: Resource) -> bool:
    """Bridges and ports live in the datapath (a new one has none), the rest in the kernel."""
    return isinstance(resource, BridgeResource | PortResource)


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
    rebuilt_nodes = {(r.lab, r.node) for r in to_delete if isinstance(
        r, NetnsNodeResource | VmNodeResource | GatewayResource | OverlayResource)}
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
    if cls is NetworkResource:
        return NetworkResource(**{**data, "uplinks": tuple(tuple(u) for u in data["uplinks"])})
    if cls is PortResource:
        return PortResource(**{**data, "allowed": tuple(data.get("allowed", ()))})
    if cls is DhcpResource:
        return DhcpResource(**{**data, "hosts": tuple(tuple(h) for h in data["hosts"])})
    if cls is OverlayResource:
        return OverlayResource(**{**data, "peers": tuple(data["peers"]),
                                  "macs": tuple(tuple(m) for m in data["macs"])})
    if cls is OverlayFilterResource:
        return OverlayFilterResource(data["lab"], data["family"], tuple(
            (vni, tuple(peers)) for vni, peers in data["rules"]))
    if cls is VmNodeResource:
        return VmNodeResource(**{**data, "taps": tuple(TapSpec(**t) for t in data["taps"])})
    return cls(**data)
