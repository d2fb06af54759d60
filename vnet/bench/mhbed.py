"""The multi-host benchmark's bed: its settings, and the cluster with the lab on it.

``Bench`` owns a ``vnet.bench.cluster.Cluster`` and lab ``mbPID`` (network ``red``, node
``nI`` on host ``hI``; n1 and n2 with the single-host bench's MACs, so that its traffic
measurements apply); ``up`` publishes the next generation through h1's vnetd.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vnet import jsonlines
from vnet.bench import tally
from vnet.bench.cluster import Cluster
from vnet.bench.testbed import MAC_A, MAC_B, BenchError

SOURCE = "src"                  # the MAC source: a host of the lab without a vnetd
SOURCE_PASSWORD = "pw-src"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    hosts: int = 16
    reach_trials: int = 4
    macs: int = 10_000
    steady_seconds: float = 30.0
    tcp_seconds: float = 5.0
    frame_seconds: float = 3.0
    overlay_repeat: int = 2

    @classmethod
    def quick(cls, hosts: int = 3) -> Settings:
        return cls(hosts=hosts, reach_trials=2, macs=2_000, steady_seconds=10.0,
                   tcp_seconds=2.0, frame_seconds=1.0, overlay_repeat=1)


@dataclass
class Bench:
    """The cluster and the lab on it."""

    settings: Settings
    log: Log
    tag: int = field(default_factory=lambda: os.getpid() % 10000)
    generation: int = 0

    def __post_init__(self) -> None:
        self.lab = f"mb{self.tag}"
        self.cluster = Cluster(self.settings.hosts, f"vmh{self.tag}",
                               extra_users={SOURCE: SOURCE_PASSWORD}, log=self.log)
        self.nodes = tally.base_nodes(self.settings.hosts, {1: MAC_A, 2: MAC_B})

    def node_netns(self, node: tally.Node) -> str:
        """Where ``node`` lives: its host's vnetd names it with that host's prefix."""
        return self.cluster.host(node.host).daemon.netns_name(self.lab, node.name)

    def up(self, nodes: Sequence[tally.Node], extra_hosts: Mapping[str, str] | None = None
           ) -> float:
        """``vnet up`` of the next generation from h1; seconds until it returned."""
        text = tally.topology_text(self.lab, self.settings.hosts, nodes, extra_hosts)
        path = self.cluster.workdir / f"{self.lab}.yaml"
        path.write_text(text)
        h1 = self.cluster.hosts[0].daemon
        started = time.monotonic()
        reply = jsonlines.call(h1.socket, {"op": "up", "text": text, "source": str(path)},
                               timeout=600)
        if not reply.get("ok"):
            raise BenchError(f"vnet up of generation {self.generation + 1}: "
                             f"{reply.get('error')}")
        self.generation = int(reply["result"]["generation"])
        return time.monotonic() - started

    def remote_macs(self, index: int) -> int:
        host = self.cluster.hosts[index]
        overlay = self.cluster.bus_status(host)["overlay"].get(f"{self.lab}/{tally.NETWORK}")
        return int(overlay["remote_macs"]) if overlay else -1
