"""Head-end replication targets and the overlay's allow list follow topology and liveness."""

from __future__ import annotations

from textwrap import dedent

from vnet.bus.liveness import PeerTable
from vnet.bus.messages import Status
from vnet.bus.overlay import flood_targets, overlay_peers
from vnet.topology import parse_topology

TOPOLOGY = parse_topology(dedent("""
    name: lab1
    hosts: {h1: {address: 10.0.0.1}, h2: {address: 10.0.0.2}, h3: {address: 10.0.0.3},
            h4: {address: 10.0.0.4}}
    bus: {broker: "mqtt://10.0.0.254"}
    networks: {office: {vlan: 10}, lab: {vlan: 20}, empty: {vlan: 30}}
    nodes:
      c1: {kind: netns, host: h1, nics: [{name: eth0, network: office}]}
      c2: {kind: netns, host: h2, nics: [{name: eth0, network: office}]}
      c3: {kind: netns, host: h3, nics: [{name: eth0, trunk: [office, lab]}]}
      c4: {kind: netns, host: h4, nics: [{name: eth0, network: lab}]}
"""))


def peers(*online: str, offline: tuple[str, ...] = ()) -> PeerTable:
    table = PeerTable("h1")
    for host in online:
        table.observe(Status(host, "online", 7, 30, address=f"192.0.2.{host[1:]}"), now=0)
    for host in offline:
        table.observe(Status(host, "offline", 7, 30, address=f"192.0.2.{host[1:]}"), now=0)
    return table


def test_floods_go_to_alive_remote_hosts_of_the_network_only():
    table = peers("h2", "h4", offline=("h3",))
    assert flood_targets([TOPOLOGY], "h1", table.alive()) == {
        ("lab1", "office"): {"h2"}, ("lab1", "lab"): {"h4"}, ("lab1", "empty"): frozenset()}


def test_overlay_accepts_only_alive_hosts_topology_address_first():
    allowed = overlay_peers([TOPOLOGY], peers("h2", "h3", offline=("h4",)))
    assert allowed.host_of("10.0.0.2") == "h2"          # declared in the topology
    assert not allowed.allows("192.0.2.2")              # ...so its status address is not used
    assert allowed.host_of("10.0.0.3") == "h3"
    assert allowed.host_of("::ffff:10.0.0.3") == "h3"   # IPv4-mapped counts as IPv4
    assert not allowed.allows("192.0.2.3")              # a status's claim is not trusted
    assert not allowed.allows("10.0.0.4")               # offline
    assert not allowed.allows("10.0.0.1")               # ourselves: not a peer
    assert not allowed.allows("10.0.0.99")
    assert not allowed.allows("not an address")
