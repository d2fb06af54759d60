"""The picture of a lab (``vnet graph``): a small graph model, built from a topology file or
from a live lab's ``vnet status``, and its DOT text for graphviz.  Pure; rendering (``dot``)
is the CLI's.

The layout reads left to right: nodes (namespace nodes as rounded boxes, VMs as 3-D boxes,
with their state when live), then the switch with one box per network (VLAN, mode, subnet),
then what leads out (NAT gateways and bridged uplinks).  Each NIC is an edge in its network's
colour: thin for an access port, bold for a trunk's tagged VLANs, dashed for a trunk's
native (untagged) network.  In a lab with hosts each host is a cluster around its nodes,
gateways and uplinks, and the networks sit between the hosts, joined across them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vnet.topology.model import Topology


@dataclass(frozen=True)
class GraphNetwork:
    name: str
    vlan: int
    mode: str
    subnet: str | None = None
    gateway: str | None = None     # the NAT gateway's address
    host: str | None = None        # the host of the NAT gateway (labs with hosts)
    uplinks: tuple[tuple[str | None, str], ...] = ()   # (host or None, interface)
    tagged: bool = False           # bridged: tagged on the uplink
    dhcp: str | None = None        # "100-199" style range text
    forwards: tuple[str, ...] = ()  # "tcp/8080 → web:80"


@dataclass(frozen=True)
class GraphNic:
    name: str
    mode: str                       # access | trunk
    networks: tuple[str, ...]       # the access network, or the trunk's tagged networks
    native: str | None = None
    ip: str | None = None


@dataclass(frozen=True)
class GraphNode:
    name: str
    kind: str                       # netns | vm
    nics: tuple[GraphNic, ...]
    host: str | None = None
    state: str | None = None        # live labs only


@dataclass(frozen=True)
class LabGraph:
    name: str
    networks: tuple[GraphNetwork, ...]
    nodes: tuple[GraphNode, ...]
    hosts: tuple[str, ...] = ()
    live: bool = False


def from_topology(t: Topology) -> LabGraph:
    networks = []
    for n in t.networks:
        uplinks: tuple[tuple[str | None, str], ...] = tuple(n.uplinks.items())
        if n.uplink is not None:
            uplinks = ((n.host, n.uplink),)
        dhcp = (f"DHCP {n.dhcp.range_start}-{str(n.dhcp.range_end).rsplit('.', 1)[-1]}"
                if n.dhcp is not None else None)
        forwards = tuple(f"{f.proto}/{f.port} → {f.node}:{f.node_port}" for f in n.forwards)
        networks.append(GraphNetwork(
            n.name, n.vlan, n.mode, str(n.subnet) if n.subnet else None,
            str(n.gateway) if n.gateway else None, n.host, uplinks, n.tagged, dhcp, forwards))
    nodes = []
    for node in t.nodes:
        nics = []
        for nic in node.nics:
            ip = "dhcp" if nic.dhcp else str(nic.ip) if nic.ip is not None else None
            if nic.is_trunk:
                nics.append(GraphNic(nic.name, "trunk", nic.trunk, nic.native, ip))
            else:
                nics.append(GraphNic(nic.name, "access", (nic.network or "",), None, ip))
        nodes.append(GraphNode(node.name, node.kind, tuple(nics), node.host))
    return LabGraph(t.name, tuple(networks), tuple(nodes), tuple(h.name for h in t.hosts))


def from_status(lab: Mapping[str, Any]) -> LabGraph:
    """A live lab as ``vnet status`` describes it: the NICs' VLANs are mapped back to
    networks by VLAN ID; node states come along."""
    by_vlan = {n["vlan"]: n["name"] for n in lab.get("networks", [])}
    networks = []
    for n in lab.get("networks", []):
        uplink = n.get("uplink")
        uplinks: tuple[tuple[str | None, str], ...] = ()
        if isinstance(uplink, dict):
            uplinks = tuple(uplink.items())
        elif uplink:
            uplinks = ((None, str(uplink)),)
        gateway = n.get("gateway")
        networks.append(GraphNetwork(
            n["name"], n["vlan"], n["mode"],
            subnet=_subnet_of(gateway), gateway=gateway.split("/")[0] if gateway else None,
            uplinks=uplinks))
    nodes = []
    for node in lab.get("nodes", []):
        nics = []
        for nic in node.get("nics", []):
            ip = ",".join(nic.get("ip") or []) or None
            native = by_vlan.get(nic.get("native")) if nic.get("native") else None
            names = tuple(by_vlan.get(v, f"VLAN {v}") for v in nic.get("vlans", [])
                          if by_vlan.get(v) != native)
            nics.append(GraphNic(nic["name"], nic.get("mode") or "access", names, native, ip))
        nodes.append(GraphNode(node["name"], node["kind"], tuple(nics),
                               state=node.get("state")))
    return LabGraph(lab["name"], tuple(networks), tuple(nodes), live=True)


def _subnet_of(gateway: str | None) -> str | None:
    if not gateway or "/" not in gateway:
        return None
    from ipaddress import ip_interface

    return str(ip_interface(gateway).network)


# -- DOT ----------------------------------------------------------------------------------

PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f")
NAMED = {"red": "#d62728", "blue": "#1f77b4", "green": "#2ca02c", "orange": "#ff7f0e",
         "purple": "#9467bd", "brown": "#8c564b", "pink": "#e377c2", "cyan": "#17becf",
         "olive": "#bcbd22", "grey": "#7f7f7f", "gray": "#7f7f7f"}
STATE_COLOURS = {"running": "#2ca02c", "stopped": "#7f7f7f", "crashed": "#d62728",
                 "missing": "#d62728", "starting": "#ff7f0e"}
MODE_TEXT = {"isolated": "isolated", "nat": "NAT", "bridged": "bridged"}
GRAPH_STYLE = {"rankdir": "LR", "labelloc": "t", "fontsize": "18", "fontname": "Helvetica",
               "nodesep": "0.25", "ranksep": "1.0", "newrank": "true"}
HOST_STYLE = {"style": "rounded,dashed", "color": "#555555", "fontsize": "14"}
SWITCH_STYLE = {"style": "rounded,filled", "fillcolor": "#f4f4f4", "color": "#999999",
                "fontsize": "12"}
GATEWAY_STYLE = {"shape": "box", "style": "filled", "peripheries": "2", "fillcolor": "#fdf0d5"}
UPLINK_STYLE = {"shape": "cds", "style": "filled", "fillcolor": "#e8f5e9"}


def colours(networks: Sequence[GraphNetwork]) -> dict[str, str]:
    """A colour per network: its own name when that is a colour, else the next unused one."""
    out = {n.name: NAMED[n.name] for n in networks if n.name in NAMED}
    free = [c for c in PALETTE if c not in out.values()] or list(PALETTE)
    for n in networks:
        if n.name not in out:
            out[n.name] = free[len([k for k in out if k not in NAMED]) % len(free)]
    return out


def quote(text: str) -> str:
    """A DOT double-quoted string; ``\\n`` in ``text`` (a real newline) becomes a line break."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**attrs: str) -> str:
    return "[" + ", ".join(f"{k}={quote(v)}" for k, v in attrs.items()) + "]"


def node_id(name: str) -> str:
    return quote(f"node:{name}")


def network_id(name: str) -> str:
    return quote(f"net:{name}")


def to_dot(g: LabGraph) -> str:
    """The DOT text of the lab's picture (deterministic: the model's order)."""
    colour = colours(g.networks)
    vlans = {n.name: n.vlan for n in g.networks}
    title = f"lab {g.name}" + (" (live: node states from vnetd)" if g.live else "")
    lines = [f"graph {quote(g.name)} {{",
             f"  graph {_attrs(**GRAPH_STYLE)};",
             f"  graph [label=<<b>{_html(title)}</b><br/>"
             f"<font point-size=\"10\">{_html(LEGEND)}</font>>];",
             f"  node {_attrs(fontname='Helvetica', fontsize='11')};",
             f"  edge {_attrs(fontname='Helvetica', fontsize='9')};"]
    lines.append(f"  subgraph {quote('cluster_switch')} {{")
    switch = "switch (VXLAN between hosts)" if len(g.hosts) > 1 else "vnet switch (802.1Q)"
    lines.append(f"    graph {_attrs(label=switch, **SWITCH_STYLE)};")
    for n in g.networks:
        lines.append(f"    {network_id(n.name)} {_network_attrs(n, colour[n.name])};")
    lines.append("  }")
    # Every node is declared in its host's cluster before any edge names it (a node that an
    # edge names first belongs to the subgraph of that edge).
    by_host: dict[str | None, list[str]] = {h: [] for h in g.hosts}
    for node in g.nodes:
        by_host.setdefault(node.host if g.hosts else None, []).append(_node_line(node))
    exit_edges = []
    for n in g.networks:
        for host, line, is_edge in _exits(n, colour[n.name]):
            if is_edge:
                exit_edges.append(line)
            else:
                by_host.setdefault(host if g.hosts else None, []).append(line)
    for host, members in by_host.items():
        if host is None:
            lines += [f"  {m}" for m in members]
        elif members:
            lines.append(f"  subgraph {quote('cluster_host_' + host)} {{")
            lines.append(f"    graph {_attrs(label=f'host {host}', **HOST_STYLE)};")
            lines += [f"    {m}" for m in members]
            lines.append("  }")
    lines += [f"  {e}" for e in exit_edges]
    for node in g.nodes:
        for nic in node.nics:
            lines += [f"  {e}" for e in _nic_edges(node, nic, colour, vlans)]
    lines.append("}")
    return "\n".join(lines) + "\n"


LEGEND = ("rounded box: namespace node    3-D box: VM    thin line: access port (untagged)    "
          "bold line: trunk, tagged    dashed line: native network of a trunk (untagged)")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _node_line(node: GraphNode) -> str:
    label = node.name + ("\nnamespace" if node.kind == "netns" else "\nVM")
    attrs = {"label": label}
    if node.kind == "vm":
        attrs.update(shape="box3d", style="filled", fillcolor="#fff6e0")
    else:
        attrs.update(shape="box", style="rounded,filled", fillcolor="#eef4fb")
    if node.state is not None:
        attrs["label"] += f"\n[{node.state}]"
        attrs["color"] = STATE_COLOURS.get(node.state, "#ff7f0e")
        attrs["penwidth"] = "2"
    return f"{node_id(node.name)} {_attrs(**attrs)};"


def _network_attrs(n: GraphNetwork, colour: str) -> str:
    lines = [n.name, f"VLAN {n.vlan} · {MODE_TEXT.get(n.mode, n.mode)}"]
    if n.subnet:
        lines.append(n.subnet)
    if n.dhcp:
        lines.append(n.dhcp)
    return _attrs(label="\n".join(lines), shape="box", style="rounded,filled,bold",
                  fillcolor="white", color=colour, fontcolor=colour, penwidth="2.5")


def _exits(n: GraphNetwork, colour: str) -> list[tuple[str | None, str, bool]]:
    """(host, DOT line, is it an edge) for what leads out of network ``n``: its NAT gateway
    and uplink, or its bridged uplinks, with the edges that join them to the network."""
    out: list[tuple[str | None, str, bool]] = []
    net = network_id(n.name)
    if n.mode == "nat":
        gw = quote(f"gw:{n.name}")
        label = ["NAT gateway", *([n.gateway] if n.gateway else []),
                 *(f"forward {f}" for f in n.forwards)]
        gw_attrs = _attrs(label="\n".join(label), color=colour, **GATEWAY_STYLE)
        out.append((n.host, f"{gw} {gw_attrs};", False))
        out.append((n.host, f"{net} -- {gw} {_attrs(color=colour, penwidth='2')};", True))
        up = quote(f"uplink:{n.name}:{n.host or ''}")
        ifname = n.uplinks[0][1] if n.uplinks else None
        text = f"host interface {ifname}" if ifname else "the host's default route"
        up_attrs = _attrs(label=f"{text}\nmasquerade", color=colour, **UPLINK_STYLE)
        out.append((n.host, f"{up} {up_attrs};", False))
        out.append((n.host, f"{gw} -- {up} {_attrs(color=colour, penwidth='2')};", True))
    elif n.mode == "bridged":
        for host, ifname in n.uplinks:
            up = quote(f"uplink:{n.name}:{host or ''}")
            tag = f"tagged {n.vlan}" if n.tagged else "untagged"
            text = f"host interface {ifname}\nbridged, {tag}"
            out.append((host, f"{up} {_attrs(label=text, color=colour, **UPLINK_STYLE)};", False))
            out.append((host, f"{net} -- {up} {_attrs(color=colour, penwidth='2')};", True))
    return out


def _nic_edges(node: GraphNode, nic: GraphNic, colour: Mapping[str, str],
               vlans: Mapping[str, int]) -> list[str]:
    edges = []
    ip = f"\n{nic.ip}" if nic.ip else ""
    for network in nic.networks:
        c = colour.get(network, "#000000")
        if nic.mode == "access":
            attrs = _attrs(label=f"{nic.name}{ip}", color=c, fontcolor=c, penwidth="1.5")
        else:
            attrs = _attrs(label=f"{nic.name} tagged {vlans.get(network, '?')}", color=c,
                           fontcolor=c, penwidth="4")
        edges.append(f"{node_id(node.name)} -- {network_id(network)} {attrs};")
    if nic.native is not None:
        c = colour.get(nic.native, "#000000")
        attrs = _attrs(label=f"{nic.name} native{ip}", color=c, fontcolor=c, style="dashed",
                       penwidth="2")
        edges.append(f"{node_id(node.name)} -- {network_id(nic.native)} {attrs};")
    return edges


def to_json(g: LabGraph) -> dict[str, Any]:
    """The graph's parts as plain data (``vnet graph --json``)."""
    return {"name": g.name, "live": g.live, "hosts": list(g.hosts),
            "networks": [{"name": n.name, "vlan": n.vlan, "mode": n.mode, "subnet": n.subnet,
                          "gateway": n.gateway, "host": n.host,
                          "uplinks": [{"host": h, "interface": i} for h, i in n.uplinks],
                          "tagged": n.tagged, "dhcp": n.dhcp, "forwards": list(n.forwards)}
                         for n in g.networks],
            "nodes": [{"name": node.name, "kind": node.kind, "host": node.host,
                       "state": node.state,
                       "nics": [{"name": nic.name, "mode": nic.mode,
                                 "networks": list(nic.networks), "native": nic.native,
                                 "ip": nic.ip} for nic in node.nics]}
                      for node in g.nodes]}
