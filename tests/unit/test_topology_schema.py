"""The published JSON Schema: in step with the loader, valid, and agreeing with it on files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.errors import TopologyError
from vnet.topology import (
    Network,
    Node,
    json_schema,
    load_topology,
    parse_topology,
    topology_to_dict,
)
from vnet.topology import fields as spec_table
from vnet.topology.values import parse_size

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "vnet" / "topology" / "topology.schema.json"
EXAMPLES = sorted((ROOT / "topologies").glob("*.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(json_schema())


def test_checked_in_schema_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), (
        "vnet/topology/topology.schema.json is stale; regenerate it with\n"
        "    python -m vnet.topology.schema > vnet/topology/topology.schema.json")


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())


def _objects(schema: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            found.append(schema)
        for value in schema.values():
            found += _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _objects(value)
    return found


def test_every_object_refuses_unknown_keys_and_describes_its_fields() -> None:
    objects = _objects(json_schema())
    assert len(objects) >= 8
    for obj in objects:
        assert obj["additionalProperties"] is False
        for name, prop in obj["properties"].items():
            assert prop.get("description"), name


def test_schema_defaults_agree_with_the_model() -> None:
    net, node = spec_table.NETWORK.fields, spec_table.NODE.fields
    defaults = {f.name: f.default for f in dataclasses.fields(Network)}
    assert net["mode"].default == defaults["mode"]
    assert net["tagged"].default == defaults["tagged"]
    assert net["mac_aging"].default == defaults["mac_aging"]
    assert net["mac_limit"].default == defaults["mac_limit"]
    defaults = {f.name: f.default for f in dataclasses.fields(Node)}
    for key in ("vcpus", "kernel", "restart"):
        assert node[key].default == defaults[key], key
    assert parse_size(node["memory"].default) == defaults["memory"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(path: Path) -> None:
    VALIDATOR.validate(yaml.safe_load(path.read_text()))
    load_topology(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_dict_form_validates(path: Path) -> None:
    VALIDATOR.validate(json.loads(json.dumps(topology_to_dict(load_topology(path)))))


GOOD: dict[str, Any] = {
    "name": "x",
    "networks": {"a": {"vlan": 10}, "n": {"vlan": 20, "mode": "nat",
                                          "subnet": "10.0.0.0/24"}},
    "nodes": {"c1": {"kind": "netns", "nics": [{"name": "eth0", "network": "a"}]},
              "t1": {"kind": "netns", "nics": [{"name": "eth0", "trunk": ["a"],
                                                 "native": None}]},
              "v1": {"kind": "vm", "memory": "64M", "disk": "d.img"}},
}


def _with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(GOOD))
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


BAD = {
    "unknown key": _with(("networks", "a", "vlna"), 1),
    "unknown top-level key": _with(("extra",), {}),
    "vlan 5000": _with(("networks", "a", "vlan"), 5000),
    "vlan as string": _with(("networks", "a", "vlan"), "10"),
    "vlan as bool": _with(("networks", "a", "vlan"), True),
    "nics not a list": _with(("nodes", "c1", "nics"), {"name": "eth0"}),
    "bad mode": _with(("networks", "a", "mode"), "natt"),
    "bad lab name": _with(("name",), "Lab"),
    "bad node name": _with(("nodes", "C1"), {"kind": "netns"}),
    "missing kind": _with(("nodes", "c1"), {"nics": []}),
    "nic with network and trunk": _with(("nodes", "c1", "nics"),
                                        [{"name": "e", "network": "a", "trunk": ["a"]}]),
    "nic with neither": _with(("nodes", "c1", "nics"), [{"name": "e"}]),
    "native without trunk": _with(("nodes", "c1", "nics"),
                                  [{"name": "e", "network": "a", "native": "a"}]),
    "vm key on netns": _with(("nodes", "c1", "vcpus"), 2),
    "tagged on isolated": _with(("networks", "a", "tagged"), True),
    "nat without subnet": _with(("networks", "n"), {"vlan": 20, "mode": "nat"}),
    "bridged without uplink": _with(("networks", "a", "mode"), "bridged"),
    "dhcp on isolated": _with(("networks", "a", "dhcp"), {"range": ["1.1.1.1", "1.1.1.2"]}),
    "bad mac": _with(("nodes", "c1", "nics", 0, "mac"), "52:54:00"),
    "memory too small": _with(("nodes", "v1", "memory"), 1024),
    "version 2": _with(("version",), 2),
    "bus without broker": _with(("bus",), {}),
    "host without address": _with(("hosts",), {"h1": {}}),
    "password under bus": _with(("bus",), {"broker": "mqtt://b", "password": "x"}),
    "vni 0": _with(("networks", "a", "vni"), 0),
    "vni above 24 bits": _with(("networks", "a", "vni"), 2**24),
    "host on an isolated network": _with(("networks", "a", "host"), "h1"),
    "per-host uplink with a bad interface name": _with(
        ("networks", "a"), {"vlan": 10, "mode": "bridged", "uplink": {"h1": "bad name"}}),
}


@pytest.mark.parametrize("doc", BAD.values(), ids=BAD.keys())
def test_bad_documents_fail_both_schema_and_loader(doc: dict[str, Any]) -> None:
    assert list(VALIDATOR.iter_errors(doc)), "the schema accepted it"
    with pytest.raises(TopologyError):
        parse_topology(json.dumps(doc))


def test_good_document_passes_both() -> None:
    VALIDATOR.validate(GOOD)
    parse_topology(json.dumps(GOOD))


def test_optional_sections_validate() -> None:
    doc = _with(("hosts",), {"hostA": {"address": "192.0.2.1", "description": "x"}})
    doc["bus"] = {"broker": "mqtt://broker:1883", "topic_root": "lab/v1"}
    for node in doc["nodes"].values():
        node["host"] = "hostA"
    doc["networks"]["n"]["host"] = "hostA"
    VALIDATOR.validate(doc)
    parse_topology(json.dumps(doc))


# -- the schema never accepts what the loader refuses for structural reasons -------------------

def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


RICH = json.loads(json.dumps(topology_to_dict(parse_topology("""
name: rich
networks:
  a: {vlan: 10, vni: 5010}
  n: {vlan: 20, mode: nat, subnet: 10.0.0.0/24, uplink: eth1, host: h1,
      dhcp: {range: [10.0.0.100, 10.0.0.200], leases: {v1: 10.0.0.50}},
      forward: [{proto: tcp, port: 2222, to: "v1:22"}]}
  b: {vlan: 30, mode: bridged, uplink: {h1: eth2, h2: eth3}}
nodes:
  c1: {kind: netns, host: h1, nics: [{name: eth0, network: a, ip: 10.1.0.1/24}]}
  t1: {kind: netns, host: h2, nics: [{name: eth0, trunk: [a, b], native: n}]}
  v1: {kind: vm, host: h2, disk: {path: /d.img}, cmdline: x, initrd: /i,
       nics: [{name: eth0, network: n, ip: dhcp}]}
hosts: {h1: {address: 192.0.2.1, description: d}, h2: {address: 192.0.2.2}}
bus: {broker: "mqtt://b:1883"}
"""))))
RICH_PATHS = _paths(RICH)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "a", "eth0", "nat", "10.0.0.7/24", "v1:22", "dhcp", "1G",
                       "02:00:00:00:00:01", "builtin:tiny", "a" * 40]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["vlan", "name", "kind", "x", "path"]), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(RICH_PATHS), json_values)
def test_a_document_the_schema_rejects_the_loader_rejects(
        path: tuple[str | int, ...], value: Any) -> None:
    doc: Any = json.loads(json.dumps(RICH))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    schema_ok = not list(VALIDATOR.iter_errors(doc))
    try:
        parse_topology(json.dumps(doc))
    except TopologyError:
        return  # the loader may be stricter than the schema (addresses, references)
    assert schema_ok, f"the loader accepted what the schema refuses: {path} = {value!r}"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_topology_or_a_topology_error(text: str) -> None:
    try:
        parse_topology(text)
    except TopologyError as err:
        assert err.problems and all(p.startswith("<string>:") for p in err.problems)
