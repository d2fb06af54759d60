"""Node namespaces are PREFIX-LAB-NODE, PREFIX being vnetd's netns_prefix; a node already up
keeps the namespace its record names when the prefix changes."""

from __future__ import annotations

from vnet.daemon import naming
from vnet.daemon.resources import (
    DhcpLeaseResource,
    NetnsNodeResource,
    Resource,
    desired_resources,
    keep_recorded_namespaces,
    plan,
)
from vnet.topology import parse_topology

TOPOLOGY = """\
name: pfx
networks:
  lan: {vlan: 10, mode: nat, subnet: 192.168.30.0/24,
        dhcp: {range: [192.168.30.100, 192.168.30.199]}}
nodes:
  a: {kind: netns, nics: [{name: eth0, network: lan, ip: 192.168.30.10/24}]}
  b: {kind: netns, nics: [{name: eth0, network: lan, ip: dhcp}]}
"""


def namespaces(resources: list[Resource]) -> dict[str, str]:
    """Node (for a lease: node.nic) -> the namespace its resource names."""
    return {**{r.node: r.netns for r in resources if isinstance(r, NetnsNodeResource)},
            **{f"{r.node}.{r.nic}": r.netns for r in resources
               if isinstance(r, DhcpLeaseResource)}}


def test_node_namespaces_take_the_prefix() -> None:
    topology = parse_topology(TOPOLOGY)
    assert namespaces(desired_resources(topology)) == {
        "a": "vnet-pfx-a", "b": "vnet-pfx-b", "b.eth0": "vnet-pfx-b"}
    assert namespaces(desired_resources(topology, netns_prefix="t-1a2b")) == {
        "a": "t-1a2b-pfx-a", "b": "t-1a2b-pfx-b", "b.eth0": "t-1a2b-pfx-b"}
    assert naming.netns_name("pfx", "a") == "vnet-pfx-a"


def test_a_changed_prefix_leaves_the_nodes_that_are_up_alone() -> None:
    before = parse_topology(TOPOLOGY)
    realised = desired_resources(before)                    # up under the default prefix
    after = parse_topology(TOPOLOGY.replace(
        "nodes:\n", "nodes:\n  c: {kind: netns, nics: [{name: eth0, network: lan}]}\n"))
    desired = keep_recorded_namespaces(desired_resources(after, netns_prefix="new"), realised)
    assert namespaces(desired) == {"a": "vnet-pfx-a", "b": "vnet-pfx-b",
                                   "b.eth0": "vnet-pfx-b", "c": "new-pfx-c"}
    work = plan(desired, realised)
    assert work.delete == [] and namespaces(work.create) == {"c": "new-pfx-c"}
