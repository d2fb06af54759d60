"""vnet graph: the lab's picture as DOT (pure), from a file and from a live lab's status, and
rendered by graphviz."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from vnet.cli import main
from vnet.observe import graph
from vnet.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "topologies" / "demo.yaml"
SPAN = ROOT / "topologies" / "span.yaml"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")


def edges(dot: str) -> dict[tuple[str, str], str]:
    """(from, to) -> the attribute text of each edge of the DOT text."""
    return {(a, b): attrs for a, b, attrs in
            re.findall(r'^\s*"([^"]+)" -- "([^"]+)" \[(.*)\];$', dot, re.MULTILINE)}


def declaration(dot: str, name: str) -> str:
    match = re.search(rf'^\s*"{re.escape(name)}" \[(.*)\];$', dot, re.MULTILINE)
    assert match, f"{name} is not declared"
    return match.group(1)


def test_the_demo_shows_every_node_network_port_and_way_out() -> None:
    dot = graph.to_dot(graph.from_topology(load_topology(DEMO)))
    e = edges(dot)
    assert 'shape="box3d"' in declaration(dot, "node:vm1")                # a VM
    assert 'style="rounded,filled"' in declaration(dot, "node:alice")     # a namespace node
    assert 'label="nat\\nVLAN 30 · NAT\\n192.168.30.0/24\\nDHCP 192.168.30.100-199"' in \
        declaration(dot, "net:nat")
    assert 'label="eth0\\n10.0.10.11/24"' in e[("node:alice", "net:red")]
    assert 'label="eth0\\ndhcp"' in e[("node:web", "net:nat")]
    # the trunk: one bold edge per tagged VLAN, none to a network it does not carry
    assert 'label="eth0 tagged 10", color="#d62728"' in e[("node:probe", "net:red")]
    assert 'penwidth="4"' in e[("node:probe", "net:blue")]
    assert ("node:probe", "net:nat") not in e
    assert "forward tcp/8080 → web:80" in declaration(dot, "gw:nat")
    assert ("net:nat", "gw:nat") in e and ("gw:nat", "uplink:nat:") in e
    assert "host interface eth1\\nmasquerade" in declaration(dot, "uplink:nat:")
    assert "host interface eth2\\nbridged, untagged" in declaration(dot, "uplink:lan:")
    assert "cluster_host" not in dot                                      # no hosts: no clusters


def test_a_native_network_is_a_dashed_edge() -> None:
    g = graph.LabGraph("x", (graph.GraphNetwork("a", 10, "isolated"),
                             graph.GraphNetwork("b", 20, "isolated")),
                       (graph.GraphNode("t", "netns", (
                           graph.GraphNic("eth0", "trunk", ("a",), native="b"),)),))
    e = edges(graph.to_dot(g))
    assert 'style="dashed"' in e[("node:t", "net:b")]
    assert 'label="eth0 native"' in e[("node:t", "net:b")]
    assert 'label="eth0 tagged 10"' in e[("node:t", "net:a")]


def test_hosts_are_clusters_around_their_nodes_and_gateways() -> None:
    dot = graph.to_dot(graph.from_topology(load_topology(SPAN)))
    clusters = dict(re.findall(r'subgraph "cluster_host_(\w+)" \{(.*?)\n  \}', dot, re.DOTALL))
    assert list(clusters) == ["h1", "h2", "h3"]
    assert '"node:a"' in clusters["h1"] and '"gw:inet"' in clusters["h1"]
    assert '"node:v2"' in clusters["h2"] and '"node:t"' in clusters["h2"]
    assert '"node:c"' in clusters["h3"]
    # networks belong to no host: they are declared in the switch cluster, before any host
    assert all('"net:' not in body for body in clusters.values())
    assert "switch (VXLAN between hosts)" in dot


def test_quoting_keeps_dot_syntax_intact() -> None:
    assert graph.quote('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'


def test_network_colours_follow_colour_names_and_stay_distinct() -> None:
    nets = [graph.GraphNetwork(n, i + 1, "isolated") for i, n in
            enumerate(["blue", "office", "red", "lab"])]
    colours = graph.colours(nets)
    assert colours["blue"] == graph.NAMED["blue"] and colours["red"] == graph.NAMED["red"]
    assert len(set(colours.values())) == 4


def live_status() -> dict[str, Any]:
    return {"name": "live", "networks": [
        {"name": "red", "vlan": 10, "mode": "isolated", "gateway": None, "uplink": None},
        {"name": "out", "vlan": 30, "mode": "nat", "gateway": "192.168.30.1/24",
         "uplink": "eth1"}],
        "nodes": [
            {"name": "a", "kind": "netns", "state": "running", "nics": [
                {"name": "eth0", "mode": "access", "vlans": [10], "native": None,
                 "ip": ["10.0.0.1/24"]}]},
            {"name": "t", "kind": "netns", "state": "running", "nics": [
                {"name": "eth0", "mode": "trunk", "vlans": [10, 30], "native": 30,
                 "ip": []}]},
            {"name": "v", "kind": "vm", "state": "crashed", "nics": [
                {"name": "eth0", "mode": "access", "vlans": [30], "native": None,
                 "ip": []}]}]}


def test_a_live_lab_is_drawn_from_its_status_with_node_states() -> None:
    g = graph.from_status(live_status())
    assert g.live
    assert g.networks[1].subnet == "192.168.30.0/24" and g.networks[1].gateway == "192.168.30.1"
    assert g.nodes[1].nics[0] == graph.GraphNic("eth0", "trunk", ("red",), native="out")
    dot = graph.to_dot(g)
    assert "v\\nVM\\n[crashed]" in declaration(dot, "node:v")
    assert f'color="{graph.STATE_COLOURS["crashed"]}"' in declaration(dot, "node:v")
    assert "[running]" in declaration(dot, "node:a")
    assert 'style="dashed"' in edges(dot)[("node:t", "net:out")]


def test_json_lists_the_parts() -> None:
    out = graph.to_json(graph.from_topology(load_topology(DEMO)))
    assert [n["name"] for n in out["networks"]] == ["red", "blue", "nat", "lan"]
    probe = next(n for n in out["nodes"] if n["name"] == "probe")
    assert probe["nics"] == [{"name": "eth0", "mode": "trunk", "networks": ["red", "blue"],
                              "native": None, "ip": None}]


@needs_dot
@pytest.mark.parametrize("suffix", ["svg", "png", "dot"])
def test_vnet_graph_writes_the_demo(tmp_path: Path, suffix: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"demo.{suffix}"
    assert main(["graph", str(DEMO), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: demo (8 nodes, 4 networks)\n"
    data = out.read_bytes()
    if suffix == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 600 and height > 300
    elif suffix == "svg":
        texts = {t.text for t in ET.fromstring(data).iter("{http://www.w3.org/2000/svg}text")}
        for name in ("alice", "bob", "carol", "probe", "web", "printer", "vm1", "vm2",
                     "NAT gateway", "vnet switch (802.1Q)"):
            assert name in texts
    else:
        assert data.decode() == graph.to_dot(graph.from_topology(load_topology(DEMO)))


def test_without_graphviz_vnet_graph_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["graph", str(DEMO), "-o", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err == (
        "vnet: graphviz's dot is not installed: install it (apt-get install graphviz), or "
        "write DOT text with -o FILE.dot\n")
    assert not (tmp_path / "x.png").exists()


def test_an_unknown_output_format_is_refused(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(DEMO), "-o", str(tmp_path / "x.jpg")]) == 1
    assert "name it .svg, .png or .dot" in capsys.readouterr().err


def test_vnet_graph_json_and_dot_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(DEMO), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "demo"
    assert main(["graph", str(DEMO)]) == 0
    assert capsys.readouterr().out.startswith('graph "demo" {')


def test_vnet_test_needs_an_expect_block(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("name: x\nnetworks: {}\nnodes: {}\n")
    assert main(["--socket", str(tmp_path / "none.sock"), "test", str(path)]) == 1
    assert capsys.readouterr().err == (f"vnet: {path} has no expect: block: nothing to test "
                                       f"(see the topology format's expect section)\n")


def test_serve_before_the_lab_takes_the_lab_not_an_address(
        capsys: pytest.CaptureFixture[str]) -> None:
    # argparse gives DEMO to --serve (its ADDR is optional): the source must still be found,
    # as the refusal of -o with --serve (checked before any server starts) shows.
    assert main(["graph", "--serve", str(DEMO), "-o", "x.svg"]) == 1
    assert "leave out -o and --json" in capsys.readouterr().err


def test_graph_without_a_source_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--serve", "127.0.0.1:0"]) == 1
    assert "needs a topology FILE or a LAB name" in capsys.readouterr().err
    assert main(["graph"]) == 1
    assert "needs a topology FILE or a LAB name" in capsys.readouterr().err
