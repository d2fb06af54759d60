"""Loading a topology file: YAML -> structural checks (the spec table) -> meaning -> model.

The structural pass (``fields.TOPOLOGY``) has already refused unknown keys, wrong types and
out-of-range numbers when ``_Builder`` runs; the builder checks what a schema cannot say:
references between networks and nodes, addresses and subnets; ``uniqueness`` what must be
unique across the lab; ``hostcheck`` where the parts of a multi-host lab are.  Every problem
is collected with its ``FILE:LINE: KEY.PATH:`` prefix and the whole list is raised as one
``TopologyError``, so a user fixes a file in one round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from vnet.errors import TopologyError
from vnet.kvm.slots import MAX_NICS
from vnet.topology import fields as fmt
from vnet.topology.expect import check_expectations
from vnet.topology.hostcheck import HostChecks
from vnet.topology.model import (
    Bus,
    Dhcp,
    Disk,
    Forward,
    FrozenMap,
    Network,
    Nic,
    Node,
    Topology,
    forward_address,
)
from vnet.topology.report import (
    INVALID,
    KeyPath,
    Reporter,
    clip,
    format_path,
    quote,
)
from vnet.topology.spec import Fields
from vnet.topology.uniqueness import check_unique
from vnet.topology.values import (
    derive_mac,
    parse_interface,
    parse_ipv4,
    parse_mac,
    parse_size,
    parse_subnet,
)
from vnet.topology.yamlsource import FileTooLarge, read_file, read_yaml


def load_topology(path: str | Path) -> Topology:
    """Read and check a topology file; relative paths in it resolve against its directory."""
    file = Path(path)
    try:
        text = read_file(file)
    except FileTooLarge as err:
        raise TopologyError([f"{file}:1: {err}"]) from None
    except UnicodeDecodeError as err:
        raise TopologyError([f"{file}:1: not UTF-8 text ({err.reason})"]) from None
    except OSError as err:
        raise TopologyError([f"{file}: cannot read: {err.strerror or err}"]) from None
    return parse_topology(text, source=str(path), base_dir=file.absolute().parent)


def parse_topology(text: str, source: str = "<string>", base_dir: Path | None = None) -> Topology:
    """Check ``text`` and build its ``Topology``, or raise ``TopologyError`` with every problem.

    ``source`` names the text in messages (and becomes ``Topology.source`` unless it is a
    ``<pseudo-name>``); relative paths resolve against ``base_dir`` (kept relative if None).
    """
    rep = Reporter(source)
    document = read_yaml(text, rep)
    top = fmt.TOPOLOGY.check(document, (), rep)
    topology = _Builder(rep, top, base_dir).build() if isinstance(top, Fields) else None
    if rep.problems or topology is None:
        raise TopologyError(rep.problems or [f"{source}:1: not a topology"])
    is_pseudo = source.startswith("<") and source.endswith(">")
    return replace(topology, source=None if is_pseudo else Path(source))


@dataclass
class _Port:
    """A NIC seen from one network it is in: for address and reference checks."""

    node: str
    nic: Nic
    path: KeyPath


class _Builder:
    """Checks the meaning of a structurally checked document and builds the model."""

    def __init__(self, rep: Reporter, top: Fields, base_dir: Path | None) -> None:
        self.rep, self.top, self.base_dir = rep, top, base_dir
        self.lab: str = top.get("name") or ""
        self.net_fields: dict[str, Any] = top.get("networks") or {}
        self.node_fields: dict[str, Any] = top.get("nodes") or {}
        self.hostchecks = HostChecks(rep, top)
        # A section that is itself wrong (reported) defines nothing we could check against.
        self.sections_ok = {s: s not in top.bad for s in ("networks", "nodes")}
        self.networks: dict[str, Network] = {}
        self.modes: dict[str, str | None] = {}  # None: the mode itself was wrong
        self.nodes: list[Node] = []
        self.ports: dict[str, list[_Port]] = {}  # network name -> NICs in it
        self.nic_paths: dict[tuple[str, str], KeyPath] = {}  # (node, NIC) -> its path
        self.forward_index: dict[str, list[int]] = {}  # network -> file index of forwards[i]
        self.access_index: dict[str, dict[str, list[_Port]]] = {}  # see access_ports

    def build(self) -> Topology | None:
        for name, fields in self.net_fields.items():
            if isinstance(fields, Fields):
                self.network(name, fields)
                self.hostchecks.check_network(fields)
                self.hostchecks.check_reach(name, fields, self.net_fields)
        for name, fields in self.node_fields.items():
            if isinstance(fields, Fields):
                self.node(name, fields)
                self.hostchecks.check_node(fields)
        hosts = self.hostchecks.hosts()
        self.hostchecks.check_bus()
        check_unique(self.rep, tuple(self.networks.values()), self.nodes, self.nic_paths,
                     self.forward_index)
        self.check_addresses()
        for network in self.networks.values():
            self.check_dhcp(network)
            self.check_forwards(network)
            self.check_reach(network)
        expect = check_expectations(self.rep, self.top.get("expect"), self.nodes, self.networks,
                                    nodes_ok=self.sections_ok["nodes"])
        bus = self.top.get("bus")
        if self.rep.problems:
            return None
        return Topology(
            name=self.lab, networks=tuple(self.networks.values()), nodes=tuple(self.nodes),
            hosts=hosts, expect=expect,
            bus=Bus(bus.get("broker"), bus.get("topic_root")) if bus is not None else None)

    # -- networks ---------------------------------------------------------------------------

    def network(self, name: str, f: Fields) -> None:
        path = f.path
        mode = f.get("mode")
        self.modes[name] = mode
        subnet = self.parse(parse_subnet, f, "subnet")
        gateway = self.parse(parse_ipv4, f, "gateway")
        if subnet is not None and mode == "nat":
            gateway = self.gateway(subnet, gateway, (*path, "gateway"))
        dhcp = self.dhcp(f.get("dhcp"), subnet, gateway) if f.ok("dhcp") else None
        forwards: list[Forward] = []
        indices = self.forward_index[name] = []
        for i, item in enumerate(f.get("forward") or ()):
            forward = self.forward(item, (*path, "forward", i)) if isinstance(
                item, Fields) else None
            if forward is not None:
                forwards.append(forward)
                indices.append(i)
        uplink = f.get("uplink")
        uplinks = FrozenMap({h: i for h, i in uplink.items() if i is not INVALID}
                            if isinstance(uplink, dict) else {})
        if f.ok("vlan") and mode is not None:
            self.networks[name] = Network(
                name=name, vlan=f.get("vlan"), mode=mode, subnet=subnet, gateway=gateway,
                uplink=uplink if isinstance(uplink, str) else None, host=f.get("host"),
                uplinks=uplinks, vni=f.get("vni"), tagged=f.get("tagged"), dhcp=dhcp,
                forwards=tuple(forwards),
                reach=tuple(r for r in f.get("reach") or () if r is not INVALID),
                mac_aging=float(f.get("mac_aging") or Network.mac_aging),
                mac_limit=f.get("mac_limit") or Network.mac_limit)

    def gateway(self, subnet: IPv4Network, gateway: IPv4Address | None,
                path: KeyPath) -> IPv4Address | None:
        if gateway is None:
            if subnet.num_addresses < 4:
                self.rep.error((*path[:-1], "subnet"), f"{subnet} is too small for a NAT "
                               "network: it needs a gateway and a node (use /30 or larger)")
                return None
            return subnet.network_address + 1
        if gateway not in subnet:
            self.rep.error(path, f"gateway {gateway} is outside the subnet {subnet}")
        elif not self.is_host(gateway, subnet):
            self.rep.error(path, f"gateway {gateway} is the subnet's network or broadcast "
                           "address")
        return gateway

    def dhcp(self, f: Fields, subnet: IPv4Network | None,
             gateway: IPv4Address | None) -> Dhcp | None:
        path = f.path
        bounds = [self.parse_at(parse_ipv4, text, (*path, "range", i))
                  for i, text in enumerate(f.get("range") or ())]
        leases: dict[str, IPv4Address] = {}
        owner: dict[IPv4Address, str] = {}
        for node, text in (f.get("leases") or {}).items():
            lease_path = (*path, "leases", node)
            if text is INVALID:
                continue
            self.reference("node", node, lease_path, key=True)
            address = self.parse_at(parse_ipv4, text, lease_path)
            if address is None:
                continue
            if subnet is not None and address not in subnet:
                self.rep.error(lease_path, f"lease {address} is outside the subnet {subnet}")
            elif address == gateway:
                self.rep.error(lease_path, f"lease {address} is the gateway's address")
            elif address in owner:
                self.rep.error(lease_path, f"lease {address} is also leased to "
                               f"{quote(owner[address])}")
            owner.setdefault(address, node)
            leases[node] = address
        if len(bounds) != 2 or None in bounds:
            return None
        start, end = bounds
        assert start is not None and end is not None
        range_path = (*path, "range")
        if subnet is not None and (start not in subnet or end not in subnet):
            self.rep.error(range_path, f"range {start} - {end} is not inside the subnet "
                           f"{subnet}")
        elif start > end:
            self.rep.error(range_path, f"range {start} - {end} is reversed: the first "
                           "address must not be above the last")
        elif gateway is not None and start <= gateway <= end:
            self.rep.error(range_path, f"range {start} - {end} includes the gateway {gateway}")
        elif subnet is not None and not (self.is_host(start, subnet)
                                         and self.is_host(end, subnet)):
            self.rep.error(range_path, f"range {start} - {end} includes the subnet's network "
                           "or broadcast address")
        return Dhcp(start, end, FrozenMap(leases))

    def forward(self, f: Fields, path: KeyPath) -> Forward | None:
        to = f.get("to")
        if to is None:
            return None
        node, _, port_text = to.partition(":")
        node_port = int(port_text)
        self.reference("node", node, (*path, "to"))
        if not 1 <= node_port <= 65535:
            self.rep.error((*path, "to"), f"port {node_port} is out of range 1..65535")
            return None
        if f.get("proto") is None or f.get("port") is None:
            return None
        return Forward(f.get("proto"), f.get("port"), node, node_port)

    # -- nodes ------------------------------------------------------------------------------

    def node(self, name: str, f: Fields) -> None:
        path = f.path
        host = f.get("host")
        nics = self.nics(name, f)
        kind = f.get("kind")
        if kind is None:
            return
        vm: dict[str, Any] = {}
        if kind == "vm":
            vm = {"vcpus": f.get("vcpus"), "restart": f.get("restart"),
                  "cmdline": f.get("cmdline")}
            memory = self.parse(parse_size, f, "memory")
            if memory is not None and memory < fmt.MIN_MEMORY:
                self.rep.error((*path, "memory"), f"{clip(str(f.get('memory')))} is too little "
                               "memory: a guest needs at least 16M")
            if len(nics) > MAX_NICS:
                self.rep.error((*path, "nics"), f"{len(nics)} NICs: a VM has at most "
                               f"{MAX_NICS} (carry several networks on a trunk NIC)")
            vm["memory"] = memory
            vm["kernel"] = self.kernel(f)
            if f.ok("initrd"):
                vm["initrd"] = self.path(f.get("initrd"), (*path, "initrd"))
            disk = f.get("disk")
            if isinstance(disk, str):
                vm["disk"] = Disk(self.path(disk, (*path, "disk")))
            elif isinstance(disk, Fields) and disk.ok("path"):
                vm["disk"] = Disk(self.path(disk.get("path"), (*disk.path, "path")),
                                  disk.get("readonly"))
            if None in (vm["vcpus"], vm["restart"], vm["memory"], vm["kernel"]):
                return
        self.nodes.append(Node(name=name, kind=kind, nics=nics, host=host, **vm))

    def kernel(self, f: Fields) -> str | None:
        kernel: str | None = f.get("kernel")
        if kernel is None:
            return None
        path = (*f.path, "kernel")
        if kernel.startswith("builtin:"):
            if not re.fullmatch(fmt.KERNEL_BUILTIN, kernel):
                self.rep.error(path, f"{quote(kernel)} must match {fmt.KERNEL_BUILTIN}")
                return None
            return kernel
        return str(self.path(kernel, path))

    def path(self, text: str, path: KeyPath) -> Path:
        if not text:
            self.rep.error(path, "the path is empty")
        elif "\x00" in text:
            self.rep.error(path, f"{quote(text)} holds a NUL character, which no file name can")
        file = Path(text)
        if self.base_dir is None or file.is_absolute():
            return file
        return self.base_dir / file

    def nics(self, node: str, f: Fields) -> tuple[Nic, ...]:
        out: list[Nic] = []
        first: dict[str, int] = {}
        for i, item in enumerate(f.get("nics") or ()):
            if not isinstance(item, Fields):
                continue
            name = item.get("name")
            if name is not None and name in first:
                self.rep.error((*item.path, "name"), f"NIC name {quote(name)} is already used by "
                               f"nics[{first[name]}] of this node")
                continue
            if name is not None:
                first[name] = i
            nic = self.nic(node, item)
            if nic is not None:
                out.append(nic)
        return tuple(out)

    def nic(self, node: str, f: Fields) -> Nic | None:
        path = f.path
        network, trunk, native = f.get("network"), f.get("trunk") or [], f.get("native")
        if network is not None:
            self.reference("network", network, (*path, "network"))
        for i, name in enumerate(trunk):
            if name is not INVALID:
                self.reference("network", name, (*path, "trunk", i))
        if native is not None:
            self.reference("network", native, (*path, "native"))
        ip_text, ip, dhcp = f.get("ip"), None, False
        if ip_text == "dhcp":
            dhcp = True
            self.check_dhcp_client(network, (*path, "ip"))
        elif ip_text is not None:
            ip = self.parse(parse_interface, f, "ip")
        mac = self.parse(parse_mac, f, "mac")
        name = f.get("name")
        if name is None or "mac" in f.bad:
            return None
        if mac is None:
            mac = derive_mac(self.lab, node, name)
        self.nic_paths[(node, name)] = path
        nic = Nic(name=name, mac=mac, network=network,
                  trunk=tuple(n for n in trunk if n is not INVALID), native=native, ip=ip,
                  dhcp=dhcp)
        for net in nic.networks:
            self.ports.setdefault(net, []).append(_Port(node, nic, path))
        return nic

    def check_dhcp_client(self, network: str | None, path: KeyPath) -> None:
        """``ip: dhcp`` needs an access port on a NAT network that serves DHCP."""
        if network is None:
            self.rep.error(path, "ip: dhcp needs an access port (network:), not a trunk")
            return
        fields = self.net_fields.get(network)
        mode = self.modes.get(network)
        if not isinstance(fields, Fields) or mode is None:
            return  # undefined or broken network: reported already
        if mode != "nat":
            self.rep.error(path, f"ip: dhcp needs a network with mode: nat; {quote(network)} is "
                           f"{mode}")
        elif "dhcp" not in fields:
            self.rep.error(path, f"network {quote(network)} serves no DHCP: give it "
                           "dhcp: {range: [FIRST, LAST]}, or give this NIC a static ip")

    # -- across the lab ---------------------------------------------------------------------

    def check_addresses(self) -> None:
        """Per network: addresses unique, inside the subnet, not the gateway."""
        for name, ports in self.ports.items():
            net = self.networks.get(name)
            owner: dict[Any, str] = {}
            for port in ports:
                ip = port.nic.ip
                if ip is None or (port.nic.is_trunk and port.nic.native != name):
                    continue
                where = format_path(port.path)
                ip_path = (*port.path, "ip")
                if ip.ip in owner:
                    self.rep.error(ip_path, f"{ip.ip} is already used in network {quote(name)} by "
                                   f"{owner[ip.ip]}")
                owner.setdefault(ip.ip, where)
                if net is not None and net.subnet is not None and isinstance(ip, IPv4Interface):
                    self.check_in_subnet(net, ip, ip_path)

    def check_in_subnet(self, net: Network, ip: IPv4Interface, path: KeyPath) -> None:
        assert net.subnet is not None
        if ip.ip not in net.subnet:
            self.rep.error(path, f"{ip} is outside the subnet {net.subnet} of network "
                           f"{quote(net.name)}")
        elif ip.network.prefixlen != net.subnet.prefixlen:
            self.rep.error(path, f"{ip} has prefix length /{ip.network.prefixlen} but network "
                           f"{quote(net.name)} has /{net.subnet.prefixlen}")
        elif not self.is_host(ip.ip, net.subnet):
            self.rep.error(path, f"{ip.ip} is the network or broadcast address of {net.subnet}")
        elif ip.ip == net.gateway:
            self.rep.error(path, f"{ip.ip} is the gateway of network {quote(net.name)}")

    def access_ports(self, network: str) -> dict[str, list[_Port]]:
        """The access NICs in ``network`` by node; built once, for leases and forwards to
        look their nodes up in."""
        index = self.access_index.get(network)
        if index is None:
            index = self.access_index[network] = {}
            for port in self.ports.get(network, []):
                if not port.nic.is_trunk:
                    index.setdefault(port.node, []).append(port)
        return index

    def check_dhcp(self, net: Network) -> None:
        """Leases go to nodes with a NIC in the network, and not to a taken address."""
        if net.dhcp is None:
            return
        static = {p.nic.ip.ip: p.node for p in self.ports.get(net.name, [])
                  if p.nic.ip is not None and not p.nic.is_trunk}
        for node, address in net.dhcp.leases.items():
            path = ("networks", net.name, "dhcp", "leases", node)
            if node not in self.node_fields:
                continue
            if node not in self.access_ports(net.name):
                self.rep.error(path, f"node {quote(node)} has no access NIC in network "
                               f"{quote(net.name)}")
            if address in static and static[address] != node:
                self.rep.error(path, f"lease {address} is the static address of node "
                               f"{quote(static[address])}")

    def check_forwards(self, net: Network) -> None:
        """A forward's node must have a known IPv4 address in the network."""
        for fw, i in zip(net.forwards, self.forward_index[net.name], strict=True):
            path = ("networks", net.name, "forward", i, "to")
            if fw.node not in self.node_fields:
                continue
            ports = self.access_ports(net.name).get(fw.node, [])
            if not ports:
                self.rep.error(path, f"node {quote(fw.node)} has no access NIC in network "
                               f"{quote(net.name)}")
            elif forward_address(net, fw.node, (p.nic for p in ports)) is None:
                self.rep.error(path, f"node {quote(fw.node)} has no fixed address in network "
                               f"{quote(net.name)}: give it a static ip or a dhcp lease")

    def check_reach(self, net: Network) -> None:
        """``reach`` names other NAT networks of this lab."""
        for i, name in enumerate(self.net_fields[net.name].get("reach") or ()):
            path = ("networks", net.name, "reach", i)
            if name is INVALID:
                continue
            if name == net.name:
                self.rep.error(path, f"network {quote(name)} reaching itself: its nodes always "
                               "reach each other; list other NAT networks")
            elif name not in self.net_fields:
                self.reference("network", name, path)
            elif self.modes.get(name) not in ("nat", None):
                self.rep.error(path, f"network {quote(name)} is {self.modes[name]}, not nat: only "
                               "NAT networks have a gateway to route between")

    # -- helpers ----------------------------------------------------------------------------

    def reference(self, kind: str, name: str, path: KeyPath, *, key: bool = False) -> None:
        """Report ``name`` unless the ``kind`` section defines it (or is itself broken)."""
        section = {"network": "networks", "node": "nodes"}[kind]
        defined: dict[str, Any] = {"networks": self.net_fields, "nodes": self.node_fields}[section]
        if name in defined or not self.sections_ok[section]:
            return
        report = self.rep.key_error if key else self.rep.error
        report(path, self.rep.undefined(kind, name, defined))

    def parse(self, parser: Any, f: Fields, key: str) -> Any:
        """``parser`` applied to a key's value or default; None if absent, wrong or refused."""
        return self.parse_at(parser, f.get(key), (*f.path, key))

    def parse_at(self, parser: Any, value: Any, path: KeyPath) -> Any:
        if value is INVALID or value is None:
            return None
        try:
            return parser(value)
        except ValueError as err:
            self.rep.error(path, str(err))
            return None

    @staticmethod
    def is_host(address: IPv4Address, subnet: IPv4Network) -> bool:
        if subnet.prefixlen >= 31:
            return True
        return address not in (subnet.network_address, subnet.broadcast_address)
