"""The line-tracking YAML reader: plain values, lines, duplicates, aliases, merges, bad YAML."""

from __future__ import annotations

from textwrap import dedent
from typing import Any

import pytest

from vnet.errors import TopologyError
from vnet.topology import parse_topology
from vnet.topology.report import INVALID, Reporter, format_path
from vnet.topology.yamlcompose import LIBYAML
from vnet.topology.yamlsource import read_yaml


def read(text: str) -> tuple[Any, Reporter]:
    rep = Reporter("t.yaml")
    return read_yaml(dedent(text).lstrip("\n"), rep), rep


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(dedent(text).lstrip("\n"), source="t.yaml")
    return info.value.problems


def test_values_and_lines() -> None:
    value, rep = read("""
        name: x
        networks:
          office:
            vlan: 10
        nodes:
          c1: {kind: netns, nics: [{name: eth0, network: office}]}
          c2:
            kind: netns
            nics:
              - name: eth0
                network: office
        """)
    assert rep.problems == []
    assert value["networks"] == {"office": {"vlan": 10}}
    assert value["nodes"]["c2"]["nics"] == [{"name": "eth0", "network": "office"}]
    lines = rep.lines
    assert lines[("name",)] == 1
    assert lines[("networks", "office")] == 3  # a block mapping: its key's line
    assert lines[("networks", "office", "vlan")] == 4
    assert lines[("nodes", "c1", "nics", 0, "network")] == 6
    assert lines[("nodes", "c2", "nics")] == 9
    assert lines[("nodes", "c2", "nics", 0)] == 10
    assert lines[("nodes", "c2", "nics", 0, "network")] == 11
    assert rep.key_lines[("nodes", "c2", "kind")] == 8


def test_line_of_an_absent_path_is_its_nearest_ancestors() -> None:
    _, rep = read("""
        name: x
        nodes:
          c1:
            kind: netns
        """)
    assert rep.line(("nodes", "c1", "nics", 3, "ip")) == 3
    assert rep.line(("nope",)) == 1


def test_format_path() -> None:
    assert format_path(("nodes", "c1", "nics", 0, "ip")) == "nodes.c1.nics[0].ip"
    assert format_path(("networks", "lab", "dhcp", "range", 1)) == "networks.lab.dhcp.range[1]"
    assert format_path(()) == ""


def test_malformed_yaml_reports_the_parsers_line() -> None:
    assert problems("""
        name: x
        networks:
          a: {vlan: 1
        nodes: {}
        """) == ["t.yaml:4: invalid YAML: " + (
            "did not find expected ',' or '}'" if LIBYAML else "expected ',' or '}', but got ':'")
            + " (while parsing a flow mapping at line 3)"]


def test_bad_indentation() -> None:
    assert problems("""
        name: x
        networks:
          a:
            vlan: 1
           mode: nat
        nodes: {}
        """) == ["t.yaml:5: invalid YAML: " + (
            "did not find expected key" if LIBYAML
            else "expected <block end>, but found '<block mapping start>'")
            + " (while parsing a block mapping at line 3)"]


def test_tab_indentation() -> None:
    found = problems("name: x\nnetworks:\n\ta: {vlan: 1}\nnodes: {}\n")
    assert len(found) == 1 and found[0].startswith("t.yaml:3: invalid YAML: ")


def test_duplicate_keys_are_errors_at_every_level() -> None:
    assert problems("""
        name: x
        networks:
          a:
            vlan: 1
            vlan: 2
        nodes: {}
        name: y
        """) == [
        "t.yaml:5: networks.a.vlan: duplicate key 'vlan' (first at line 4): YAML would "
        "silently keep only the last one; remove one",
        "t.yaml:7: name: duplicate key 'name' (first at line 1): YAML would silently keep only "
        "the last one; remove one"]


def test_duplicate_key_in_flow_mapping() -> None:
    assert problems("""
        name: x
        networks: {a: {vlan: 1}}
        nodes:
          n: {kind: netns, nics: [{name: e0, network: a, name: e1}]}
        """) == ["t.yaml:4: nodes.n.nics[0].name: duplicate key 'name' (first at line 4): "
                 "YAML would silently keep only the last one; remove one"]


def test_the_first_of_duplicate_keys_is_kept() -> None:
    value, rep = read("a: 1\na: 2\n")
    assert value == {"a": 1}
    assert len(rep.problems) == 1


def test_empty_file() -> None:
    assert problems("") == ["t.yaml:1: the file is empty: expected a mapping with name, "
                            "networks and nodes"]
    assert problems("# only a comment\n") == problems("")


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == ["t.yaml:1: expected a mapping, got a list"]
    assert problems("just text\n") == ["t.yaml:1: expected a mapping, got a string "
                                       "('just text')"]


def test_several_documents() -> None:
    assert problems("""
        name: x
        networks: {}
        nodes: {}
        ---
        name: y
        """) == ["t.yaml:4: invalid YAML: expected a single document in the stream (line 1), "
                 "but found another document"]


def test_keys_must_be_strings() -> None:
    assert problems("""
        name: x
        networks:
          10: {vlan: 10}
          on: {vlan: 11}
          [a, b]: {vlan: 12}
        nodes: {}
        """) == [
        "t.yaml:3: networks.10: key '10' is read as int, not as a name: quote it (\"10\")",
        "t.yaml:4: networks.on: key 'on' is read as bool, not as a name: quote it (\"on\")",
        "t.yaml:5: networks: a key must be a plain string, not a list or mapping"]


def test_quoted_keys_and_values_are_strings() -> None:
    t = parse_topology(dedent("""
        name: x
        networks:
          "on": {vlan: 10}
        nodes:
          n: {kind: netns, nics: [{name: e0, network: "on", mac: "52:54:00:12:34:56"}]}
        """))
    assert t.network("on").vlan == 10
    assert t.nodes[0].nics[0].mac == "52:54:00:12:34:56"


def test_tags() -> None:
    assert problems("""
        name: x
        networks: !!set {a, b}
        nodes:
          n: {kind: netns, nics: [{name: e0, network: a, ip: !custom 10.0.0.1/24}]}
        """) == ["t.yaml:2: networks: unsupported YAML tag tag:yaml.org,2002:set",
                 "t.yaml:4: nodes.n.nics[0].ip: cannot read this value: could not determine a "
                 "constructor for the tag '!custom'"]


def test_explicit_str_tag_is_a_string() -> None:
    t = parse_topology("name: x\nnetworks: {a: {vlan: 1}}\n"
                       "nodes: {n: {kind: netns, nics: [{name: !!str 0, network: a}]}}\n")
    assert t.nodes[0].nics[0].name == "0"


def test_dates_are_not_strings() -> None:
    assert problems("name: 2024-01-01\nnetworks: {}\nnodes: {}\n") == [
        "t.yaml:1: name: expected a string, got date datetime.date(2024, 1, 1): quote it "
        '("2024-01-01")']


def test_aliases_are_followed() -> None:
    t = parse_topology(dedent("""
        name: x
        networks: {a: {vlan: 1}, b: {vlan: 2}}
        nodes:
          n1: &trunk_node {kind: netns, nics: [{name: eth0, trunk: [a, b], native: null}]}
          n2: *trunk_node
        """))
    assert t.node("n2").nics[0].trunk == ("a", "b")
    assert t.node("n1").nics[0].mac != t.node("n2").nics[0].mac


def test_merge_keys_explicit_wins() -> None:
    value, rep = read("""
        base: &base {vcpus: 2, memory: 1G, kernel: k1}
        more: &more {kernel: k2, cmdline: quiet}
        vm:
          <<: [*base, *more]
          memory: 2G
        """)
    assert rep.problems == []
    assert value["vm"] == {"memory": "2G", "vcpus": 2, "kernel": "k1", "cmdline": "quiet"}
    assert rep.lines[("vm", "memory")] == 5
    assert rep.lines[("vm", "vcpus")] == 1  # where the merged value is written


def test_merge_keys_in_a_topology() -> None:
    t = parse_topology(dedent("""
        name: x
        networks:
          a: &net {vlan: 1, mac_limit: 7}
          b: {<<: *net, vlan: 2}
        nodes: {}
        """))
    assert t.network("b") .mac_limit == 7 and t.network("b").vlan == 2


def test_merge_needs_a_mapping() -> None:
    _, rep = read("a:\n  <<: [1]\n")
    assert rep.problems == ["t.yaml:2: a: a merge key (<<) takes a mapping or a list of "
                            "mappings"]


def test_recursive_alias() -> None:
    value, rep = read("a: &x [1, *x]\n")
    assert rep.problems == ["t.yaml:1: a[1]: recursive alias: a value contains itself"]
    assert value == {"a": [1, INVALID]}


def test_alias_bomb_is_refused() -> None:
    """A "billion laughs": 10**8 values from nine lines; refused by counting, not by time."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    value, rep = read("\n".join(lines) + "\n")
    assert value is INVALID
    # a0..a4 hold 123,455 values, a5 111,111 more: the 200,001st is one of the x on line 1
    assert rep.problems == [
        "t.yaml:1: a5[0][6][8][8][8][8]: aliases and merge keys (<<) expand the document to "
        "more than 200,000 values by here: vnet reads no more (an alias bomb?); write the "
        "values out, or use fewer aliases"]


def test_non_printable_characters() -> None:
    found = problems("name: x\x07\nnetworks: {}\nnodes: {}\n")
    assert len(found) == 1 and found[0].startswith("t.yaml:1: invalid YAML: ")
