"""The meaning of a topology's ``expect:`` block, and which NIC and address each check uses.

The structure (keys, types, exactly one of ping/tcp/arp) is checked by ``fields.EXPECT``;
here: the nodes exist, the source can run a check (a namespace node with an address), the
target has an address to aim at, and a ``vlan:`` is one the source's trunk carries.  The
choice of NIC and address (``source_nic``, ``target_nics``) is pure and shared by the check
and by ``vnet test``, so a file that passes ``vnet check`` is one ``vnet test`` can run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, ip_address
from typing import Any

from vnet.topology.model import Check, Expectation, Network, Nic, Node
from vnet.topology.report import Reporter
from vnet.topology.spec import Fields

MAX_WINDOW = 60.0


def check_expectations(rep: Reporter, items: Sequence[Any] | None, nodes: Sequence[Node],
                       networks: Mapping[str, Network],
                       nodes_ok: bool = True) -> tuple[Expectation, ...]:
    """The checked expectations; every problem goes to ``rep`` (then the result is partial).

    ``nodes_ok``: False when the nodes section itself was wrong, so that a reference to a
    node is not reported as undefined on top of that."""
    by_name = {node.name: node for node in nodes}
    out = []
    for item in items or ():
        if isinstance(item, Fields):
            expectation = _one(rep, item, by_name, networks, nodes_ok)
            if expectation is not None:
                out.append(expectation)
    return tuple(out)


def _one(rep: Reporter, f: Fields, nodes: Mapping[str, Node],
         networks: Mapping[str, Network], nodes_ok: bool) -> Expectation | None:
    path = f.path
    checks: tuple[Check, ...] = ("ping", "tcp", "arp")
    check = next((c for c in checks if f.ok(c)), None)
    source_name, target = f.get("from"), f.get("to")
    window = f.get("within")
    if window is not None and window > MAX_WINDOW:
        rep.error((*path, "within"), f"{window:g} s is too long: at most {MAX_WINDOW:g} s")
    if check is None or source_name is None or target is None or window is None:
        return None
    want = bool(f.get("connects")) if check == "tcp" else bool(f.get(check))
    expectation = Expectation(
        source=source_name, target=target, check=check, want=want,
        target_is_node=not _is_address(target), port=f.get("tcp") if check == "tcp" else None,
        vlan=f.get("vlan") if check == "arp" else None, window=window)
    problems = len(rep.problems)
    source = nodes.get(source_name)
    if source is None:
        if nodes_ok:
            rep.error((*path, "from"), rep.undefined("node", source_name, nodes))
    elif source.kind != "netns":
        rep.error((*path, "from"), f"node {source_name} is a VM: checks run in namespace "
                  f"nodes; turn the expectation around (from a namespace node to {source_name})")
    elif source_nic(expectation, source, networks) is None:
        rep.error((*path, "from"), _no_source_nic(expectation, source, networks))
    if expectation.target_is_node:
        _check_target_node(rep, expectation, f, nodes, networks, nodes_ok)
    return expectation if len(rep.problems) == problems else None


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _check_target_node(rep: Reporter, e: Expectation, f: Fields, nodes: Mapping[str, Node],
                       networks: Mapping[str, Network], nodes_ok: bool) -> None:
    path = (*f.path, "to")
    target = nodes.get(e.target)
    if target is None:
        if nodes_ok:
            rep.error(path, rep.undefined("node", e.target, nodes) + " (or give an IP address)")
        return
    if not target_nics(e, target, networks):
        where = f" in VLAN {e.vlan}" if e.vlan is not None else ""
        rep.error(path, f"node {e.target} has no IPv4 address{where} to aim at (an access NIC "
                  f"with ip: ADDRESS/PREFIX or dhcp); give an IP address instead")


def vlan_network(vlan: int, networks: Mapping[str, Network]) -> Network | None:
    return next((n for n in networks.values() if n.vlan == vlan), None)


def source_nic(e: Expectation, node: Node, networks: Mapping[str, Network]) -> Nic | None:
    """The NIC of ``node`` that a check sends from: the trunk that carries ``e.vlan``, else
    the first access NIC with an IPv4 address (static or by DHCP)."""
    if e.vlan is not None:
        network = vlan_network(e.vlan, networks)
        return next((nic for nic in node.nics if nic.is_trunk and network is not None
                     and network.name in nic.trunk), None)
    return next((nic for nic in node.nics if _has_ipv4(nic)), None)


def _no_source_nic(e: Expectation, node: Node, networks: Mapping[str, Network]) -> str:
    if e.vlan is None:
        return (f"node {node.name} has no access NIC with an IPv4 address to send from; a "
                f"trunk sends tagged only with arp and vlan: VLAN_ID")
    network = vlan_network(e.vlan, networks)
    if network is None:
        vlans = ", ".join(str(n.vlan) for n in networks.values())
        return f"no network of the lab has VLAN {e.vlan} (VLANs: {vlans})"
    trunks = [nic for nic in node.nics if nic.is_trunk]
    if not trunks:
        return (f"vlan: {e.vlan} needs a trunk NIC, and node {node.name} has none (vlan: is "
                f"for sending tagged from a trunk)")
    carried = sorted({networks[n].vlan for nic in trunks for n in nic.trunk if n in networks})
    return (f"node {node.name}'s trunk does not carry VLAN {e.vlan} ({network.name}); it "
            f"carries {', '.join(str(v) for v in carried)}")


def target_nics(e: Expectation, node: Node, networks: Mapping[str, Network],
                prefer: str | None = None) -> list[Nic]:
    """The target's NICs with an IPv4 address (in ``e.vlan``'s network when given), those in
    network ``prefer`` (the source's) first: the address the source reaches directly."""
    nics = [nic for nic in node.nics if _has_ipv4(nic)]
    if e.vlan is not None:
        network = vlan_network(e.vlan, networks)
        return [nic for nic in nics if network is not None and nic.network == network.name]
    return sorted(nics, key=lambda nic: nic.network != prefer)


def _has_ipv4(nic: Nic) -> bool:
    return nic.network is not None and (nic.dhcp or isinstance(nic.ip, IPv4Interface))


def static_address(nic: Nic, network: Network | None, node: str) -> IPv4Address | None:
    """A NIC's IPv4 address as the file says it: static, else its DHCP lease; None when
    only the live lab knows it (DHCP without a lease)."""
    if isinstance(nic.ip, IPv4Interface):
        return nic.ip.ip
    if network is not None and network.dhcp is not None:
        return network.dhcp.leases.get(node)
    return None
