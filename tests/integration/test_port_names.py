"""Port names of things that are not nodes never collide with a node's: a node called
``uplink`` with a NIC ``eth2`` and the bridged uplink ``eth2`` are two switch ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from tests.conftest import needs_root
from tests.integration.test_networks import External
from vnet.testing import Lab, TestHost

pytestmark = needs_root
TOPOLOGY = Path(__file__).parent / "topologies" / "uplinknode.yaml"


@pytest.fixture
def lab_on_lan() -> Iterator[tuple[Lab, External]]:
    with TestHost() as host:
        lan = External(host, "eth2", "198.51.100.1/24")
        try:
            yield host.up(TOPOLOGY), lan
        finally:
            lan.close()


def mac_of(lab: Lab, node: str) -> str:
    return str(next(n["nics"][0]["mac"] for n in lab.status()["nodes"] if n["name"] == node))


def test_node_uplink_and_the_uplink_eth2_are_distinct_ports(lab_on_lan) -> None:
    lab, lan = lab_on_lan
    # Frames reach the right port: the LAN reaches the node "uplink" (through its own port and
    # the uplink's), and b1; the node "uplink" reaches b1 inside the lab.
    assert lan.run("ping", "-c", "2", "-W", "1", "198.51.100.10").returncode == 0
    assert lan.run("ping", "-c", "1", "-W", "1", "198.51.100.11").returncode == 0
    assert lab.exec("uplink", ["ping", "-c", "1", "-W", "1", "198.51.100.11"]).returncode == 0
    assert mac_of(lab, "uplink") in lan.run("ip", "neigh", "show", "198.51.100.10").stdout

    with IPRoute(netns=lan.name) as ipr:
        lan_mac = ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get("IFLA_ADDRESS")
    fdb = {(e["mac"], e["port"]) for e in lab.fdb()}
    assert (mac_of(lab, "uplink"), "uplink.eth2") in fdb
    assert (lan_mac, "@uplink.eth2") in fdb

    status = lab.status()
    node = next(n for n in status["nodes"] if n["name"] == "uplink")
    assert node["nics"][0]["port"] == "uplink.eth2"
    assert node["nics"][0]["counters"]["rx_frames"] > 0
    assert [(u["port"], u["ifname"]) for u in status["uplinks"]] == [("@uplink.eth2", "eth2")]
    assert status["uplinks"][0]["counters"]["rx_frames"] > 0
