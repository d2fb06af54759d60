"""Overlay throughput between two hosts of the cluster: vnetd's vxlan ports against a Linux
bridge + kernel vxlan netdev in the same host namespaces (see ``vnet.bench.multihost``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vnet.bench import measure
from vnet.bench.mhbed import Bench, Log
from vnet.bench.testbed import ADDR_A, ADDR_B, MAC_A, MAC_B, Testbed, run

REF_VNI = 99
NODE_MTU = 1450


class NodePair(Testbed):
    """Two nodes vnetd made (nothing to build; ``close`` removes only processes)."""

    def __init__(self, node_a: str, node_b: str, tag: str) -> None:
        super().__init__(tag)
        self.node_a, self.node_b = node_a, node_b


class ReferencePair(Testbed):
    """The kernel's reference in the same host namespaces: node ``ra`` behind h1 and ``rb``
    behind h2, each on a Linux bridge with a kernel vxlan netdev (VNI 99) over the same
    underlay, with n1's and n2's addresses and MACs (their own namespaces)."""

    def __init__(self, tag: str, hosts: Sequence[tuple[str, str, str]]) -> None:
        super().__init__(tag)
        self.hosts = hosts      # (host namespace, local address, peer address) of h1, h2

    def build(self) -> None:
        self.add_namespaces(self.node_a, self.node_b)
        for (host, local, peer), node, addr, mac in zip(
                self.hosts, (self.node_a, self.node_b), (ADDR_A, ADDR_B), (MAC_A, MAC_B),
                strict=True):
            run(["ip", "-n", host, "link", "add", "rp", "mtu", str(NODE_MTU), "type", "veth",
                 "peer", "name", "eth0", "mtu", str(NODE_MTU), "netns", node])
            run(["ip", "-n", node, "link", "set", "eth0", "address", mac])
            run(["ip", "-n", node, "addr", "add", f"{addr}/16", "dev", "eth0"])
            run(["ip", "-n", node, "link", "set", "eth0", "up"])
            run(["ip", "-n", host, "link", "add", "rvx", "mtu", str(NODE_MTU), "type", "vxlan",
                 "id", str(REF_VNI), "local", local, "dstport", "4789", "nolearning"])
            run(["bridge", "-n", host, "fdb", "append", "00:00:00:00:00:00", "dev", "rvx",
                 "dst", peer])
            run(["ip", "-n", host, "link", "add", "rbr", "type", "bridge"])
            for ifname in ("rp", "rvx"):
                run(["ip", "-n", host, "link", "set", ifname, "master", "rbr", "up"])
            run(["ip", "-n", host, "link", "set", "rbr", "up"])

    def close(self) -> None:
        for host, _, _ in self.hosts:
            for ifname in ("rbr", "rvx", "rp"):
                run(["ip", "-n", host, "link", "del", ifname], check=False)
        super().close()


def measure_overlay(bench: Bench, log: Log) -> dict[str, Any]:
    s = bench.settings
    h1, h2 = bench.cluster.hosts[0], bench.cluster.hosts[1]
    n1, n2 = bench.nodes[:2]
    vnet = NodePair(bench.node_netns(n1), bench.node_netns(n2), f"vmo{bench.tag}")
    ref = ReferencePair(f"vmr{bench.tag}", ((h1.daemon.name, h1.address, h2.address),
                                            (h2.daemon.name, h2.address, h1.address)))
    settings = replace(measure.Settings(), frame_seconds=s.frame_seconds)
    runs: dict[str, dict[str, list[float]]] = {"vnet": {}, "bridge": {}}
    try:
        ref.build()
        for _ in range(s.overlay_repeat):
            for name, bed in (("vnet", vnet), ("bridge", ref)):
                measure.warm_up(bed)
                figures = {"tcp_1_gbps": measure.tcp(bed, s.tcp_seconds, 1),
                           "tcp_4_gbps": measure.tcp(bed, s.tcp_seconds, 4)}
                if measure.have_trafgen():
                    full = measure.full_rate(bed, settings)
                    figures["frames_delivered_fps"] = full["delivered_fps"]
                    figures["frames_offered_fps"] = full["offered_fps"]
                for key, value in figures.items():
                    runs[name].setdefault(key, []).append(value)
                log(f"  overlay {name}: TCP 1 stream {figures['tcp_1_gbps']:.2f}, 4 streams "
                    f"{figures['tcp_4_gbps']:.2f} Gbit/s; 64 B delivered "
                    f"{figures.get('frames_delivered_fps', float('nan')) / 1e3:.0f} k/s")
    finally:
        vnet.close()
        ref.close()
    return {name: {key: measure.median_spread(values) for key, values in figures.items()}
            for name, figures in runs.items()}
