"""Faults on a bus-driven lab with the real overlay: a real mosquitto, three host namespaces
on an underlay, each vnetd told its part by the bus, nodes pinging across the kernel vxlan
netdevs.  What the others' kernels hold is read back from ``bridge fdb show`` inside each
host namespace, never from vnet's own status.

* ``kill -9`` of one host's vnetd and its datapath: its connection to the broker closes, so
  its Will (``lost``) is immediate and the others withdraw its flood entry and its MACs from
  their vxlan netdevs (measured); when it comes back it is added again.
* The broker stopped for 30 s (the issue's outage, the fault's own duration) while pings
  run between hosts: none is lost, every kernel FDB entry stays through the outage, and after
  the broker returns every host is online again with a new epoch and its generation.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import needs_root
from vnet.daemon.naming import overlay_ifname
from vnet.testing import wait_until
from vnet.testing.cluster import BusCluster, bus_cluster
from vnet.testing.lab import popen_in_netns

pytestmark = needs_root

USERS = ("h1", "h2", "h3")
ADDRESS = {"h1": "10.91.0.1", "h2": "10.91.0.2", "h3": "10.91.0.3"}
NODE_IP = {"n1": "10.11.0.1", "n2": "10.11.0.2", "n3": "10.11.0.3"}
ALL_ZEROS = "00:00:00:00:00:00"
DEADLINE = 60.0
WITHDRAW_BOUND = 5.0   # s; the Will follows the TCP reset within milliseconds
OUTAGE = 30.0          # s the broker is down: the figure, the fault's duration
PING_INTERVAL = 0.05

TOPOLOGY = """
name: {lab}
hosts:
  h1: {{address: 10.91.0.1}}
  h2: {{address: 10.91.0.2}}
  h3: {{address: 10.91.0.3}}
bus: {{broker: "mqtt://10.254.1.1:1883"}}
networks:
  red: {{vlan: 10}}
nodes:
  n1: {{kind: netns, host: h1, nics: [{{name: eth0, network: red, ip: 10.11.0.1/24}}]}}
  n2: {{kind: netns, host: h2, nics: [{{name: eth0, network: red, ip: 10.11.0.2/24}}]}}
  n3: {{kind: netns, host: h3, nics: [{{name: eth0, network: red, ip: 10.11.0.3/24}}]}}
"""


class Cluster(BusCluster):
    def ping(self, node: str, target: str) -> bool:
        run = self.node_lab(node).exec(node, ["ping", "-c", "1", "-W", "1", NODE_IP[target]])
        return run.returncode == 0

    def neighbours(self, host: str) -> dict[str, str]:
        """The ARP proxy's entries on ``host``'s vxlan netdev of red: IP -> MAC."""
        ifname = overlay_ifname(self.lab, "red")
        run = self.hosts[host].exec(["ip", "-j", "-4", "neigh", "show", "dev", ifname])
        assert run.returncode == 0, f"{host}: ip neigh show failed: {run.stderr}"
        return {e["dst"]: e["lladdr"].lower() for e in json.loads(run.stdout or "[]")
                if "lladdr" in e}

    def expected_neighbours(self, peers: list[str]) -> dict[str, str]:
        return {NODE_IP[f"n{p[1]}"]: self.mac(f"n{p[1]}") for p in peers}

    def expected_fdb(self, host: str, peers: list[str]) -> dict[str, set[str]]:
        """What ``host``'s vxlan netdev should hold with ``peers`` alive: a flood entry per
        peer, and each peer's node MAC sent to that peer."""
        entries = {self.mac(f"n{p[1]}"): {ADDRESS[p]} for p in peers}
        if peers:
            entries[ALL_ZEROS] = {ADDRESS[p] for p in peers}
        return entries

    def cut_off(self, host: str) -> bool:
        return bool(self.bus(host)["connection"]["state"] != "connected")

    def wait_converged(self, host: str, epochs_above: dict[str, int] | None = None) -> None:
        wait_until(lambda: self.converged(host, epochs_above), DEADLINE,
                   message=lambda: f"{host} to see every host at generation 1 with a new "
                                   f"epoch: {self.bus(host)}")

    def converged(self, host: str, epochs_above: dict[str, int] | None = None) -> bool:
        """``host`` sees every host online at generation 1 (with an epoch above the given)."""
        peers = self.peers(host)
        return set(peers) == set(USERS) and all(
            p["state"] == "online" and (p["labs"].get(self.lab) or {}).get("generation") == 1
            and p["epoch"] > (epochs_above or {}).get(name, 0) for name, p in peers.items())


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with bus_cluster(TOPOLOGY.format(lab="{lab}"), ADDRESS, prefix="bf", persistence=True,
                     cluster_type=Cluster) as built:
        assert isinstance(built, Cluster)
        yield built


def wait_pings_across(cluster: Cluster) -> None:
    for source, target in (("n1", "n2"), ("n1", "n3"), ("n2", "n3")):
        wait_until(functools.partial(cluster.ping, source, target), DEADLINE,
                   message=f"{source} to ping {target} across hosts")


def wait_fdb(cluster: Cluster, host: str, peers: list[str]) -> None:
    wanted = cluster.expected_fdb(host, peers)
    wait_until(lambda: cluster.fdb(host) == wanted, DEADLINE,
               message=lambda: f"{host}'s vxlan FDB to be {wanted}: {cluster.fdb(host)}")


def wait_neighbours(cluster: Cluster, host: str, peers: list[str]) -> None:
    """(set_remote_macs converges the neighbour entries right after the FDB.)"""
    wanted = cluster.expected_neighbours(peers)
    wait_until(lambda: cluster.neighbours(host) == wanted, DEADLINE,
               message=lambda: f"{host}'s vxlan neighbours to be {wanted}: "
                               f"{cluster.neighbours(host)}")


def test_a_host_killed_is_withdrawn_from_the_others_kernels_and_comes_back(
        cluster: Cluster) -> None:
    wait_pings_across(cluster)
    for host in USERS:
        wait_fdb(cluster, host, [p for p in USERS if p != host])
        wait_neighbours(cluster, host, [p for p in USERS if p != host])   # ARP proxy: red's

    h3 = cluster.hosts["h3"]
    assert h3.process is not None
    datapath_pid = h3.call("ping")["datapath_pid"]
    killed_at = time.monotonic()
    h3.process.send_signal(signal.SIGKILL)      # vnetd first: nothing restarts the datapath
    with contextlib.suppress(ProcessLookupError):
        os.kill(datapath_pid, signal.SIGKILL)
    h3.process.wait()

    withdrawn: dict[str, float] = {}
    deadline = killed_at + DEADLINE
    while len(withdrawn) < 2 and time.monotonic() < deadline:
        for host in ("h1", "h2"):
            if host not in withdrawn and not any(
                    ADDRESS["h3"] in dsts for dsts in cluster.fdb(host).values()):
                withdrawn[host] = time.monotonic() - killed_at
    print("\nh3's flood entry and MAC gone from the kernel FDB after kill -9 of its vnetd "
          "and datapath: " + ", ".join(f"{h} {s * 1000:.0f} ms"
                                       for h, s in sorted(withdrawn.items())))
    assert set(withdrawn) == {"h1", "h2"}, (cluster.fdb("h1"), cluster.fdb("h2"))
    assert all(s < WITHDRAW_BOUND for s in withdrawn.values()), withdrawn
    for host in ("h1", "h2"):       # exactly h3's entries went; the rest stayed
        assert cluster.fdb(host) == cluster.expected_fdb(
            host, [p for p in ("h1", "h2") if p != host])
        wait_neighbours(cluster, host, [p for p in ("h1", "h2") if p != host])
        assert cluster.peers(host)["h3"]["state"] == "lost"
    assert cluster.ping("n1", "n2")

    old_epoch = cluster.peers("h1")["h3"]["epoch"]
    h3._start_daemon()
    for host in USERS:
        cluster.wait_converged(host, {"h3": old_epoch})
        wait_fdb(cluster, host, [p for p in USERS if p != host])
        wait_neighbours(cluster, host, [p for p in USERS if p != host])
    wait_pings_across(cluster)


def test_a_broker_outage_loses_no_frame_and_withdraws_nothing(cluster: Cluster) -> None:
    for host in USERS:
        cluster.wait_converged(host)
        wait_fdb(cluster, host, [p for p in USERS if p != host])
    wait_pings_across(cluster)
    before = {host: cluster.fdb(host) for host in USERS}
    neighbours = {host: cluster.neighbours(host) for host in USERS}
    epochs = {host: cluster.peers("h1")[host]["epoch"] for host in USERS}

    # the established flows: as many pings as cover the outage and the broker's return
    count = int((OUTAGE + 20) / PING_INTERVAL)
    flows = {(s, t): popen_in_netns(
        cluster.node_lab(s).netns(s),
        ["ping", "-q", "-n", "-i", str(PING_INTERVAL), "-c", str(count), "-W", "2",
         NODE_IP[t]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for s, t in (("n1", "n2"), ("n3", "n1"))}
    try:
        cluster.broker.stop()
        stopped_at = time.monotonic()
        for host in USERS:
            wait_until(functools.partial(cluster.cut_off, host), DEADLINE,
                       message=f"{host} to notice the broker is gone")
        # the fault lasts OUTAGE seconds; all through it every kernel FDB holds every entry
        # and every host still counts the others alive
        checks = 0

        def entries_held_through_the_outage() -> bool:
            nonlocal checks
            for host in USERS:
                assert cluster.fdb(host) == before[host], \
                    f"{time.monotonic() - stopped_at:.1f} s into the outage, {host}'s FDB " \
                    f"changed: {cluster.fdb(host)} (was {before[host]})"
                assert cluster.neighbours(host) == neighbours[host]
                states = {n: p["state"] for n, p in cluster.peers(host).items()
                          if not p["local"]}
                assert set(states.values()) == {"online"}, \
                    f"{time.monotonic() - stopped_at:.1f} s into the outage: {host} sees {states}"
            checks += 1
            return time.monotonic() - stopped_at >= OUTAGE

        wait_until(entries_held_through_the_outage, OUTAGE + DEADLINE,
                   message="the outage to last its OUTAGE seconds", interval=0.5)
        cluster.broker.start()
        returned_at = time.monotonic()
        for host in USERS:
            cluster.wait_converged(host, epochs)
        reconverged = time.monotonic() - returned_at
        for host in USERS:
            assert cluster.fdb(host) == before[host]
            assert cluster.neighbours(host) == neighbours[host]
        results = {}
        for (s, t), flow in flows.items():
            out, _ = flow.communicate(timeout=count * PING_INTERVAL + DEADLINE)
            results[(s, t)] = ping_counts(out)
    finally:
        for flow in flows.values():
            if flow.poll() is None:
                flow.kill()
                flow.wait()
        if cluster.broker.process is None or cluster.broker.process.poll() is not None:
            cluster.broker.start()          # a failed check must not leave it stopped
    print(f"\nbroker down {OUTAGE:.0f} s ({checks} checks of every FDB during it); bus "
          f"reconverged {reconverged:.1f} s after it returned; flows (sent, received): "
          + ", ".join(f"{s}->{t} {r}" for (s, t), r in results.items()))
    for (s, t), (sent, received) in results.items():
        assert sent == count and received == sent, f"{s}->{t}: {sent} sent, {received} received"


def ping_counts(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary line."""
    for line in output.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(f"no summary in ping's output:\n{output}")
