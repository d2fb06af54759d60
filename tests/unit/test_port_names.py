"""Switch port names: a node's port can never have the name of a port that is not a node's
(a bridged network's uplink, a NAT network's gateway), whatever the nodes are called."""

from __future__ import annotations

import re

from vnet.daemon import naming
from vnet.daemon.resources import PortResource, desired_resources
from vnet.topology import parse_topology
from vnet.topology.fields import NAME

# A node called "uplink" with a NIC eth2, a bridged network on uplink eth2; a node called
# like a gateway's owner without the "@"; a NAT network called "uplink"; every kind of port.
TOPOLOGY = """\
name: names
networks:
  lan: {vlan: 10, mode: bridged, uplink: eth2}
  tlan: {vlan: 11, mode: bridged, uplink: eth3, tagged: true}
  uplink: {vlan: 20, mode: nat, subnet: 192.168.20.0/24, uplink: eth1}
nodes:
  uplink: {kind: netns, nics: [{name: eth2, network: lan, ip: 198.51.100.10/24},
                               {name: eth3, network: tlan, ip: 198.51.101.10/24}]}
  gw-uplink: {kind: netns, nics: [{name: port, network: uplink, ip: 192.168.20.10/24}]}
  vm1: {kind: vm, memory: 16M, nics: [{name: eth2, network: lan, ip: 198.51.100.11/24}]}
"""


def ports() -> list[PortResource]:
    return [r for r in desired_resources(parse_topology(TOPOLOGY))
            if isinstance(r, PortResource)]


def test_a_node_called_uplink_and_the_uplink_get_different_ports() -> None:
    names = [p.name for p in ports()]
    assert len(names) == len(set(names)), names
    by_ifname = {p.ifname: p.name for p in ports()}
    assert by_ifname["eth2"] != by_ifname[naming.host_ifname("names", "uplink", "eth2")]
    assert by_ifname[naming.host_ifname("names", "uplink", "eth2")] == "uplink.eth2"
    assert by_ifname["eth2"] == naming.uplink_port_name("eth2")


def test_every_port_that_is_not_a_nodes_has_a_name_no_node_port_can_have() -> None:
    """A node port is NODE.NIC with NODE a valid node name; the others' first part never is."""
    kinds = {"uplink": 0, "gateway": 0, "node": 0}
    for port in ports():
        owner = port.name.split(".", 1)[0]
        if port.node and not port.node.startswith(naming.NON_NODE_PORT_PREFIX):
            kinds["node"] += 1
            assert re.fullmatch(NAME, owner), port
        else:
            kinds["gateway" if port.node else "uplink"] += 1
            assert re.fullmatch(NAME, owner) is None, port
            assert port.name.startswith(naming.NON_NODE_PORT_PREFIX), port
    assert kinds == {"uplink": 2, "gateway": 1, "node": 4}


def test_uplink_ports_are_told_apart_from_node_ports() -> None:
    assert naming.is_uplink_port(naming.uplink_port_name("eth2"))
    assert not naming.is_uplink_port(naming.port_name("uplink", "eth2"))
    assert not naming.is_uplink_port(naming.gateway_port_name("uplink"))
    assert naming.gateway_port_name("uplink") != naming.uplink_port_name("port")
