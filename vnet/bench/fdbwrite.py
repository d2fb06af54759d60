"""``python -m vnet.bench.fdbwrite [N ...]``: how fast the overlay driver writes a vxlan FDB.

The overlay driver converges a vxlan netdev's forwarding entries (one per remote MAC) and its
neighbour entries (the ARP proxy's) to a wanted set (``set_remote_macs``).  This measures that
call alone, for N remote MACs, in a namespace of its own with one vxlan netdev (no switch, no
bus): from empty to N MACs, the same again (nothing to do), all N moved to another host,
back to none; then the same with an IP for each MAC (FDB and neighbour entries).  Each phase
is checked against the kernel's dump afterwards.  The namespace is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from vnet.bench import tally
from vnet.bench.testbed import run
from vnet.daemon.drivers import overlay
from vnet.daemon.resources import OverlayResource
from vnet.host import netns

IFNAME = "vxbench"
PEERS = ("10.253.0.2", "10.253.0.3")


def _resource() -> OverlayResource:
    return OverlayResource(lab="bench", network="red", ifname=IFNAME, vni=4242,
                           local="10.253.0.1", mtu=1450, peers=(), macs=(), arp_proxy=True,
                           alias="vnet:bench:@overlay-red:vxlan")


def _counts() -> tuple[int, int]:
    """(unicast FDB entries, neighbour entries) the kernel holds on the netdev."""
    fdb = run(["bridge", "fdb", "show", "dev", IFNAME], timeout=300).stdout.splitlines()
    neigh = run(["ip", "neigh", "show", "dev", IFNAME], timeout=300).stdout.splitlines()
    return (sum(1 for line in fdb if " dst " in line and not line.startswith("00:00:00")),
            sum(1 for line in neigh if line.strip()))


def _phase(name: str, count: int, call: Callable[[], None], expect: tuple[int, int]) -> float:
    started = time.perf_counter()
    call()
    took = time.perf_counter() - started
    got = _counts()
    print(f"  {name:<34} {took:8.3f} s  ({took / max(count, 1) * 1e6:7.1f} us per MAC)"
          f"{'' if got == expect else f'  WRONG: kernel holds {got}, wanted {expect}'}",
          flush=True)
    return took


def inside(counts: list[int]) -> None:
    """Runs in the namespace: the vxlan netdev, then the phases for each count."""
    run(["ip", "link", "add", IFNAME, "type", "vxlan", "id", "4242", "dstport", "4789",
         "nolearning", "proxy"])
    run(["ip", "link", "set", IFNAME, "up"])
    resource = _resource()

    def converge(macs: Mapping[str, tuple[str, str | None]]) -> Callable[[], None]:
        return lambda: asyncio.run(overlay.set_remote_macs(resource, macs))

    for count in counts:
        macs = tally.many_macs(count)
        ips = [str(ipaddress.ip_address("10.64.0.1") + i) for i in range(count)]
        print(f"{count} remote MACs:", flush=True)
        plain = {mac: (PEERS[0], None) for mac in macs}
        moved = {mac: (PEERS[1], None) for mac in macs}
        with_ip = {mac: (PEERS[0], ip) for mac, ip in zip(macs, ips, strict=True)}
        _phase("add (FDB only)", count, converge(plain), (count, 0))
        _phase("again (nothing to do)", count, converge(plain), (count, 0))
        _phase("move to another host", count, converge(moved), (count, 0))
        _phase("remove", count, converge({}), (0, 0))
        _phase("add with IPs (FDB + neighbours)", count, converge(with_ip), (count, count))
        _phase("remove with IPs", count, converge({}), (0, 0))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("counts", nargs="*", type=int, default=[2000, 10000])
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inside:
        inside(args.counts)
        return 0
    name = f"vfdb{os.getpid() % 100000}"
    netns.create(name)
    try:
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, "-m",
                               "vnet.bench.fdbwrite", "--inside",
                               *map(str, args.counts)], check=False).returncode
    finally:
        netns.remove(name)


if __name__ == "__main__":
    sys.exit(main())
