"""Valid topologies load into the expected model; MACs, paths and the dict form."""

from __future__ import annotations

import dataclasses
import json
import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.errors import TopologyError
from vnet.topology import (
    Bus,
    Dhcp,
    Disk,
    Forward,
    FrozenMap,
    Host,
    Network,
    Nic,
    Node,
    Topology,
    derive_mac,
    load_topology,
    parse_topology,
    topology_to_dict,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "topologies").glob("*.yaml"))

FULL = """
version: 1
name: full
networks:
  office: {vlan: 10}
  lab:
    vlan: 20
    mode: nat
    subnet: 192.168.20.0/24
    uplink: eth1
    host: hostA
    dhcp: {range: [192.168.20.100, 192.168.20.200], leases: {vm1: 192.168.20.50}}
    forward: [{proto: tcp, port: 2222, to: "vm1:22"}, {proto: udp, port: 5353, to: "c1:53"}]
    mac_aging: 2.5
    mac_limit: 16
  wan: {vlan: 25, mode: nat, subnet: 10.25.0.0/16, gateway: 10.25.255.254, host: hostB}
  lan: {vlan: 30, mode: bridged, uplink: {hostA: eth2}}
  tlan: {vlan: 31, mode: bridged, uplink: {hostA: eth2, hostB: eth3}, tagged: true}
nodes:
  c1:
    kind: netns
    host: hostA
    nics:
      - {name: eth0, network: lab, ip: 192.168.20.10/24}
      - {name: eth1, trunk: [office, lan], native: tlan, mac: "AA-BB-CC-DD-EE-FE"}
      - {name: eth2, network: office, ip: "fd00::10/64"}
  vm1:
    kind: vm
    host: hostB
    vcpus: 2
    memory: 1G
    kernel: images/bzImage
    cmdline: "console=ttyS0"
    initrd: /boot/initrd.img
    disk: {path: disk.img, readonly: true}
    restart: always
    nics: [{name: eth0, network: lab, ip: dhcp, mac: "52:54:00:12:34:56"}]
  vm2: {kind: vm, host: hostA, memory: 32768k, disk: other.img, nics: []}
  vm3: {kind: vm, host: hostB, memory: 33554432}
hosts:
  hostA: {address: 192.0.2.1, description: the lab server}
  hostB: {address: 192.0.2.2}
bus: {broker: "mqtt://127.0.0.1:1883"}
"""


def full(base_dir: Path | None = Path("/labs")) -> Topology:
    return parse_topology(FULL, source="/labs/full.yaml", base_dir=base_dir)


def test_vlans_example_is_the_issues_lab() -> None:
    t = load_topology(ROOT / "topologies" / "vlans.yaml")

    def access(node: str, network: str, ip: str) -> Node:
        return Node(node, "netns", (Nic("eth0", derive_mac("vlans", node, "eth0"),
                                        network=network, ip=IPv4Interface(ip)),))

    assert t == Topology(
        name="vlans",
        networks=(Network("office", 10), Network("lab", 20)),
        nodes=(access("c1", "office", "10.10.0.1/24"), access("c2", "office", "10.10.0.2/24"),
               access("c3", "lab", "10.10.0.3/24"),
               Node("r1", "netns", (Nic("eth0", derive_mac("vlans", "r1", "eth0"),
                                        trunk=("office", "lab")),))),
        source=ROOT / "topologies" / "vlans.yaml")
    r1 = t.node("r1").nics[0]
    assert r1.is_trunk and r1.native is None and r1.networks == ("office", "lab")
    assert t.vlan_of("lab") == 20


def test_trunk_example_native_joins_the_allowed_set() -> None:
    t = load_topology(ROOT / "topologies" / "trunk.yaml")
    nic = t.node("sw1").nics[0]
    assert nic.trunk == ("voice", "data") and nic.native == "mgmt"
    assert nic.networks == ("voice", "data", "mgmt")
    assert nic.ip == IPv4Interface("192.168.1.1/24")


def test_demo_example_shows_every_network_mode() -> None:
    t = load_topology(ROOT / "topologies" / "demo.yaml")
    assert {n.mode for n in t.networks} == {"isolated", "nat", "bridged"}
    assert {n.kind for n in t.nodes} == {"netns", "vm"}
    assert any(nic.is_trunk for n in t.nodes for nic in n.nics)
    assert any(nic.dhcp for n in t.nodes for nic in n.nics)


def test_full_topology_networks() -> None:
    t = full()
    lab = t.network("lab")
    assert lab == Network(
        "lab", 20, "nat", subnet=IPv4Network("192.168.20.0/24"),
        gateway=IPv4Address("192.168.20.1"), uplink="eth1", host="hostA",
        dhcp=Dhcp(IPv4Address("192.168.20.100"), IPv4Address("192.168.20.200"),
                  FrozenMap({"vm1": IPv4Address("192.168.20.50")})),
        forwards=(Forward("tcp", 2222, "vm1", 22), Forward("udp", 5353, "c1", 53)),
        mac_aging=2.5, mac_limit=16)
    assert t.network("wan").gateway == IPv4Address("10.25.255.254")
    assert t.network("lan") == Network("lan", 30, "bridged",
                                       uplinks=FrozenMap({"hostA": "eth2"}))
    assert t.network("tlan").tagged is True
    assert t.network("office").mac_aging == 300.0 and t.network("office").mac_limit == 1024


def test_full_topology_nodes() -> None:
    t = full()
    c1 = t.node("c1")
    assert c1.host == "hostA" and c1.kind == "netns"
    assert c1.nics[1] == Nic("eth1", "aa:bb:cc:dd:ee:fe", trunk=("office", "lan"),
                             native="tlan")
    assert c1.nics[2].ip == IPv6Interface("fd00::10/64")
    assert t.node("vm1") == Node(
        "vm1", "vm", (Nic("eth0", "52:54:00:12:34:56", network="lab", dhcp=True),),
        host="hostB", vcpus=2, memory=2**30, kernel="/labs/images/bzImage", cmdline="console=ttyS0",
        initrd=Path("/boot/initrd.img"), disk=Disk(Path("/labs/disk.img"), readonly=True),
        restart="always")
    vm2 = t.node("vm2")
    assert vm2.memory == 32 * 2**20 and vm2.disk == Disk(Path("/labs/other.img"))
    assert vm2.nics == () and vm2.kernel == "builtin:tiny" and vm2.restart == "on-failure"
    assert t.node("vm3").memory == 32 * 2**20 and t.node("vm3").vcpus == 1


def test_full_topology_hosts_and_bus() -> None:
    t = full()
    assert t.hosts == (Host("hostA", "192.0.2.1", "the lab server"), Host("hostB", "192.0.2.2"))
    assert t.bus == Bus("mqtt://127.0.0.1:1883", "vnet/v1")
    assert t.source == Path("/labs/full.yaml")


def test_relative_paths_stay_relative_without_a_base_dir() -> None:
    t = full(base_dir=None)
    assert t.node("vm1").kernel == "images/bzImage"
    assert t.node("vm2").disk == Disk(Path("other.img"))


def test_load_resolves_paths_against_the_files_directory(tmp_path: Path) -> None:
    (tmp_path / "lab.yaml").write_text(
        "name: x\nnetworks: {}\nnodes: {vm: {kind: vm, disk: d.img, kernel: k}}\n")
    t = load_topology(tmp_path / "lab.yaml")
    assert t.node("vm").disk == Disk(tmp_path / "d.img")
    assert t.node("vm").kernel == str(tmp_path / "k")
    assert t.source == tmp_path / "lab.yaml"


def test_load_missing_file() -> None:
    with pytest.raises(TopologyError) as info:
        load_topology("/nonexistent/lab.yaml")
    assert info.value.problems == ["/nonexistent/lab.yaml: cannot read: No such file or "
                                   "directory"]


def test_load_binary_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "bad.yaml")
    assert info.value.problems[0].startswith(f"{tmp_path / 'bad.yaml'}:1: not UTF-8 text")


def test_string_source_is_not_a_path() -> None:
    t = parse_topology("name: x\nnetworks: {}\nnodes: {}\n")
    assert t.source is None and t.networks == () and t.nodes == ()


def test_lookups() -> None:
    t = full()
    assert t.vlan_of("tlan") == 31
    with pytest.raises(KeyError, match="no network 'nope'"):
        t.network("nope")
    with pytest.raises(KeyError, match="no node 'nope'"):
        t.node("nope")


def test_model_is_frozen_and_hashable() -> None:
    t = full()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "y"  # type: ignore[misc]
    assert hash(t) == hash(full())
    assert len({t, full()}) == 1
    lab = t.network("lab")
    assert lab.dhcp is not None and dict(lab.dhcp.leases) == {"vm1": IPv4Address("192.168.20.50")}


def test_gateway_defaults_to_the_first_host() -> None:
    t = parse_topology("name: x\nnetworks: {n: {vlan: 5, mode: nat, subnet: 10.9.8.0/22}}\n"
                       "nodes: {}\n")
    assert t.network("n").gateway == IPv4Address("10.9.8.1")


def test_order_is_the_files_order() -> None:
    t = parse_topology(dedent("""
        name: x
        networks: {z: {vlan: 3}, a: {vlan: 1}, m: {vlan: 2}}
        nodes: {n2: {kind: netns}, n1: {kind: netns}}
        """))
    assert [n.name for n in t.networks] == ["z", "a", "m"]
    assert [n.name for n in t.nodes] == ["n2", "n1"]


# -- MACs -------------------------------------------------------------------------------------

def test_derived_mac_is_pinned() -> None:
    # Changing this value changes every lab's MACs: do not, unless on purpose.
    assert derive_mac("vlans", "c1", "eth0") == "02:a3:4c:24:fb:39"
    assert derive_mac("lab", "vm1", "eth0") == derive_mac("lab", "vm1", "eth0")


def test_derived_macs_differ_per_lab_node_and_nic() -> None:
    macs = {derive_mac(lab, f"n{i}", f"eth{j}") for lab in ("a", "b", "c")
            for i in range(40) for j in range(4)}
    assert len(macs) == 3 * 40 * 4
    assert derive_mac("a", "b-c", "d") != derive_mac("a-b", "c", "d")


@settings(deadline=None)  # no per-example time limit: a loaded machine may pause any call
@given(st.text(min_size=1, max_size=16), st.text(min_size=1, max_size=31),
       st.text(min_size=1, max_size=15))
def test_derived_mac_is_local_unicast(lab: str, node: str, nic: str) -> None:
    mac = derive_mac(lab, node, nic)
    assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", mac)
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01


def test_derived_mac_is_used_when_absent() -> None:
    t = parse_topology("name: lab\nnetworks: {a: {vlan: 1}}\n"
                       "nodes: {n: {kind: netns, nics: [{name: e0, network: a}]}}\n")
    assert t.nodes[0].nics[0].mac == derive_mac("lab", "n", "e0")


# -- the dict form ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_round_trip_through_the_dict_form(path: Path) -> None:
    t = load_topology(path)
    again = parse_topology(json.dumps(topology_to_dict(t)), source=str(path))
    assert again == t


def test_full_round_trips_through_json() -> None:
    t = full()
    data = json.loads(json.dumps(topology_to_dict(t)))
    assert parse_topology(json.dumps(data), source="/labs/full.yaml") == t
    assert data["nodes"]["vm1"]["memory"] == 2**30
    assert data["nodes"]["c1"]["nics"][1] == {"name": "eth1", "mac": "aa:bb:cc:dd:ee:fe",
                                              "trunk": ["office", "lan"], "native": "tlan"}
    assert "vcpus" not in data["nodes"]["c1"]
    assert data["networks"]["lab"]["gateway"] == "192.168.20.1"
    assert data["bus"] == {"broker": "mqtt://127.0.0.1:1883", "topic_root": "vnet/v1"}
