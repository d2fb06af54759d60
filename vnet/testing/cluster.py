"""A multi-host lab for tests: a real mosquitto, host namespaces each with a vnetd told its
part by the bus, and an underlay bridge between the hosts (``ul0`` in each, its address).

    with bus_cluster(TOPOLOGY_TEXT, {"h1": "10.91.0.1", "h2": "10.91.0.2"}) as cluster:
        cluster.fdb("h2", "red")       # h2's kernel vxlan FDB of red: MAC -> destinations

The topology text's ``hosts`` must use the same addresses and its ``bus`` the broker's
``mqtt://10.254.1.1:1883`` (host INDEX reaches the broker at 10.254.INDEX.1).  The lab is
brought up from the first host, and taken down and everything removed at the end.  What the
kernels hold is read back with ``bridge -j fdb show`` inside each host namespace, never from
vnet's own status.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnet.daemon.naming import overlay_ifname
from vnet.host import netns
from vnet.testing.broker import Broker
from vnet.testing.lab import Lab, TestHost
from vnet.testing.underlay import attach, daemon_config, make_underlay
from vnet.testing.wait import wait_until
from vnet.topology import Topology, parse_topology

DEADLINE = 60.0


@dataclass
class BusCluster:
    broker: Broker
    hosts: dict[str, TestHost]
    topology: Topology
    path: Path

    @property
    def lab(self) -> str:
        return self.topology.name

    def node_lab(self, node: str) -> Lab:
        host = self.topology.node(node).host
        assert host is not None
        return Lab(self.hosts[host], self.lab)

    def mac(self, node: str) -> str:
        return self.topology.node(node).nics[0].mac.lower()

    def fdb(self, host: str, network: str | None = None) -> dict[str, set[str]]:
        """The kernel FDB of ``host``'s vxlan netdev of ``network`` (default: the lab's first
        network): MAC -> underlay destinations."""
        ifname = overlay_ifname(self.lab, network or self.topology.networks[0].name)
        run = self.hosts[host].exec(["bridge", "-j", "fdb", "show", "dev", ifname])
        assert run.returncode == 0, f"{host}: bridge fdb show failed: {run.stderr}\n" \
            f"{self.hosts[host].log()}"
        entries: dict[str, set[str]] = {}
        for entry in json.loads(run.stdout or "[]"):
            if "dst" in entry:
                entries.setdefault(entry["mac"].lower(), set()).add(entry["dst"])
        return entries

    def bus(self, host: str) -> dict[str, Any]:
        status: dict[str, Any] = self.hosts[host].call("status")["bus"]
        return status

    def peers(self, host: str) -> dict[str, dict[str, Any]]:
        return {h["host"]: h for h in self.bus(host)["hosts"]}

    def wait_online(self, host: str) -> None:
        def online() -> bool:
            peers = self.peers(host)
            return len(peers) == len(self.hosts) and all(p["state"] == "online"
                                                         for p in peers.values())
        wait_until(online, DEADLINE, message=f"{host} to see every host online")


def bus_host(broker: Broker, workdir: Path, name: str, password: str, index: int) -> TestHost:
    """Host ``name``'s vnetd with a config file naming it and the broker (on link ``index``,
    address 10.254.INDEX.1), its password in a 0600 file; linked to the broker, so it
    connects.  The caller enters it (``with``) and so stops it."""
    password_file = workdir / f"{name}.pw"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    host = TestHost(config=daemon_config(name, f"mqtt://10.254.{index}.1:1883", password_file))
    try:
        broker.link(host.name, index)    # vnetd connects once the link is there
    except BaseException:
        host.close()
        raise
    return host


def build_underlay(underlay: str, hosts: Mapping[str, TestHost],
                   addresses: Mapping[str, str]) -> None:
    """The underlay's bridge and each host's ``ul0`` on it (its address/24)."""
    make_underlay(underlay)
    for name, host in hosts.items():
        attach(underlay, host.name, name, f"{addresses[name]}/24")


@contextlib.contextmanager
def bus_cluster(topology_text: str, addresses: Mapping[str, str], *, prefix: str = "bc",
                persistence: bool = False, cluster_type: type[BusCluster] = BusCluster
                ) -> Iterator[BusCluster]:
    """The cluster of ``addresses``' hosts with ``topology_text`` up (see module docstring);
    ``{lab}`` in the text is replaced by a fresh lab name."""
    users = {name: f"pw-{secrets.token_hex(4)}" for name in addresses}
    workdir = Path(tempfile.mkdtemp(prefix=f"vnet-{prefix}-"))
    path = workdir / "lab.yaml"
    path.write_text(topology_text.replace("{lab}", f"{prefix}{secrets.token_hex(2)}"))
    topology = parse_topology(path.read_text(), source=str(path))
    underlay = f"vnt-{prefix}-{secrets.token_hex(2)}"
    first = next(iter(addresses))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack.callback(netns.remove, underlay)
        broker = stack.enter_context(Broker(users, operators=[first], listen=None,
                                            persistence=persistence))
        hosts: dict[str, TestHost] = {}
        for index, name in enumerate(users, start=1):
            hosts[name] = stack.enter_context(
                bus_host(broker, workdir, name, users[name], index))
        build_underlay(underlay, hosts, addresses)
        cluster = cluster_type(broker, hosts, topology, path)
        for name in users:
            cluster.wait_online(name)
        hosts[first].cli("up", str(path))
        stack.callback(lambda: hosts[first].cli("down", "--lab", cluster.lab, check=False))
        yield cluster
