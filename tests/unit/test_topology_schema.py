"""The published JSON Schema: in step with the loader, valid, and agreeing with it on files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the venv
import pytest
import yaml

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
    doc["nodes"]["c1"]["host"] = "hostA"
    VALIDATOR.validate(doc)
    parse_topology(json.dumps(doc))
