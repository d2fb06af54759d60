"""The checks of a multi-host lab: hosts, the bus, and where nodes, gateways and uplinks are.

A lab either declares no ``hosts`` (everything runs on the one host that brings it up, as
before hosts existed) or declares them, and then says where everything is: each node names
its ``host``, each NAT network the host of its gateway, each bridged network its uplinks per
host (``uplink: {h1: eth2}``).  There is no default host: a node silently placed on the
first host is a surprise to debug on another machine, so a missing ``host:`` is an error, as
a logical port without a chassis is in OVN.  Naming a host in a lab that declares none is an
error that says to declare them.

The checks read the structurally checked fields (``Fields``), so a node whose ``kind`` is
wrong still gets its ``host`` checked, and nothing is said when the ``hosts`` section itself
is broken (its names are unknown).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

from vnet.topology.model import Host
from vnet.topology.report import INVALID, Reporter, quote
from vnet.topology.spec import Fields
from vnet.topology.values import parse_broker, parse_ip

_DECLARE = ("declare the hosts under hosts: (e.g. hosts: {h1: {address: 10.0.0.1}}), or remove "
            "host: for a lab on one host")


class HostChecks:
    """Reports what is wrong with the placement of a lab's parts; builds its ``Host``s."""

    def __init__(self, rep: Reporter, top: Fields) -> None:
        self.rep = rep
        self.host_fields: dict[str, Any] = top.get("hosts") or {}
        self.names = list(self.host_fields)
        self.known = "hosts" not in top.bad  # a broken section: its names are unknown
        self.multi = bool(self.names)
        self.top = top

    # -- hosts and bus ----------------------------------------------------------------------

    def hosts(self) -> tuple[Host, ...]:
        out: list[Host] = []
        owner: dict[IPv4Address | IPv6Address, str] = {}
        family: tuple[int, str] | None = None
        for name, f in self.host_fields.items():
            if not isinstance(f, Fields) or not f.ok("address"):
                continue
            path = (*f.path, "address")
            try:
                address = parse_ip(f.get("address"))
            except ValueError as err:
                self.rep.error(path, str(err))
                continue
            if address.is_unspecified or address.is_multicast or (
                    isinstance(address, IPv6Address) and address.is_link_local):
                self.rep.error(path, f"{address} cannot carry VXLAN between hosts: give the "
                               "unicast address this host sends from (not unspecified, "
                               "multicast or IPv6 link-local)")
            elif address in owner:
                self.rep.error(path, f"{address} is already the address of host "
                               f"{quote(owner[address])}: each host needs its own")
            elif family is not None and address.version != family[0]:
                self.rep.error(path, f"{address} is IPv{address.version} but host "
                               f"{quote(family[1])} has an IPv{family[0]} address: all hosts of a "
                               "lab need the same address family (VXLAN does not cross it)")
            owner.setdefault(address, name)
            family = family or (address.version, name)
            out.append(Host(name, str(address), f.get("description")))
        return tuple(out)

    def check_bus(self) -> None:
        bus = self.top.get("bus")
        if isinstance(bus, Fields) and bus.ok("broker"):
            try:
                parse_broker(bus.get("broker"))
            except ValueError as err:
                self.rep.error((*bus.path, "broker"), str(err))
        if len(self.names) >= 2 and "bus" not in self.top:
            self.rep.error(("bus",), f"required with two or more hosts ({len(self.names)} "
                           "are declared): the MQTT broker that connects them, e.g. bus: "
                           "{broker: mqtt://10.0.0.254:1883}", line=self.rep.line(("hosts",)))

    # -- nodes and networks -----------------------------------------------------------------

    def check_node(self, f: Fields) -> None:
        if "host" in f:
            self.check_reference(f, "host")
        elif self.multi and self.known:
            self.rep.missing((*f.path, "host"), "required: this lab declares hosts, so each "
                             f"node names the one that runs it ({self.choices})")

    def check_network(self, f: Fields) -> None:
        mode = f.get("mode")
        if "host" in f:
            self.check_reference(f, "host")
        elif mode == "nat" and self.multi and self.known:
            self.rep.missing((*f.path, "host"), "required with mode: nat in a lab with "
                             f"hosts: the host that holds the gateway ({self.choices})")
        uplink = f.get("uplink")
        if not f.ok("uplink") or mode not in ("nat", "bridged"):
            return
        path = (*f.path, "uplink")
        if isinstance(uplink, dict):
            example = next((v for v in uplink.values() if v is not INVALID), "IFNAME")
            if mode == "nat":
                self.rep.error(path, "a NAT network's uplink is on its gateway's host "
                               f"(host:), so it names no host: write uplink: {example}")
            elif not self.multi:
                if self.known:
                    self.rep.error(path, "names hosts, but this lab declares none: write "
                                   f"uplink: {example}")
            elif not uplink:
                self.rep.error(path, "names no host: give at least one, e.g. uplink: "
                               f"{{{self.names[0]}: eth2}}")
            elif self.known:
                for host in uplink:
                    if host not in self.host_fields:
                        self.rep.key_error((*path, host),
                                           self.rep.undefined("host", host, self.names))
        elif mode == "bridged" and self.multi:
            self.rep.error(path, "say on which host: in a lab with hosts a bridged network's "
                           f"uplink maps hosts to interfaces, e.g. uplink: {{{self.names[0]}: "
                           f"{uplink}}}")

    def check_reach(self, name: str, f: Fields, networks: dict[str, Any]) -> None:
        """Networks that reach each other are routed by one gateway host."""
        host = f.get("host")
        for i, other in enumerate(f.get("reach") or ()):
            theirs = networks.get(other)
            if host is None or not isinstance(theirs, Fields) or theirs.get("mode") != "nat":
                continue
            if theirs.get("host") not in (None, host):
                self.rep.error((*f.path, "reach", i), f"network {quote(other)} has its gateway "
                               f"on host {quote(theirs.get('host'))}, {quote(name)} on "
                               f"{quote(host)}: NAT networks that reach each other need their "
                               "gateways on one host")

    def check_reference(self, f: Fields, key: str) -> None:
        name = f.get(key)
        if name is None or not self.known:
            return
        path = (*f.path, key)
        if not self.multi:
            self.rep.error(path, f"host {quote(name)} is not defined: this lab declares no hosts "
                           f"({_DECLARE})")
        elif name not in self.host_fields:
            self.rep.error(path, self.rep.undefined("host", name, self.names))

    @property
    def choices(self) -> str:
        return "one of " + ", ".join(self.names)
