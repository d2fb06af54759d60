"""The pure half of vnetd: resource plans and the state file, without root."""

from __future__ import annotations

from pathlib import Path

from vnet.daemon import naming
from vnet.daemon.resources import (
    BridgeResource,
    NetnsNodeResource,
    PortResource,
    Resource,
    VethSpec,
    from_dict,
    plan,
    to_dict,
)
from vnet.daemon.state import LabRecord, StateStore
from vnet.switch import VlanOptions

BRIDGE = BridgeResource("lab", (VlanOptions(10, 300.0, 1024),))


def node(name: str, address: str = "10.0.0.1/24") -> NetnsNodeResource:
    return NetnsNodeResource("lab", name, naming.netns_name("lab", name), (VethSpec(
        "eth0", naming.host_ifname("lab", name, "eth0"), "02:00:00:00:00:01", (address,),
        naming.owner_alias("lab", name, "eth0")),))


def port(name: str, vlan: int = 10) -> PortResource:
    return PortResource("lab", f"{name}.eth0", naming.host_ifname("lab", name, "eth0"),
                        "access", vlan=vlan, node=name)


def test_names_fit_the_kernel_and_do_not_collide() -> None:
    names = {naming.host_ifname(f"lab{i}", f"node{j}", "eth0") for i in range(30)
             for j in range(30)}
    assert len(names) == 900
    assert all(len(n) <= naming.IFNAME_MAX for n in names)
    assert naming.host_ifname("a", "b-c", "d") != naming.host_ifname("a-b", "c", "d")


def test_fresh_lab_creates_in_dependency_order() -> None:
    desired: list[Resource] = [port("n1"), node("n1"), BRIDGE]
    work = plan(desired, [])
    assert work.delete == []
    assert [r.kind for r in work.create] == ["bridge", "netns-node", "port"]


def test_same_resources_mean_an_empty_plan() -> None:
    desired: list[Resource] = [BRIDGE, node("n1"), port("n1")]
    assert plan(desired, list(desired)).empty


def test_changed_node_rebuilds_its_ports_even_if_they_did_not_change() -> None:
    realised: list[Resource] = [BRIDGE, node("n1"), port("n1"), node("n2"), port("n2")]
    desired: list[Resource] = [BRIDGE, node("n1", "10.0.0.9/24"), port("n1"), node("n2"),
                               port("n2")]
    work = plan(desired, realised)
    assert work.delete == [port("n1"), node("n1")]          # ports before their node
    assert work.create == [node("n1", "10.0.0.9/24"), port("n1")]


def test_changed_bridge_rebuilds_every_port_of_the_lab() -> None:
    realised: list[Resource] = [BRIDGE, node("n1"), port("n1")]
    new_bridge = BridgeResource("lab", (VlanOptions(10, 60.0, 1024),))
    work = plan([new_bridge, node("n1"), port("n1")], realised)
    assert work.delete == [port("n1"), BRIDGE]
    assert work.create == [new_bridge, port("n1")]


def test_removed_node_is_deleted_with_its_port() -> None:
    realised: list[Resource] = [BRIDGE, node("n1"), port("n1"), node("n2"), port("n2")]
    work = plan([BRIDGE, node("n1"), port("n1")], realised)
    assert work.delete == [port("n2"), node("n2")] and work.create == []


def test_resources_survive_the_state_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    record = LabRecord("lab", "/x/lab.yaml")
    trunk = PortResource("lab", "r.eth0", "vn123", "trunk", allowed=(10, 20), native=30,
                         node="r")
    for resource in (BRIDGE, node("n1"), port("n1"), trunk):
        assert from_dict(to_dict(resource)) == resource
        record.resources[resource] = "ready"
    record.resources[node("n2")] = "pending"
    store.save(record)
    loaded = store.load("lab")
    assert loaded == record
    assert loaded is not None and loaded.pending() == [node("n2")]
    assert [r.lab for r in store.load_all()] == ["lab"]
    store.remove("lab")
    assert store.load("lab") is None and store.load_all() == []
