"""From an expectation and the live lab to what a check needs: the namespace to run in, the
NIC to send from and the address to aim at.  Pure: the live lab is ``vnet status``'s dict,
and addresses that only the running lab knows (DHCP) come from ``lookup``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vnet.topology.expect import source_nic, static_address, target_nics
from vnet.topology.model import Expectation, Topology


@dataclass(frozen=True)
class Probe:
    """A check ready to run (``problem`` None) or the reason it cannot run."""

    expectation: Expectation
    netns: str = ""
    ifname: str = ""
    mac: str = ""
    address: str = ""
    problem: str | None = None


Lookup = Callable[[str, str], str | None]   # (netns, NIC name) -> its IPv4 address, live


def plan(e: Expectation, topology: Topology, lab: Mapping[str, Any], lookup: Lookup) -> Probe:
    """``lab``: this lab's entry of ``vnet status`` (nodes with netns, state and NICs)."""
    live = {node["name"]: node for node in lab.get("nodes", [])}
    source = topology.node(e.source)
    networks = {n.name: n for n in topology.networks}
    nic = source_nic(e, source, networks)
    here = live.get(e.source)
    if nic is None:  # the loader refused such a file; a caller may build one by hand
        return Probe(e, problem=f"node {e.source} has no NIC to send from")
    if here is None or here.get("state") != "running":
        state = "not in the running lab" if here is None else here.get("state")
        return Probe(e, problem=f"node {e.source} is {state}: bring the lab up "
                     f"(vnet up FILE) with this file")
    mac = next((n["mac"] for n in here["nics"] if n["name"] == nic.name), "")
    if not e.target_is_node:
        return Probe(e, here["netns"], nic.name, mac, e.target)
    target = topology.node(e.target)
    there = live.get(e.target)
    for candidate in target_nics(e, target, networks, prefer=nic.network):
        address = static_address(candidate, networks.get(candidate.network or ""), target.name)
        if address is None and there is not None:
            address_text = _live_address(there, candidate.name, lookup)
        else:
            address_text = str(address) if address is not None else None
        if address_text:
            return Probe(e, here["netns"], nic.name, mac, address_text)
    return Probe(e, problem=f"no IPv4 address of node {e.target} is known (DHCP: is the node "
                 f"up and did it get its lease?)")


def _live_address(node: Mapping[str, Any], nic: str, lookup: Lookup) -> str | None:
    """The address of a DHCP NIC now: what vnetd reports (VMs), else asked of the node."""
    for described in node.get("nics", []):
        if described["name"] == nic:
            for ip in described.get("ip", []):
                if ip != "dhcp":
                    return str(ip).split("/")[0]
    if node.get("kind") == "netns" and node.get("netns"):
        return lookup(node["netns"], nic)
    return None
