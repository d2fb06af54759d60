"""Three vnetds on one bus: a real mosquitto and three host namespaces, each vnetd with a
config file naming its host and the broker.  A lab whose nodes live on all three hosts is
brought up from one host and taken down from another; a vnetd killed with -9 is seen lost
through its Will; a restarted one catches up from the retained desired state; a rogue
(authorised) client's bad messages are dropped, counted, and change nothing; a host the
broker does not let publish desired state is told why.

No overlay is involved (frames across hosts are the overlay's tests): the bus service's
overlay calls go to the no-op, and what it would set is read back from vnet status."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from vnet.errors import DaemonError
from vnet.host import netns
from vnet.testing import TestHost
from vnet.testing.broker import Broker
from vnet.testing.cluster import bus_host
from vnet.testing.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")

USERS = {"h1": "pw-one", "h2": "pw-two", "h3": "pw-three"}
LAB = "busw"
TOPOLOGY = dedent(f"""
    name: {LAB}
    hosts:              # each host's address on its link to the broker: its underlay
      h1: {{address: 10.254.1.2}}
      h2: {{address: 10.254.2.2}}
      h3: {{address: 10.254.3.2}}
    bus: {{broker: "mqtt://10.254.1.1:1883"}}
    networks:
      office: {{vlan: 10}}
    nodes:
      c1: {{kind: netns, host: h1, nics: [{{name: eth0, network: office, ip: 10.9.0.1/24}}]}}
      c2: {{kind: netns, host: h2, nics: [{{name: eth0, network: office, ip: 10.9.0.2/24}}]}}
      c3: {{kind: netns, host: h3, nics: [{{name: eth0, network: office, ip: 10.9.0.3/24}}]}}
""")
OPERATORS = ["h1", "h2"]   # the broker's ACL lets these publish desired state; not h3
DEADLINE = 60.0
LOST_BOUND = 3.0   # s from kill -9 to "lost": the Will takes ms, then its 1 s grace


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Broker, dict[str, TestHost]]]:
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Broker(USERS, operators=OPERATORS, listen=None))
        hosts: dict[str, TestHost] = {}
        for index, name in enumerate(USERS, start=1):
            hosts[name] = stack.enter_context(
                bus_host(broker, tmp_path, name, USERS[name], index))
        yield broker, hosts


def bus_of(host: TestHost) -> dict[str, Any]:
    status: dict[str, Any] = host.call("status")["bus"]
    return status


def peer(host: TestHost, name: str) -> dict[str, Any]:
    return next(h for h in bus_of(host)["hosts"] if h["host"] == name)


def sees(host: TestHost, name: str, state: str) -> bool:
    return bool(peer(host, name)["state"] == state)


def dropped(host: TestHost, *kinds: str) -> bool:
    return set(kinds) <= set(bus_of(host)["connection"]["dropped"])


def all_online(host: TestHost) -> bool:
    return all(h["state"] == "online" for h in bus_of(host)["hosts"]) and \
        len(bus_of(host)["hosts"]) == len(USERS)


def generations(host: TestHost) -> dict[str, int | None]:
    return {h["host"]: (h["labs"].get(LAB) or {}).get("generation")
            for h in bus_of(host)["hosts"]}


def node_netns(hosts: dict[str, TestHost], node: str) -> str:
    """Where node cI lives: on host hI, named with that host's prefix."""
    return hosts[f"h{node[1:]}"].netns_name(LAB, node)


def test_a_lab_across_three_vnetds_on_one_bus(cluster, tmp_path: Path) -> None:
    broker, hosts = cluster
    h1, h2, h3 = hosts["h1"], hosts["h2"], hosts["h3"]
    for host in hosts.values():
        wait_until(functools.partial(all_online, host), DEADLINE,
                   message=f"{host.name} to see every host online")
    lab_file = tmp_path / "busw.yaml"
    lab_file.write_text(TOPOLOGY)

    # vnet up on h1 returns once every host has realised generation 1
    started = time.monotonic()
    up = h1.cli("up", str(lab_file))
    up_seconds = time.monotonic() - started
    assert up.stdout.strip() == f"lab {LAB}: generation 1 up on h1, h2, h3", up.stdout
    for name, host in hosts.items():
        node = f"c{name[1]}"
        assert netns.exists(node_netns(hosts, node))
        assert host.call("node", node=node, lab=LAB)["netns"] == node_netns(hosts, node)
    with pytest.raises(DaemonError, match="no node 'c2' is up"):
        h1.call("node", node="c2", lab=LAB)            # h1 realised only its own part

    # vnet status on h2: every host online, each at generation 1
    assert all_online(h2)
    assert generations(h2) == {"h1": 1, "h2": 1, "h3": 1}
    text = h2.cli("status").stdout
    assert "h2 (this host)" in text and f"{LAB}@1" in text
    assert bus_of(h1)["overlay"][f"{LAB}/office"]["flood_peers"] == ["10.254.2.2",
                                                                     "10.254.3.2"]

    # kill -9: the Will says lost, within milliseconds
    assert h3.process is not None
    killed_at = time.time()
    h3.process.kill()
    h3.process.wait()
    for host in (h1, h2):
        wait_until(functools.partial(sees, host, "h3", "lost"), DEADLINE, message="h3 lost")
    lost_after = {name: peer(hosts[name], "h3")["since"] - killed_at for name in ("h1", "h2")}
    print(f"\nvnet up of 3 hosts took {up_seconds * 1000:.0f} ms (CLI included); h3 seen "
          f"lost after kill -9: " + ", ".join(f"{n} {s * 1000:.1f} ms"
                                              for n, s in lost_after.items()))
    assert all(0 <= s < LOST_BOUND for s in lost_after.values()), lost_after
    assert bus_of(h1)["overlay"][f"{LAB}/office"]["flood_peers"] == ["10.254.2.2"]

    # h3 comes back: a new epoch, and it catches up from the retained desired state
    old_epoch = peer(h1, "h3")["epoch"]
    h3._start_daemon()
    wait_until(lambda: peer(h1, "h3")["state"] == "online" and generations(h1)["h3"] == 1,
               DEADLINE, message=lambda: f"h3 back at generation 1: {bus_of(h1)}")
    assert peer(h1, "h3")["epoch"] > old_epoch
    assert [lab["name"] for lab in h3.call("status")["labs"]] == [LAB]
    wait_until(lambda: bus_of(h1)["overlay"][f"{LAB}/office"]["flood_peers"] == [
        "10.254.2.2", "10.254.3.2"], DEADLINE, message="h3 back among the flood peers")

    # a rogue client with h2's credentials: a garbled status on h2's own subtree and a
    # desired state the topology loader refuses; both are dropped and counted everywhere
    h2_epoch = peer(h1, "h2")["epoch"]
    rogue = ["mosquitto_pub", "-h", "127.0.0.1", "-u", "h2", "-P", USERS["h2"], "-i", "rogue",
             "-q", "1"]
    broker.exec([*rogue, "-t", "vnet/v1/hosts/h2/status", "-m",
                 json.dumps({"v": 1, "host": "h2", "state": "lost"})], check=True)
    bad = {"v": 1, "lab": LAB, "generation": 99,
           "topology": {"version": 1, "name": LAB, "networks": {"office": {"vlan": 5000}},
                        "nodes": {}}}
    broker.exec([*rogue, "-t", f"vnet/v1/labs/{LAB}/desired", "-m", json.dumps(bad)],
                check=True)
    for host in (h1, h3):
        wait_until(functools.partial(dropped, host, "malformed", "invalid-topology"),
                   DEADLINE, message="the drops counted")
        assert peer(host, "h2")["state"] == "online" and peer(host, "h2")["epoch"] == h2_epoch
        assert bus_of(host)["desired"][LAB]["generation"] == 1
        assert generations(host) == {"h1": 1, "h2": 1, "h3": 1}
    assert all(netns.exists(node_netns(hosts, f"c{i}")) for i in (1, 2, 3))

    # vnet down on h2 takes every host's part down
    down = h2.cli("down", "--lab", LAB)
    assert down.stdout.strip() == f"lab {LAB}: down on h1, h2, h3", down.stdout
    for host in hosts.values():
        assert host.call("status")["labs"] == []
    assert not any(netns.exists(node_netns(hosts, f"c{i}")) for i in (1, 2, 3))
    assert bus_of(h1)["desired"][LAB] == {"generation": 2, "deleted": True, "hosts": []}

    # h3 is no operator in the broker's ACL: mosquitto refuses its desired state with PUBACK
    # reason 135, and vnet up says so at once (not after waiting for an echo)
    started = time.monotonic()
    refused = h3.cli("up", str(lab_file), check=False)
    refused_after = time.monotonic() - started
    print(f"refused vnet up answered after {refused_after * 1000:.0f} ms (CLI included)")
    assert refused.returncode == 1
    assert "the broker refused generation 3 (Not authorized, MQTT reason 135)" in \
        refused.stderr and "ACL" in refused.stderr, refused.stderr
    assert refused_after < 8.0, refused_after     # the echo fallback would take 10 s
    assert all(host.call("status")["labs"] == [] for host in hosts.values())
    assert bus_of(h1)["desired"][LAB]["generation"] == 2
