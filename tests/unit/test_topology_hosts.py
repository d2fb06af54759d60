"""Multi-host labs: hosts, bus, placement of nodes, gateways and uplinks, VNIs, and the
pure answers a host asks of a lab (``vnet.topology.placement``)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from vnet.errors import TopologyError
from vnet.topology import (
    Bus,
    FrozenMap,
    Host,
    Topology,
    load_topology,
    parse_topology,
    topology_to_dict,
)
from vnet.topology import values as values_module
from vnet.topology.placement import (
    NicPlace,
    has_network,
    mac_hosts,
    network_hosts,
    nic_places,
    part_for_host,
    uplink_on,
)
from vnet.topology.values import (
    DERIVED_VNI_MIN,
    VNI_MAX,
    assign_vnis,
    derive_mac,
    derive_vni,
    parse_broker,
)

ROOT = Path(__file__).resolve().parents[2]
SPAN = ROOT / "topologies" / "span.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(dedent(text).lstrip("\n"), source="t.yaml")
    return info.value.problems


def two_hosts(body: str) -> Topology:
    """A lab x on hosts h1 and h2 with ``body`` (its networks and nodes)."""
    return parse_topology('name: x\nhosts: {h1: {address: 10.90.0.1}, h2: {address: 10.90.0.2}}'
                          '\nbus: {broker: "mqtt://10.90.0.254"}\n' + dedent(body))

CASES: dict[str, tuple[str, list[str]]] = {
    "a node without host in a lab with hosts": ("""
        name: x
        hosts: {h1: {address: 10.90.0.1}, h2: {address: 10.90.0.2}}
        bus: {broker: "mqtt://10.90.0.254"}
        networks: {}
        nodes:
          a: {kind: netns, host: h1}
          b: {kind: netns}
          c: {kind: netns, host: h3}
          d: {kind: box}
        """, ["t.yaml:7: nodes.b.host: required: this lab declares hosts, so each node names "
              "the one that runs it (one of h1, h2)",
              "t.yaml:8: nodes.c.host: host 'h3' is not defined (defined: h1, h2)",
              "t.yaml:9: nodes.d.kind: 'box' is not one of netns | vm",
              "t.yaml:9: nodes.d.host: required: this lab declares hosts, so each node names "
              "the one that runs it (one of h1, h2)"]),
    "host without hosts": ("""
        name: x
        networks:
          inet: {vlan: 30, mode: nat, subnet: 192.168.30.0/24, host: h1}
        nodes:
          a: {kind: netns, host: h1}
        hosts: {}
        """, ["t.yaml:3: networks.inet.host: host 'h1' is not defined: this lab declares no "
              "hosts (declare the hosts under hosts: (e.g. hosts: {h1: {address: 10.0.0.1}}), "
              "or remove host: for a lab on one host)",
              "t.yaml:5: nodes.a.host: host 'h1' is not defined: this lab declares no hosts "
              "(declare the hosts under hosts: (e.g. hosts: {h1: {address: 10.0.0.1}}), or "
              "remove host: for a lab on one host)"]),
    "nat gateway host": ("""
        name: x
        hosts: {h1: {address: 10.90.0.1}, h2: {address: 10.90.0.2}}
        bus: {broker: "mqtt://10.90.0.254"}
        networks:
          n1: {vlan: 1, mode: nat, subnet: 10.1.0.0/24}
          n2: {vlan: 2, mode: nat, subnet: 10.2.0.0/24, host: hx}
          n3: {vlan: 3, host: h1}
          n4: {vlan: 4, mode: bridged, uplink: {h1: eth2}, host: h1}
        nodes: {}
        """, ["t.yaml:5: networks.n1.host: required with mode: nat in a lab with hosts: the "
              "host that holds the gateway (one of h1, h2)",
              "t.yaml:6: networks.n2.host: host 'hx' is not defined (defined: h1, h2)",
              "t.yaml:7: networks.n3.host: only allowed with mode: nat (this network has "
              "mode: isolated)",
              "t.yaml:8: networks.n4.host: only allowed with mode: nat (this network has "
              "mode: bridged)"]),
    "bus required with two hosts": ("""
        name: x
        networks: {}
        nodes: {}
        hosts:
          h1: {address: 10.90.0.1}
          h2: {address: 10.90.0.2}
        """, ["t.yaml:4: bus: required with two or more hosts (2 are declared): the MQTT "
              "broker that connects them, e.g. bus: {broker: mqtt://10.0.0.254:1883}"]),
    "credentials do not go under bus": ("""
        name: x
        networks: {}
        nodes: {}
        bus:
          broker: mqtts://broker.example:8884
          username: vnet
          password: secret
          cafile: /etc/ca.pem
        """, ["t.yaml:6: bus.username: username does not go in the topology, which every "
              "host shares: credentials and TLS files belong to each host's vnetd "
              "configuration (the topology names only the broker, mqtts:// for TLS)",
              "t.yaml:7: bus.password: password does not go in the topology, which every "
              "host shares: credentials and TLS files belong to each host's vnetd "
              "configuration (the topology names only the broker, mqtts:// for TLS)",
              "t.yaml:8: bus.cafile: cafile does not go in the topology, which every host "
              "shares: credentials and TLS files belong to each host's vnetd configuration "
              "(the topology names only the broker, mqtts:// for TLS)"]),
    "broker URL in the loader": ("""
        name: x
        networks: {}
        nodes: {}
        bus: {broker: "mqtt://vnet:secret@10.90.0.254:1883"}
        """, ["t.yaml:4: bus.broker: 'mqtt://vnet:secret@10.90.0.254:1883' has a user or "
              "password: credentials do not go in the topology, which every host shares: set "
              "them in each host's vnetd configuration; write mqtt://HOST[:PORT] or "
              "mqtts://HOST[:PORT]"]),
    "host addresses": ("""
        name: x
        networks: {}
        nodes: {}
        bus: {broker: "mqtt://10.90.0.254"}
        hosts:
          h1: {address: 10.90.0.1}
          h2: {address: 10.90.0.1}
          h3: {address: "fd00::3"}
          h4: {address: 224.0.0.1}
          h5: {address: 0.0.0.0}
          h6: {address: "fe80::1"}
          h7: {description: no address}
          h8: {address: 10.90.0.300}
        """, ["t.yaml:7: hosts.h2.address: 10.90.0.1 is already the address of host 'h1': "
              "each host needs its own",
              "t.yaml:8: hosts.h3.address: fd00::3 is IPv6 but host 'h1' has an IPv4 "
              "address: all hosts of a lab need the same address family (VXLAN does not "
              "cross it)",
              "t.yaml:9: hosts.h4.address: 224.0.0.1 cannot carry VXLAN between hosts: give "
              "the unicast address this host sends from (not unspecified, multicast or IPv6 "
              "link-local)",
              "t.yaml:10: hosts.h5.address: 0.0.0.0 cannot carry VXLAN between hosts: give "
              "the unicast address this host sends from (not unspecified, multicast or IPv6 "
              "link-local)",
              "t.yaml:11: hosts.h6.address: fe80::1 cannot carry VXLAN between hosts: give "
              "the unicast address this host sends from (not unspecified, multicast or IPv6 "
              "link-local)",
              "t.yaml:12: hosts.h7.address: required key is missing",
              "t.yaml:13: hosts.h8.address: '10.90.0.300' is not an IP address"]),
    "vni": ("""
        name: x
        networks:
          a: {vlan: 1, vni: 0}
          b: {vlan: 2, vni: 16777216}
          c: {vlan: 3, vni: 5000}
          d: {vlan: 4, vni: 5000}
          e: {vlan: 5, vni: "7"}
        nodes: {}
        """, ["t.yaml:3: networks.a.vni: 0 is out of range 1..16777215",
              "t.yaml:4: networks.b.vni: 16777216 is out of range 1..16777215",
              "t.yaml:6: networks.d.vni: VNI 5000 is already used by network 'c': each "
              "network needs its own VNI",
              "t.yaml:7: networks.e.vni: expected an integer, got a string ('7')"]),
    "bridged uplinks in a lab with hosts": ("""
        name: x
        hosts: {h1: {address: 10.90.0.1}, h2: {address: 10.90.0.2}}
        bus: {broker: "mqtt://10.90.0.254"}
        networks:
          a: {vlan: 1, mode: bridged, uplink: eth2}
          b: {vlan: 2, mode: bridged, uplink: {}}
          c: {vlan: 3, mode: bridged, uplink: {h1: eth2, h9: eth3}}
          d: {vlan: 4, mode: bridged, uplink: {h1: eth2, h2: eth2}}
          e: {vlan: 5, mode: bridged, uplink: {h1: eth5, h2: eth2}, tagged: true}
          f: {vlan: 6, mode: bridged, uplink: {h1: "bad name!"}}
          n: {vlan: 7, mode: nat, subnet: 10.7.0.0/24, host: h1, uplink: {h1: eth1}}
        nodes: {}
        """, ["t.yaml:5: networks.a.uplink: say on which host: in a lab with hosts a bridged "
              "network's uplink maps hosts to interfaces, e.g. uplink: {h1: eth2}",
              "t.yaml:6: networks.b.uplink: names no host: give at least one, e.g. uplink: "
              "{h1: eth2}",
              "t.yaml:7: networks.c.uplink.h9: host 'h9' is not defined (defined: h1, h2)",
              "t.yaml:8: networks.d.uplink.h1: network 'c' is already bridged untagged onto "
              "eth2 on host 'h1': at most one untagged network per uplink (set tagged: true "
              "on the others)",
              "t.yaml:10: networks.f.uplink.h1: 'bad name!' must match "
              r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,15}$ (a Linux interface name: 1 to 15 letters, "
              "digits, '_', '.' or '-')",
              "t.yaml:11: networks.n.uplink: a NAT network's uplink is on its gateway's host "
              "(host:), so it names no host: write uplink: eth1"]),
    "uplink per host in a lab without hosts": ("""
        name: x
        networks:
          a: {vlan: 1, mode: bridged, uplink: {h1: eth2}}
        nodes: {}
        """, ["t.yaml:3: networks.a.uplink: names hosts, but this lab declares none: write "
              "uplink: eth2"]),
    "reach needs gateways on one host": ("""
        name: x
        hosts: {h1: {address: 10.90.0.1}, h2: {address: 10.90.0.2}}
        bus: {broker: "mqtt://10.90.0.254"}
        networks:
          a: {vlan: 1, mode: nat, subnet: 10.1.0.0/24, host: h1, reach: [b, c]}
          b: {vlan: 2, mode: nat, subnet: 10.2.0.0/24, host: h2}
          c: {vlan: 3, mode: nat, subnet: 10.3.0.0/24, host: h1}
        nodes: {}
        """, ["t.yaml:5: networks.a.reach[0]: network 'b' has its gateway on host 'h2', 'a' "
              "on 'h1': NAT networks that reach each other need their gateways on one host"]),
    "a broken hosts section says nothing about hosts elsewhere": ("""
        name: x
        hosts: [h1, h2]
        networks:
          n: {vlan: 1, mode: nat, subnet: 10.1.0.0/24}
        nodes:
          a: {kind: netns, host: h1}
          b: {kind: netns}
        """, ["t.yaml:2: hosts: expected a mapping, got a list"]),
}


@pytest.mark.parametrize("text,expected", CASES.values(), ids=CASES.keys())
def test_multi_host_problems(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_every_placement_problem_of_a_file_is_reported_at_once() -> None:
    found = problems("""
        name: x
        hosts: {h1: {address: 10.90.0.1}, h2: {address: 10.90.0.1}, h3: {address: 10.90.0.3}}
        networks:
          inet: {vlan: 30, mode: nat, subnet: 192.168.30.0/24}
          lan: {vlan: 40, mode: bridged, uplink: eth2}
        nodes:
          a: {kind: netns, nics: [{name: eth0, network: inet, ip: 192.168.30.5/24}]}
          b: {kind: vm, host: h4}
        """)
    assert [p.split(": ")[1] for p in found] == [
        "hosts.h2.address", "bus", "networks.inet.host", "networks.lan.uplink", "nodes.a.host",
        "nodes.b.host"]


# -- what loads -----------------------------------------------------------------------------

def test_span_example_places_everything() -> None:
    t = load_topology(SPAN)
    assert t.hosts == (Host("h1", "10.90.0.1"), Host("h2", "10.90.0.2"),
                       Host("h3", "10.90.0.3"))
    assert t.host("h2").ip == IPv4Address("10.90.0.2")
    assert t.bus == Bus("mqtt://10.90.0.254:1883")
    assert (t.bus.host, t.bus.port, t.bus.tls) == ("10.90.0.254", 1883, False)
    assert {n.name: n.host for n in t.nodes} == {"a": "h1", "v2": "h2", "c": "h3", "t": "h2"}
    assert t.network("inet").host == "h1" and t.network("red").host is None
    with pytest.raises(KeyError, match="no host 'h4'"):
        t.host("h4")


def test_a_lab_with_one_host_needs_no_bus() -> None:
    t = parse_topology("name: x\nhosts: {h1: {address: 'fd00::1'}}\nnetworks: {}\n"
                       "nodes: {a: {kind: netns, host: h1}}\n")
    assert t.bus is None and t.host("h1").ip == IPv6Address("fd00::1")


def test_a_host_address_is_kept_in_normal_form() -> None:
    t = parse_topology("name: x\nhosts: {h1: {address: 'FD00:0::1'}}\nnetworks: {}\n"
                       "nodes: {}\n")
    assert t.host("h1").address == "fd00::1"


def test_single_host_labs_have_no_placement_fields() -> None:
    t = load_topology(ROOT / "topologies" / "demo.yaml")
    assert t.hosts == () and t.bus is None
    assert all(n.host is None for n in t.nodes)
    assert all(n.host is None and not n.uplinks and n.vni is None for n in t.networks)
    assert t.network("lan").uplink == "eth2" and uplink_on(t.network("lan"), None) == "eth2"


def test_uplink_on() -> None:
    t = two_hosts("""
        networks:
          lan: {vlan: 1, mode: bridged, uplink: {h1: eth2, h2: eth3}}
          one: {vlan: 2, mode: bridged, uplink: {h2: eth4}}
          inet: {vlan: 3, mode: nat, subnet: 10.3.0.0/24, host: h2, uplink: eth1}
          iso: {vlan: 4}
        nodes: {}
        """)
    lan, one, inet, iso = t.networks
    assert lan.uplinks == FrozenMap({"h1": "eth2", "h2": "eth3"}) and lan.uplink is None
    assert (uplink_on(lan, "h1"), uplink_on(lan, "h2")) == ("eth2", "eth3")
    assert (uplink_on(one, "h1"), uplink_on(one, "h2")) == (None, "eth4")
    assert (uplink_on(inet, "h1"), uplink_on(inet, "h2")) == (None, "eth1")
    assert uplink_on(iso, "h1") is None


def test_multi_host_labs_round_trip_through_the_dict_form() -> None:
    t = two_hosts("""
        networks:
          lan: {vlan: 1, mode: bridged, uplink: {h1: eth2, h2: eth3}, vni: 77}
          inet: {vlan: 3, mode: nat, subnet: 10.3.0.0/24, host: h2, uplink: eth1}
        nodes:
          a: {kind: netns, host: h1, nics: [{name: eth0, network: lan}]}
        """)
    data = json.loads(json.dumps(topology_to_dict(t)))
    assert data["networks"]["lan"]["uplink"] == {"h1": "eth2", "h2": "eth3"}
    assert data["networks"]["lan"]["vni"] == 77 and "vni" not in data["networks"]["inet"]
    assert data["networks"]["inet"]["host"] == "h2"
    assert data["hosts"] == {"h1": {"address": "10.90.0.1"}, "h2": {"address": "10.90.0.2"}}
    assert parse_topology(json.dumps(data)) == t
    span = load_topology(SPAN)
    assert parse_topology(json.dumps(topology_to_dict(span)), source=str(SPAN)) == span


# -- the bus broker -------------------------------------------------------------------------

@pytest.mark.parametrize("url,parts", [
    ("mqtt://10.90.0.254", ("10.90.0.254", 1883, False)),
    ("mqtts://10.90.0.254", ("10.90.0.254", 8883, True)),
    ("mqtt://broker.example:1884", ("broker.example", 1884, False)),
    ("mqtts://[FD00::FE]:8884", ("fd00::fe", 8884, True)),
    ("mqtt://[fd00::fe]", ("fd00::fe", 1883, False)),
    ("mqtt://localhost", ("localhost", 1883, False)),
])
def test_broker_url_parts(url: str, parts: tuple[str, int, bool]) -> None:
    assert parse_broker(url) == parts
    bus = Bus(url)
    assert (bus.host, bus.port, bus.tls) == parts


@pytest.mark.parametrize("url,message", [
    ("http://b", "'http://b' is not a broker URL: write mqtt://HOST[:PORT] or "
     "mqtts://HOST[:PORT]"),
    ("mqtt://u@b", "'mqtt://u@b' has a user or password: credentials do not go in the "
     "topology, which every host shares: set them in each host's vnetd configuration; write "
     "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
    ("mqtt://b:1883/vnet", "'mqtt://b:1883/vnet' has a path, query or fragment: write "
     "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
    ("mqtt://b:0", "'mqtt://b:0': the port must be a number in 1..65535, got '0'"),
    ("mqtt://b:65536", "'mqtt://b:65536': the port must be a number in 1..65535, got '65536'"),
    ("mqtt://b:", "'mqtt://b:': the port must be a number in 1..65535, got ''"),
    ("mqtt://b:x", "'mqtt://b:x': the port must be a number in 1..65535, got 'x'"),
    ("mqtt://fd00::1", "'mqtt://fd00::1': put an IPv6 address in brackets: "
     "mqtt://[fd00::1]:1883"),
    ("mqtt://[fd00::1", "'mqtt://[fd00::1': an IPv6 broker is written mqtt://[ADDRESS]:PORT"),
    ("mqtt://[10.0.0.1]:1", "'mqtt://[10.0.0.1]:1': '10.0.0.1' is not an IPv6 address"),
    ("mqtt://10.0.0.300", "'mqtt://10.0.0.300': '10.0.0.300' is not an IPv4 address"),
    ("mqtt://bro_ker", "'mqtt://bro_ker': 'bro_ker' is not a host name or IP address"),
    ("mqtt://:1883", "'mqtt://:1883': '' is not a host name or IP address"),
    ("mqtt://-b.example", "'mqtt://-b.example': '-b.example' is not a host name or IP address"),
])
def test_bad_broker_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_broker(url)
    assert str(info.value) == message


# -- VNIs -----------------------------------------------------------------------------------

def test_derived_vni_is_pinned() -> None:
    # Changing these values changes every multi-host lab's VNIs: do not, unless on purpose.
    assert derive_vni("span", "red") == 11905918
    assert derive_vni("span", "blue") == 10235785
    t = load_topology(SPAN)
    assert [t.vni_of(n.name) for n in t.networks] == [11905918, 10235785, 16751670]


def test_explicit_vni_is_kept_and_a_derived_one_moves_past_it() -> None:
    taken = derive_vni("x", "a")
    t = parse_topology(f"name: x\nnetworks: {{a: {{vlan: 1}}, b: {{vlan: 2, vni: {taken}}}}}\n"
                       "nodes: {}\n")
    assert t.network("b").vni == taken and t.network("a").vni is None
    assert t.vni_of("b") == taken
    assert t.vni_of("a") == (taken + 1 if taken < VNI_MAX else DERIVED_VNI_MIN)
    with pytest.raises(KeyError, match="no network 'z'"):
        t.vni_of("z")


def test_vnis_do_not_depend_on_the_order_of_networks() -> None:
    one = assign_vnis("lab", [("a", None), ("b", 9), ("c", None)])
    two = assign_vnis("lab", [("c", None), ("a", None), ("b", 9)])
    assert one == two and list(two) == ["c", "a", "b"]


def test_vni_collisions_probe_upwards_in_name_order_and_wrap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values_module, "derive_vni", lambda lab, network: VNI_MAX)
    assert assign_vnis("lab", [("z", None), ("b", None), ("a", None), ("m", VNI_MAX - 1)]) == {
        "z": DERIVED_VNI_MIN + 1, "b": DERIVED_VNI_MIN, "a": VNI_MAX, "m": VNI_MAX - 1}


POOL = [f"n{i}" for i in range(30)]


@given(st.dictionaries(st.sampled_from(POOL), st.none() | st.integers(1, VNI_MAX)
                       | st.sampled_from([derive_vni("lab", n) for n in POOL]), max_size=30))
def test_assigned_vnis_are_unique_and_in_range(explicit: dict[str, int | None]) -> None:
    pinned = [v for v in explicit.values() if v is not None]
    assume(len(set(pinned)) == len(pinned))  # the loader refuses duplicates
    vnis = assign_vnis("lab", explicit.items())
    assert list(vnis) == list(explicit)
    assert len(set(vnis.values())) == len(vnis)
    for name, vni in explicit.items():
        if vni is None:
            assert DERIVED_VNI_MIN <= vnis[name] <= VNI_MAX
        else:
            assert vnis[name] == vni


def test_derived_vnis_differ_per_lab() -> None:
    assert derive_vni("a", "red") != derive_vni("b", "red")
    assert len({derive_vni("lab", f"n{i}") for i in range(200)}) == 200


# -- placement ------------------------------------------------------------------------------

def test_which_hosts_have_which_network() -> None:
    t = load_topology(SPAN)
    assert network_hosts(t) == {"red": ("h1", "h2", "h3"), "blue": ("h2",),
                                "inet": ("h1", "h3")}


def test_a_gateway_or_an_uplink_alone_gives_a_host_the_network() -> None:
    t = two_hosts("""
        networks:
          inet: {vlan: 3, mode: nat, subnet: 10.3.0.0/24, host: h2}
          lan: {vlan: 4, mode: bridged, uplink: {h1: eth2}}
          nowhere: {vlan: 5}
        nodes:
          a: {kind: netns, host: h1, nics: [{name: eth0, network: inet, ip: 10.3.0.5/24}]}
        """)
    assert network_hosts(t) == {"inet": ("h1", "h2"), "lan": ("h1",), "nowhere": ()}
    assert has_network(t, "h2", t.network("inet")) and not has_network(t, "h2", t.network("lan"))
    h2 = part_for_host(t, "h2")
    assert h2.nodes == () and [n.name for n in h2.networks] == ["inet"]
    assert [n.name for n in h2.gateways] == ["inet"] and h2.peers == FrozenMap({"inet": ("h1",)})
    h1 = part_for_host(t, "h1")
    assert [n.name for n in h1.networks] == ["inet", "lan"] and h1.gateways == ()
    assert h1.uplinks == (("lan", "eth2"),)
    assert h1.peers == FrozenMap({"inet": ("h2",), "lan": ()})


def test_each_host_gets_its_part_of_the_span_lab() -> None:
    t = load_topology(SPAN)
    parts = {h: part_for_host(t, h) for h in ("h1", "h2", "h3")}
    assert {h: [n.name for n in p.nodes] for h, p in parts.items()} == {
        "h1": ["a"], "h2": ["v2", "t"], "h3": ["c"]}
    assert {h: [n.name for n in p.networks] for h, p in parts.items()} == {
        "h1": ["red", "inet"], "h2": ["red", "blue"], "h3": ["red", "inet"]}
    assert [n.name for n in parts["h1"].gateways] == ["inet"]
    assert parts["h2"].gateways == () and parts["h3"].gateways == ()
    assert parts["h3"].peers == FrozenMap({"red": ("h1", "h2"), "inet": ("h1",)})
    assert parts["h2"].peers == FrozenMap({"red": ("h1", "h3"), "blue": ()})
    assert all(p.host == h and p.uplinks == () for h, p in parts.items())
    with pytest.raises(KeyError) as info:
        part_for_host(t, "h9")
    assert info.value.args[0] == ("lab 'span' runs on hosts h1, h2, h3, not on 'h9': start "
                                  "vnetd with one of these host names")
    with pytest.raises(KeyError):
        part_for_host(t, None)


def test_a_lab_without_hosts_is_all_local() -> None:
    t = load_topology(ROOT / "topologies" / "demo.yaml")
    for host in (None, "h1"):
        part = part_for_host(t, host)
        assert part.host is None and part.nodes == t.nodes and part.networks == t.networks
        assert [n.name for n in part.gateways] == ["nat"]
        assert part.uplinks == (("nat", "eth1"), ("lan", "eth2"))
        assert part.peers == FrozenMap()
    assert set(network_hosts(t).values()) == {()}


def test_every_nic_is_placed_with_its_host_network_and_mac() -> None:
    t = load_topology(SPAN)
    places = nic_places(t)
    assert NicPlace("h2", "blue", derive_mac("span", "t", "eth0"), "t", "eth0") in places
    assert [(p.host, p.network, p.node, p.nic) for p in places] == [
        ("h1", "red", "a", "eth0"), ("h2", "red", "v2", "eth0"), ("h3", "red", "c", "eth0"),
        ("h3", "inet", "c", "eth1"), ("h2", "red", "t", "eth0"), ("h2", "blue", "t", "eth0")]
    assert mac_hosts(t) == {derive_mac("span", "a", "eth0"): "h1",
                            derive_mac("span", "v2", "eth0"): "h2",
                            derive_mac("span", "c", "eth0"): "h3",
                            derive_mac("span", "c", "eth1"): "h3",
                            derive_mac("span", "t", "eth0"): "h2"}
    demo = load_topology(ROOT / "topologies" / "demo.yaml")
    assert {p.host for p in nic_places(demo)} == {None}
