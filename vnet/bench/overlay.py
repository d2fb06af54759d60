"""``python -m vnet.bench.overlay``: what carrying a network between two hosts in VXLAN costs.

The measurement behind the overlay's design (docs/benchmarks.md): node A behind host H1, node
B behind host H2, the hosts joined by an underlay veth, and the network crossing it in VXLAN::

    [A eth0] --veth-- pa [H1] ul0 10.253.0.1 ==== 10.253.0.2 ul0 [H2] pb --veth-- [B eth0]

The switch and the encapsulation in each host are one of:

* ``vnet``: vnet's datapath with a kernel vxlan netdev as an ordinary access port (what
  vnetd builds, kernel flows on; ``vnet-python``: kernel flows off, every frame through the
  Python switch; ``vnet-pypy``: the datapath under PyPy);
* ``bridge``: a Linux bridge with the same vxlan netdev (the kernel's reference);
* ``pyencap``: a minimal Python loop per host, no switch at all: AF_PACKET receive on ``pa``,
  an 8-byte VXLAN header, one UDP ``sendto`` per frame, and the reverse.  Without
  virtio-net headers such a loop cannot pass the veths' TSO super-frames or partial
  checksums, so the nodes' offloads are off for it (as for any raw AF_PACKET forwarder).

Each figure is measured on a fresh testbed: TCP from A to B (iperf3, one stream, ``--runs``
runs) and 64-byte frames offered by trafgen at full rate, counted at B's NIC.  Node MTUs are
1450 everywhere (the underlay's 1500 minus VXLAN's 50).  Everything lives in namespaces the
benchmark creates and removes.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.bench import measure
from vnet.bench.testbed import (
    ADDR_A,
    ADDR_B,
    MAC_A,
    MAC_B,
    BenchError,
    Testbed,
    run,
)
from vnet.datapath import protocol
from vnet.errors import DatapathError
from vnet.host import afpacket, netns, nft
from vnet.packet import vxlan
from vnet.switch import VlanOptions

UNDERLAY = ("10.253.0.1", "10.253.0.2")
VNI, VLAN, PORT = 100, 10, vxlan.VXLAN_PORT
NODE_MTU = 1450
VARIANTS = ("vnet", "vnet-python", "vnet-pypy", "bridge", "pyencap")
LABELS = {"vnet": "vnet datapath + kernel vxlan port",
          "vnet-python": "the same, every frame in Python (kernel flows off)",
          "vnet-pypy": "the same, datapath on PyPy",
          "bridge": "Linux bridge + kernel vxlan", "pyencap": "Python encap loop (no switch)"}


class OverlayBed(Testbed):
    """Two hosts and two nodes; ``host`` is H1 (A's), ``host2`` H2 (B's)."""

    def __init__(self) -> None:
        super().__init__(f"vo{os.getpid() % 100000}")
        self.host2 = self.host[:-1] + "g"

    def build(self) -> None:
        self.add_namespaces(self.host, self.host2, self.node_a, self.node_b)
        run(["ip", "-n", self.host, "link", "add", "ul0", "type", "veth", "peer", "name",
             "ul0", "netns", self.host2])
        for host, address in zip((self.host, self.host2), UNDERLAY, strict=True):
            run(["ip", "-n", host, "addr", "add", f"{address}/24", "dev", "ul0"])
            run(["ip", "-n", host, "link", "set", "ul0", "up"])
        for host, port, node, addr, mac in ((self.host, "pa", self.node_a, ADDR_A, MAC_A),
                                            (self.host2, "pb", self.node_b, ADDR_B, MAC_B)):
            run(["ip", "-n", host, "link", "add", port, "mtu", str(NODE_MTU), "type", "veth",
                 "peer", "name", "eth0", "mtu", str(NODE_MTU), "netns", node])
            run(["ip", "-n", node, "link", "set", "eth0", "address", mac])
            run(["ip", "-n", node, "addr", "add", f"{addr}/24", "dev", "eth0"])
            run(["ip", "-n", node, "link", "set", "eth0", "up"])
            run(["ip", "-n", host, "link", "set", port, "up"])
        run(["ip", "-n", self.node_a, "neigh", "replace", ADDR_B, "lladdr", MAC_B, "dev",
             "eth0", "nud", "permanent"])
        run(["ip", "-n", self.node_b, "neigh", "replace", ADDR_A, "lladdr", MAC_A, "dev",
             "eth0", "nud", "permanent"])

    def hosts(self) -> tuple[tuple[str, str, str, str], ...]:
        """(host namespace, node port, local address, peer address) of H1 and H2."""
        return ((self.host, "pa", UNDERLAY[0], UNDERLAY[1]),
                (self.host2, "pb", UNDERLAY[1], UNDERLAY[0]))


def add_vxlan(host: str, local: str, peer: str) -> None:
    """The vxlan netdev as vnetd makes it (no learning, head-end entry to the peer)."""
    run(["ip", "-n", host, "link", "add", "vx0", "mtu", str(NODE_MTU), "type", "vxlan", "id",
         str(VNI), "local", local, "dstport", str(PORT), "nolearning", "udpcsum"])
    run(["bridge", "-n", host, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", peer])
    run(["ip", "-n", host, "link", "set", "vx0", "up"])


def close_to_host_stack(host: str, ifname: str) -> None:
    """The port ends' nft ingress drop table, as vnetd puts on every port."""
    with netns.entered(host):
        nft.keep_host_stack_off(ifname)


def start_variant(bed: OverlayBed, variant: str) -> None:
    for host, port, local, peer in bed.hosts():
        if variant == "pyencap":
            for node in (bed.node_a, bed.node_b):
                run(["ip", "netns", "exec", node, "ethtool", "-K", "eth0", "tso", "off", "gso",
                     "off", "tx", "off"], check=False)
            bed.spawn([sys.executable, "-m", "vnet.bench.overlay", "--encap-loop", host, port,
                       local, peer])
            continue
        add_vxlan(host, local, peer)
        if variant == "bridge":
            run(["ip", "-n", host, "link", "add", "br0", "type", "bridge"])
            for ifname in (port, "vx0"):
                run(["ip", "-n", host, "link", "set", ifname, "master", "br0"])
            run(["ip", "-n", host, "link", "set", "br0", "up"])
            continue
        for ifname in (port, "vx0"):
            close_to_host_stack(host, ifname)
        python = "pypy3" if variant == "vnet-pypy" else sys.executable
        kernel_flows = "off" if variant == "vnet-python" else "on"
        control = str(bed.tmp / f"{host}.sock")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = bed.spawn([python, "-m", "vnet.datapath.main", "--control", control,
                          "--netns", host, "--kernel-flows", kernel_flows,
                          "--log-level", "WARNING"], env=env)
        deadline = time.monotonic() + 15
        while not Path(control).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the datapath in {host} did not start")
            time.sleep(0.05)
        datapath(control, protocol.AddBridge("bench", (VlanOptions(VLAN),)))
        for name in (port, "vx0"):
            datapath(control, protocol.AddPort("bench", name, name, "access", vlan=VLAN,
                                               kernel_flows=True))


def datapath(control: str, request: protocol.Request) -> Any:
    reply = jsonlines.call(control, protocol.to_wire(request), timeout=60)
    try:
        return protocol.result(reply, request.op)
    except DatapathError as err:
        raise BenchError(f"datapath {request.op}: {err}") from None


def encap_loop(host: str, port: str, local: str, peer: str) -> None:
    """The minimal Python VXLAN tunnel end: frames from ``port`` go to ``peer`` in VXLAN,
    VXLAN from anyone goes out of ``port``.  One recv and one send per frame."""
    netns.enter_for_good(host)
    packets = afpacket.open_packet_socket(port, afpacket.PacketOptions(
        vnet_hdr=False, promiscuous=True, rcvbuf=4 << 20))
    tunnel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tunnel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tunnel.bind((local, PORT))
    tunnel.setblocking(False)
    packets.setblocking(False)
    header, destination = vxlan.pack_header(VNI), (peer, PORT)
    selector = selectors.DefaultSelector()
    selector.register(packets, selectors.EVENT_READ, "out")
    selector.register(tunnel, selectors.EVENT_READ, "in")
    while True:
        for key, _ in selector.select():
            try:
                if key.data == "out":
                    while True:
                        tunnel.sendto(header + packets.recv(65536), destination)
                else:
                    while True:
                        packets.send(tunnel.recv(65536)[vxlan.HEADER_LEN:])
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:   # a full queue: the frame is lost, as a NIC would lose it
                pass


def measure_variant(variant: str, settings: measure.Settings, runs: int,
                    log: Any) -> dict[str, Any]:
    bed = OverlayBed()
    try:
        bed.build()
        start_variant(bed, variant)
        measure.warm_up(bed)
        tcp = [measure.tcp(bed, settings.tcp_seconds, 1) for _ in range(runs)]
        frames = measure.full_rate(bed, settings)
        log(f"{variant}: TCP {', '.join(f'{g:.2f}' for g in tcp)} Gbit/s; 64 B: offered "
            f"{frames['offered_fps'] / 1e3:.0f} k/s, delivered {frames['delivered_fps'] / 1e3:.0f}"
            " k/s")
        return {"tcp_gbps": tcp, **frames}
    finally:
        bed.close()


def table(results: dict[str, dict[str, Any]]) -> str:
    bridge = results.get("bridge")
    lines = ["| overlay between two hosts | TCP, 1 stream (Gbit/s, each run) | 64 B frames/s "
             "delivered | vs bridge |", "|---|---|---|---|"]
    for variant, r in results.items():
        ratio = (f"x{r['delivered_fps'] / bridge['delivered_fps']:.2f}"
                 if bridge and bridge["delivered_fps"] else "")
        lines.append(f"| {LABELS[variant]} | {' / '.join(f'{g:.2f}' for g in r['tcp_gbps'])} "
                     f"| {r['delivered_fps'] / 1e3:.0f} k (offered {r['offered_fps'] / 1e3:.0f} "
                     f"k) | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.bench.overlay",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--runs", type=int, default=2, help="TCP runs per variant")
    parser.add_argument("--seconds", type=float, default=2.0, help="each TCP run and frame trial")
    parser.add_argument("--out", type=Path, help="also write the results there as JSON")
    parser.add_argument("--encap-loop", nargs=4, metavar=("NETNS", "PORT", "LOCAL", "PEER"),
                        help=argparse.SUPPRESS)   # the pyencap variant's process
    args = parser.parse_args(argv)
    if args.encap_loop:
        encap_loop(*args.encap_loop)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if "vnet-pypy" in variants and shutil.which("pypy3") is None:
        print("vnet-pypy: skipped, PyPy is not installed (apt-get install pypy3)",
              file=sys.stderr)
        variants.remove("vnet-pypy")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        print(f"unknown variant(s) {', '.join(sorted(unknown))}; choose among "
              f"{', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    settings = measure.Settings(frame_seconds=args.seconds, tcp_seconds=args.seconds)
    machine = measure.machine()
    print(f"{machine['cpu']}, {machine['cores']} cores, kernel {machine['kernel']}",
          file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    try:
        for variant in variants:
            results[variant] = measure_variant(variant, settings, args.runs,
                                               lambda m: print(m, file=sys.stderr))
    except BenchError as err:
        print(f"overlay benchmark: {err}", file=sys.stderr)
        return 1
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
