"""The ``expect:`` block of a topology file: what it means, and every problem it can have,
each with its ``FILE:LINE: KEY.PATH: message``."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest

from vnet.cli import main
from vnet.errors import TopologyError
from vnet.topology import parse_topology, topology_to_dict
from vnet.topology.expect import source_nic, target_nics
from vnet.topology.model import Expectation

LAB = """\
name: x
networks:
  red:  {vlan: 10}
  blue: {vlan: 20}
  out:  {vlan: 30, mode: nat, subnet: 192.168.30.0/24,
         dhcp: {range: [192.168.30.100, 192.168.30.199]}}
nodes:
  a: {kind: netns, nics: [{name: eth0, network: red, ip: 10.0.0.1/24}]}
  b: {kind: netns, nics: [{name: eth0, network: blue, ip: 10.0.1.2/24},
                          {name: eth1, network: red, ip: 10.0.0.2/24}]}
  t: {kind: netns, nics: [{name: eth0, trunk: [red], native: null}]}
  v: {kind: vm, nics: [{name: eth0, network: red, ip: 10.0.0.3/24}]}
  w: {kind: netns, nics: [{name: eth0, network: out, ip: dhcp}]}
expect:
"""


def parse(expect: str) -> tuple[Expectation, ...]:
    return parse_topology(LAB + dedent(expect), source="t.yaml").expect


def problems(expect: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse(expect)
    return info.value.problems


def test_each_kind_of_expectation_is_read_with_its_defaults() -> None:
    got = parse("""\
        - {from: a, to: b, ping: true}
        - {from: a, to: 192.0.2.7, tcp: 80, within: 1.5}
        - {from: a, to: b, tcp: 22, connects: false}
        - {from: t, vlan: 10, to: a, arp: true}
        - {from: a, to: v, ping: false}
        """)
    assert got == (
        Expectation("a", "b", "ping", want=True),
        Expectation("a", "192.0.2.7", "tcp", target_is_node=False, port=80, window=1.5),
        Expectation("a", "b", "tcp", want=False, port=22),
        Expectation("t", "a", "arp", vlan=10),
        Expectation("a", "v", "ping", want=False))
    assert [e.describe() for e in got] == [
        "a -> b ping", "a -> 192.0.2.7 tcp/80", "a -> b no tcp/22", "t -> a arp vlan 10",
        "a -> v no ping"]


def test_the_block_survives_the_round_trip_through_a_dict() -> None:
    topology = parse_topology(LAB + "  - {from: a, to: b, tcp: 22, connects: false}\n"
                              "  - {from: t, vlan: 10, to: a, arp: true, within: 2}\n")
    again = parse_topology(json.dumps(topology_to_dict(topology)))
    assert again.expect == topology.expect


@pytest.mark.parametrize(("expect", "wanted"), [
    ("- {from: z, to: b, ping: true}",
     ["t.yaml:15: expect[0].from: node 'z' is not defined (defined: a, b, t, v, w)"]),
    ("- {from: a, to: bb, ping: true}",
     ["t.yaml:15: expect[0].to: node 'bb' is not defined (defined: a, b, t, v, w); did you "
      "mean 'b'? (or give an IP address)"]),
    ("- {from: a, to: b, pign: true}",
     ["t.yaml:15: expect[0].pign: unknown key 'pign'; did you mean 'ping'? (allowed: arp, "
      "connects, from, ping, tcp, to, vlan, within)",
      "t.yaml:15: expect[0].ping: an expectation needs exactly one of ping, tcp or arp"]),
    ("- {from: a, to: b, ping: true, tcp: 80}",
     ["t.yaml:15: expect[0].tcp: tcp and ping exclude each other: an expectation needs "
      "exactly one of ping, tcp or arp"]),
    ("- {from: a, to: b, ping: yes please}",
     ["t.yaml:15: expect[0].ping: expected true or false, got a string ('yes please')"]),
    ("- {from: a, vlan: 10, to: b, arp: true}",
     ["t.yaml:15: expect[0].from: vlan: 10 needs a trunk NIC, and node a has none (vlan: is "
      "for sending tagged from a trunk)"]),
    ("- {from: t, vlan: 20, to: 10.0.1.2, arp: true}",
     ["t.yaml:15: expect[0].from: node t's trunk does not carry VLAN 20 (blue); it "
      "carries 10"]),
    ("- {from: t, vlan: 99, to: 10.0.1.2, arp: true}",
     ["t.yaml:15: expect[0].from: no network of the lab has VLAN 99 (VLANs: 10, 20, 30)"]),
    ("- {from: a, vlan: 10, to: b, ping: true}",
     ["t.yaml:15: expect[0].vlan: only allowed together with arp"]),
    ("- {from: a, to: b, ping: true, connects: false}",
     ["t.yaml:15: expect[0].connects: only allowed together with tcp"]),
    ("- {from: t, to: a, ping: true}",
     ["t.yaml:15: expect[0].from: node t has no access NIC with an IPv4 address to send "
      "from; a trunk sends tagged only with arp and vlan: VLAN_ID"]),
    ("- {from: v, to: a, ping: true}",
     ["t.yaml:15: expect[0].from: node v is a VM: checks run in namespace nodes; turn the "
      "expectation around (from a namespace node to v)"]),
    ("- {from: a, to: t, ping: true}",
     ["t.yaml:15: expect[0].to: node t has no IPv4 address to aim at (an access NIC with "
      "ip: ADDRESS/PREFIX or dhcp); give an IP address instead"]),
    ("- {from: a, to: b, ping: true, within: 61}",
     ["t.yaml:15: expect[0].within: 61 s is too long: at most 60 s"]),
    ("- {from: a, to: b, ping: true, within: 0}",
     ["t.yaml:15: expect[0].within: 0 is too small: it must be greater than 0"]),
    ("- {from: a, ping: true}", ["t.yaml:15: expect[0].to: required key is missing"]),
    ("- {from: a, to: b, tcp: 0}", ["t.yaml:15: expect[0].tcp: 0 is out of range 1..65535"]),
])
def test_a_bad_expectation_is_reported_at_its_line(expect: str, wanted: list[str]) -> None:
    assert problems(expect) == wanted


def test_every_bad_expectation_is_reported_not_just_the_first() -> None:
    got = problems("""\
        - {from: a, to: b, ping: true}
        - {from: z, to: b, ping: true}
        - {from: a, to: b, ping: true}
        - {from: a, to: q, arp: true}
        """)
    assert [p.split(":")[1] for p in got] == ["16", "18"]


def test_the_source_nic_and_target_addresses_are_chosen_as_vnet_test_uses_them() -> None:
    topology = parse_topology(LAB + "  - {from: a, to: b, ping: true}\n")
    networks = {n.name: n for n in topology.networks}
    ping = Expectation("a", "b", "ping")
    assert source_nic(ping, topology.node("a"), networks) == topology.node("a").nics[0]
    # b's NIC in red (a's network) comes first, although b lists its blue NIC first
    assert [n.name for n in target_nics(ping, topology.node("b"), networks, prefer="red")] \
        == ["eth1", "eth0"]
    arp = Expectation("t", "b", "arp", vlan=20)
    assert [n.name for n in target_nics(arp, topology.node("b"), networks)] == ["eth0"]
    assert source_nic(Expectation("t", "a", "arp", vlan=10), topology.node("t"),
                      networks) == topology.node("t").nics[0]


def test_vnet_check_reports_a_bad_expectation(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(LAB + "  - {from: a, to: nobody, ping: true}\n")
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}:15: expect[0].to: node 'nobody' is not defined (defined: a, b, t, v, w) "
        f"(or give an IP address)\n")
