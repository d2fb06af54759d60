"""A learned MAC crosses hosts: a node on h1 changes its MAC and sends; h1's switch learns it
on the node's port, h1's vnetd advertises it on the bus, and h2's kernel vxlan FDB sends it
to h1 (read back with ``bridge -j fdb show`` in h2's namespace).  When it ages out of h1's
switch, h1 withdraws it and h2's entry goes.  h2 learned the same MAC on its vxlan port
(the broadcast came through the overlay): it never claims it, so h1's FDB never points it
at h2.  A real mosquitto and two host namespaces (``vnet.testing.cluster``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import needs_root
from vnet.testing import wait_until
from vnet.testing.cluster import BusCluster, bus_cluster

pytestmark = needs_root

ADDRESS = {"h1": "10.92.0.1", "h2": "10.92.0.2"}
AGING = 4.0        # s: red's mac_aging, short so that the withdrawal comes soon
DEADLINE = 60.0
NEW_MAC = "02:5e:00:00:12:34"

TOPOLOGY = f"""
name: {{lab}}
hosts:
  h1: {{address: {ADDRESS["h1"]}}}
  h2: {{address: {ADDRESS["h2"]}}}
bus: {{broker: "mqtt://10.254.1.1:1883"}}
networks:
  red: {{vlan: 10, mac_aging: {AGING}}}
nodes:
  n1: {{kind: netns, host: h1, nics: [{{name: eth0, network: red, ip: 10.12.0.1/24}}]}}
  n2: {{kind: netns, host: h2, nics: [{{name: eth0, network: red, ip: 10.12.0.2/24}}]}}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[BusCluster]:
    with bus_cluster(TOPOLOGY, ADDRESS, prefix="bl") as built:
        yield built


def set_mac(cluster: BusCluster, node: str, mac: str) -> None:
    run = cluster.node_lab(node).exec(node, ["ip", "link", "set", "eth0", "address", mac])
    assert run.returncode == 0, run.stderr


def send(cluster: BusCluster) -> None:
    """Frames from n1's current MAC: the ARP request floods, h1's switch learns the MAC."""
    cluster.node_lab("n1").exec("n1", ["ping", "-c", "1", "-W", "1", "10.12.0.2"])


def test_a_changed_mac_is_advertised_to_the_other_kernel_and_withdrawn_after_aging(
        cluster: BusCluster) -> None:
    h1 = ADDRESS["h1"]
    wait_until(lambda: cluster.fdb("h2").get(cluster.mac("n1")) == {h1}, DEADLINE,
               message=lambda: f"h2's FDB to send n1's own MAC to h1: {cluster.fdb('h2')}")
    assert NEW_MAC not in cluster.fdb("h2")

    set_mac(cluster, "n1", NEW_MAC)
    sent_at = time.monotonic()

    last_sent = 0.0

    def arrived() -> bool:
        nonlocal last_sent
        send(cluster)
        last_sent = time.monotonic()   # the last frame from NEW_MAC has been sent by now
        return cluster.fdb("h2").get(NEW_MAC) == {h1}
    wait_until(arrived, DEADLINE,
               message=lambda: f"h2's FDB to send {NEW_MAC} to h1: {cluster.fdb('h2')}")
    learned_in = time.monotonic() - sent_at
    assert NEW_MAC not in cluster.fdb("h1"), "h2 claimed a MAC it learned from the overlay"
    learned = cluster.bus("h1")["learned"][f"{cluster.lab}/red"]
    assert learned["advertised"] >= 1 and learned["left_out"] == 0

    set_mac(cluster, "n1", cluster.mac("n1"))    # back: the new MAC is no longer refreshed
    send(cluster)
    wait_until(lambda: NEW_MAC not in cluster.fdb("h2"), DEADLINE,
               message=lambda: f"{NEW_MAC} withdrawn from h2's FDB: {cluster.fdb('h2')}")
    # at least this long after NEW_MAC's last frame (measured from when it had been sent,
    # not from after the MAC change back, which a loaded machine can make take a second)
    withdrawn_in = time.monotonic() - last_sent
    assert NEW_MAC not in cluster.fdb("h1")
    assert cluster.fdb("h2").get(cluster.mac("n1")) == {h1}     # the topology's MAC stays
    print(f"\nlearned MAC in h2's kernel FDB {learned_in:.2f} s after the change; withdrawn "
          f"{withdrawn_in:.2f} s after its last frame (mac_aging {AGING:.0f} s)")
    assert withdrawn_in >= AGING - 1.0, "withdrawn before it aged out"
