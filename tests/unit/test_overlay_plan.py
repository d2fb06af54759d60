"""The overlay of multi-host labs, without root: which networks cross to which hosts, the
remote MACs each host knows, the designated forwarder of bridged networks, and each host's
part of the lab's resources."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from vnet.daemon import naming
from vnet.daemon.config import ConfigError
from vnet.daemon.drivers.overlay_filter import ruleset
from vnet.daemon.main import configure, parse_args
from vnet.daemon.overlayplan import RemoteMac, overlay_plan
from vnet.daemon.resources import (
    BridgeResource,
    DhcpResource,
    GatewayResource,
    NatResource,
    NetnsNodeResource,
    OverlayFilterResource,
    OverlayResource,
    PortResource,
    Resource,
    VmNodeResource,
    desired_resources,
    from_dict,
    plan,
    to_dict,
)
from vnet.errors import HostError
from vnet.topology import Topology, load_topology, parse_topology
from vnet.topology.values import derive_mac

ROOT = Path(__file__).resolve().parents[2]
SPAN = ROOT / "topologies" / "span.yaml"
ADDRESSES = {"h1": "10.90.0.1", "h2": "10.90.0.2", "h3": "10.90.0.3", "h4": "10.90.0.4"}


def lab(body: str, hosts: tuple[str, ...] = ("h1", "h2", "h3")) -> Topology:
    declared = ", ".join(f"{h}: {{address: {ADDRESSES[h]}}}" for h in hosts)
    return parse_topology(f"name: x\nhosts: {{{declared}}}\nbus: {{broker: 'mqtt://10.90.0.254'}}\n"
                          + dedent(body).lstrip("\n"))


def mac(node: str, nic: str = "eth0", lab_name: str = "span") -> str:
    return derive_mac(lab_name, node, nic)


def of_kind(resources: list[Resource], cls: type) -> list:  # type: ignore[type-arg]
    return [r for r in resources if isinstance(r, cls)]


# -- the plan ------------------------------------------------------------------------------

def test_span_lab_overlays_per_host() -> None:
    t = load_topology(SPAN)
    plans = {h: overlay_plan(t, h) for h in ("h1", "h2", "h3")}
    # blue is on h2 alone: it crosses to nobody; inet is h1's (gateway) and h3's (c).
    assert {h: list(p) for h, p in plans.items()} == {
        "h1": ["red", "inet"], "h2": ["red"], "h3": ["red", "inet"]}
    red = plans["h1"]["red"]
    assert red.vni == t.vni_of("red") and red.vlan == 10 and red.local == "10.90.0.1"
    assert dict(red.peers) == {"h2": "10.90.0.2", "h3": "10.90.0.3"}
    assert red.peer_addresses == ("10.90.0.2", "10.90.0.3")
    assert dict(red.macs) == {
        mac("v2"): RemoteMac("h2", "10.90.0.2", "10.10.0.2", "v2.eth0"),
        mac("c"): RemoteMac("h3", "10.90.0.3", "10.10.0.3", "c.eth0"),
        mac("t"): RemoteMac("h2", "10.90.0.2", None, "t.eth0")}      # a trunk: no IP
    assert red.fdb[mac("c")] == ("10.90.0.3", "10.10.0.3")
    assert red.mtu == 1450
    assert not red.arp_proxy          # t's trunk brings addresses the file does not know
    assert dict(plans["h3"]["inet"].peers) == {"h1": "10.90.0.1"}
    # the gateway lives on h1 (inet's host:), with a MAC derived from its name
    assert dict(plans["h3"]["inet"].macs) == {
        naming.gateway_mac("span", "inet"): RemoteMac("h1", "10.90.0.1", "192.168.30.1",
                                                      "@gw-inet.port")}
    assert dict(plans["h1"]["inet"].macs) == {
        mac("c", "eth1"): RemoteMac("h3", "10.90.0.3", None, "c.eth1")}  # DHCP: no IP
    assert not plans["h1"]["inet"].arp_proxy
    assert plans["h2"]["red"].ifname == plans["h1"]["red"].ifname      # same name everywhere
    assert overlay_plan(t, "h1", underlay_mtu=9000)["red"].mtu == 8950


def test_arp_proxy_only_where_the_file_gives_every_address() -> None:
    t = lab("""
        networks:
          green: {vlan: 5}
          leased: {vlan: 6, mode: nat, subnet: 10.6.0.0/24, host: h1,
                   dhcp: {range: [10.6.0.100, 10.6.0.200], leases: {b: 10.6.0.7}}}
          bare: {vlan: 7}
          pool: {vlan: 8, mode: nat, subnet: 10.8.0.0/24, host: h1,
                 dhcp: {range: [10.8.0.100, 10.8.0.200]}}
        nodes:
          a: {kind: netns, host: h1, nics: [{name: eth0, network: green, ip: 10.5.0.1/24},
                                            {name: eth1, network: bare, ip: 10.7.0.1/24}]}
          b: {kind: netns, host: h2, nics: [{name: eth0, network: green, ip: 10.5.0.2/24},
                                            {name: eth1, network: leased, ip: dhcp},
                                            {name: eth2, network: bare},
                                            {name: eth3, network: pool, ip: dhcp}]}
        """, hosts=("h1", "h2"))
    plans = overlay_plan(t, "h1")
    assert plans["green"].arp_proxy
    assert plans["green"].macs[mac("b", lab_name="x")].ip == "10.5.0.2"
    assert not plans["bare"].arp_proxy       # b's eth2 has no address in the file
    # a NAT network whose one node has a fixed lease: its gateway's address and MAC are
    # known too (h2 knows them: overlay_plan(t, "h2")), so ARP is answered on each host
    assert plans["leased"].arp_proxy
    assert plans["leased"].macs[mac("b", "eth1", "x")].ip == "10.6.0.7"   # its fixed lease
    assert overlay_plan(t, "h2")["leased"].arp_proxy
    assert not plans["pool"].arp_proxy       # b's eth3 takes any address of the range


BRIDGED = """
    networks:
      lan: {vlan: 40, mode: bridged, uplink: {h1: eth2, h3: eth3}}
    nodes:
      a: {kind: netns, host: h1, nics: [{name: eth0, network: lan, ip: 10.4.0.1/24}]}
      b: {kind: netns, host: h2, nics: [{name: eth0, network: lan, ip: 10.4.0.2/24}]}
      c: {kind: netns, host: h3, nics: [{name: eth0, network: lan, ip: 10.4.0.3/24}]}
      d: {kind: netns, host: h4, nics: [{name: eth0, network: lan, ip: 10.4.0.4/24}]}
    """


def test_bridged_network_crosses_between_uplinkless_hosts_and_the_designated_forwarder() -> None:
    t = lab(BRIDGED, hosts=("h1", "h2", "h3", "h4"))
    plans = {h: overlay_plan(t, h) for h in ("h1", "h2", "h3", "h4")}
    # h1 is the first host with an uplink: it forwards; h3 reaches the LAN by its own uplink.
    assert "lan" not in plans["h3"]
    assert dict(plans["h1"]["lan"].peers) == {"h2": "10.90.0.2", "h4": "10.90.0.4"}
    assert dict(plans["h2"]["lan"].peers) == {"h1": "10.90.0.1", "h4": "10.90.0.4"}
    h2 = plans["h2"]["lan"].macs
    assert h2[mac("a", lab_name="x")].address == "10.90.0.1"
    assert h2[mac("c", lab_name="x")] == RemoteMac("h1", "10.90.0.1", "10.4.0.3", "c.eth0")
    assert h2[mac("d", lab_name="x")].address == "10.90.0.4"
    # The forwarder reaches c on the LAN, not through the overlay.
    assert mac("c", lab_name="x") not in plans["h1"]["lan"].macs
    assert not plans["h1"]["lan"].arp_proxy   # the LAN's hosts are not in the file
    h3 = desired_resources(t, "h3")
    assert of_kind(h3, OverlayResource) == [] and of_kind(h3, OverlayFilterResource) == []
    assert [p.name for p in of_kind(h3, PortResource)] == ["c.eth0", "@uplink.eth3"]


def test_a_bridged_network_only_on_uplink_hosts_does_not_cross() -> None:
    t = lab("""
        networks:
          lan: {vlan: 40, mode: bridged, uplink: {h1: eth2, h2: eth3}}
        nodes:
          a: {kind: netns, host: h1, nics: [{name: eth0, network: lan, ip: 10.4.0.1/24}]}
          b: {kind: netns, host: h2, nics: [{name: eth0, network: lan, ip: 10.4.0.2/24}]}
        """, hosts=("h1", "h2"))
    assert overlay_plan(t, "h1") == {} and overlay_plan(t, "h2") == {}


def test_a_nat_network_on_one_host_does_not_cross() -> None:
    t = lab("""
        networks:
          inet: {vlan: 30, mode: nat, subnet: 192.168.30.0/24, host: h1, uplink: eth1}
          red: {vlan: 10}
        nodes:
          a: {kind: netns, host: h1, nics: [{name: eth0, network: inet, ip: 192.168.30.5/24},
                                            {name: eth1, network: red, ip: 10.1.0.1/24}]}
          b: {kind: netns, host: h2, nics: [{name: eth0, network: red, ip: 10.1.0.2/24}]}
        """, hosts=("h1", "h2"))
    assert list(overlay_plan(t, "h1")) == ["red"]
    h1, h2 = desired_resources(t, "h1"), desired_resources(t, "h2")
    assert [g.network for g in of_kind(h1, GatewayResource)] == ["inet"]
    assert len(of_kind(h1, NatResource)) == 1
    assert of_kind(h2, GatewayResource) == [] and of_kind(h2, NatResource) == []
    (node_a,) = of_kind(h1, NetnsNodeResource)
    assert [n.mtu for n in node_a.nics] == [None, 1450]   # only red crosses hosts
    assert [o.network for o in of_kind(h1, OverlayResource)] == ["red"]


def test_a_lab_with_hosts_has_no_overlay_for_a_host_that_has_no_network_of_it() -> None:
    t = lab("""
        networks: {red: {vlan: 10}}
        nodes:
          a: {kind: netns, host: h1, nics: [{name: eth0, network: red, ip: 10.1.0.1/24}]}
        """, hosts=("h1", "h2"))
    assert overlay_plan(t, "h2") == {}
    assert [r.kind for r in desired_resources(t, "h2")] == ["bridge"]
    with pytest.raises(KeyError):
        overlay_plan(t, "h9")


def test_overlay_names_fit_and_differ() -> None:
    names = {naming.overlay_ifname(f"lab{i}", f"net{j}") for i in range(40) for j in range(40)}
    assert len(names) == 1600 and all(len(n) <= naming.IFNAME_MAX for n in names)
    assert not names & {naming.host_ifname(f"lab{i}", f"net{j}", "vxlan")
                        for i in range(40) for j in range(40)}
    assert naming.overlay_ifname("a-b", "c") != naming.overlay_ifname("a", "b-c")
    assert naming.overlay_port_name("red").startswith(naming.NON_NODE_PORT_PREFIX)


def test_ipv6_underlay_leaves_room_for_the_larger_header() -> None:
    t = parse_topology(dedent("""
        name: six
        hosts: {h1: {address: 'fd00::1'}, h2: {address: 'fd00::2'}}
        bus: {broker: 'mqtt://[fd00::99]'}
        networks: {red: {vlan: 10}}
        nodes:
          a: {kind: netns, host: h1, nics: [{name: eth0, network: red, ip: 10.1.0.1/24}]}
          b: {kind: netns, host: h2, nics: [{name: eth0, network: red, ip: 10.1.0.2/24}]}
        """))
    assert overlay_plan(t, "h1")["red"].mtu == 1430
    (f,) = of_kind(desired_resources(t, "h1"), OverlayFilterResource)
    assert f.family == "ip6" and f.rules == ((t.vni_of("red"), ("fd00::2",)),)


# -- each host's resources -------------------------------------------------------------------

def test_each_vnetd_builds_only_its_hosts_part_of_the_span_lab() -> None:
    t = load_topology(SPAN)
    h1, h2, h3 = (desired_resources(t, h) for h in ("h1", "h2", "h3"))
    assert [n.node for n in of_kind(h1, NetnsNodeResource)] == ["a"]
    assert [n.node for n in of_kind(h2, NetnsNodeResource)] == ["t"]
    assert [n.node for n in of_kind(h2, VmNodeResource)] == ["v2"]
    assert [n.node for n in of_kind(h3, NetnsNodeResource)] == ["c"]
    assert [type(r).__name__ for r in h1 if isinstance(r, GatewayResource | NatResource
                                                        | DhcpResource)] == [
        "GatewayResource", "NatResource", "DhcpResource"]
    assert not any(isinstance(r, GatewayResource | NatResource | DhcpResource) for r in h2 + h3)
    (bridge,) = of_kind(h2, BridgeResource)
    assert [v.vid for v in bridge.vlans] == [10, 20]        # red and blue, not inet
    (red,) = of_kind(h2, OverlayResource)
    assert red.network == "red" and red.local == "10.90.0.2" and red.mtu == 1450
    assert red.peers == ("10.90.0.1", "10.90.0.3") and not red.arp_proxy
    assert red.remote_macs == {mac("a"): ("10.90.0.1", "10.10.0.1"),
                               mac("c"): ("10.90.0.3", "10.10.0.3")}
    port = next(p for p in of_kind(h2, PortResource) if p.ifname == red.ifname)
    assert (port.name, port.mode, port.vlan, port.node) == (
        "@overlay-red.vxlan", "access", 10, red.node)
    (fil,) = of_kind(h2, OverlayFilterResource)
    assert fil.family == "ip" and fil.rules == ((t.vni_of("red"), red.peers),)
    (trunk,) = of_kind(h2, NetnsNodeResource)
    assert trunk.nics[0].mtu == 1450                           # carries red
    (c,) = of_kind(h3, NetnsNodeResource)
    assert [n.mtu for n in c.nics] == [1450, 1450]            # red and inet both cross
    assert [o.network for o in of_kind(h3, OverlayResource)] == ["red", "inet"]
    # created after the bridge, before the ports that use them; deleted after the ports
    order = [r.kind for r in plan(h3, []).create]
    assert order.index("overlay") < order.index("port")
    assert order.index("overlay-filter") < order.index("overlay")


def test_a_vnetd_not_among_the_labs_hosts_refuses_it() -> None:
    t = load_topology(SPAN)
    for host in ("h9", None):
        with pytest.raises(HostError) as info:
            desired_resources(t, host)
        message = str(info.value)
        assert "lab 'span' runs on hosts h1, h2, h3" in message and "--host" in message
        assert repr(host) in message


def test_a_lab_without_hosts_is_built_whole_whatever_the_host() -> None:
    t = load_topology(ROOT / "topologies" / "demo.yaml")
    whole = desired_resources(t)
    assert desired_resources(t, "anything") == whole
    assert not of_kind(whole, OverlayResource) and not of_kind(whole, OverlayFilterResource)
    assert all(n.mtu is None for node in of_kind(whole, NetnsNodeResource) for n in node.nics)
    assert [p.name for p in of_kind(whole, PortResource) if p.name.startswith("@uplink")] == [
        "@uplink.eth2"]


def test_overlay_resources_round_trip_through_the_state_file() -> None:
    for resource in desired_resources(load_topology(SPAN), "h3"):
        assert from_dict(to_dict(resource)) == resource


def test_a_changed_overlay_rebuilds_its_port() -> None:
    t = load_topology(SPAN)
    realised = desired_resources(t, "h1")
    moved = lab("""
        networks:
          red:  {vlan: 10}
        nodes:
          a: {kind: netns, host: h1, nics: [{name: eth0, network: red, ip: 10.10.0.1/24}]}
          c: {kind: netns, host: h2, nics: [{name: eth0, network: red, ip: 10.10.0.3/24}]}
        """)
    work = plan(desired_resources(moved, "h1"), realised)
    deleted = {r.key for r in work.delete}
    assert ("overlay", "span/red") in deleted and ("port", "span/@overlay-red.vxlan") in deleted


def test_filter_accepts_each_networks_vxlan_only_from_its_peers() -> None:
    text = ruleset(OverlayFilterResource("span", "ip", (
        (5010, ("10.90.0.2", "10.90.0.3")), (5030, ("10.90.0.3",)))))
    assert "table inet vnet-overlay-span {" in text
    assert ("udp dport 4789 @th,96,24 5010 ip saddr != { 10.90.0.2, 10.90.0.3 } counter drop"
            in text)
    assert "udp dport 4789 @th,96,24 5030 ip saddr != { 10.90.0.3 } counter drop" in text
    assert "policy accept" in text   # the host's other traffic is not vnet's business


# -- vnetd --host ----------------------------------------------------------------------------

def test_vnetd_host_flag_names_the_host(tmp_path: Path) -> None:
    path = tmp_path / "vnetd.yaml"
    path.write_text("host: from-file\n")
    assert configure(parse_args(["--config", str(path)])).host == "from-file"
    assert configure(parse_args(["--config", str(path), "--host", "h2"])).host == "h2"
    with pytest.raises(ConfigError) as info:
        configure(parse_args(["--config", str(path), "--host", "no spaces"]))
    assert "--host 'no spaces': not a valid vnet host name" in str(info.value)
