"""The overlay driver's FDB and neighbour entries against a real vxlan netdev, in a namespace
of the test's own: thousands of entries converged in batches to exactly what is wanted
(checked with iproute2's own listing), and an entry the kernel refuses named in the error
while the rest of its batch is written."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import needs_root
from vnet.daemon.drivers import overlay
from vnet.daemon.resources import OverlayResource
from vnet.errors import HostError
from vnet.host import neigh, netns

pytestmark = [needs_root]

IFNAME = "vxfdbt"
PEERS = ("10.253.0.2", "10.253.0.3", "10.253.0.4")
GOOD = [f"02:0b:00:00:{i >> 8:02x}:{i & 0xff:02x}" for i in range(2 * neigh.CHUNK + 5)]


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True,
                          text=True, timeout=120).stdout


def fdb(ns: str) -> set[tuple[str, str]]:
    out = subprocess.run(["bridge", "-n", ns, "fdb", "show", "dev", IFNAME], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    entries = set()
    for line in out.splitlines():
        words = line.split()
        if "dst" in words:
            entries.add((words[0], words[words.index("dst") + 1]))
    return entries


def neighbours(ns: str) -> set[tuple[str, str]]:
    words = (line.split() for line in ip(ns, "neigh", "show", "dev", IFNAME).splitlines())
    return {(w[0], w[w.index("lladdr") + 1]) for w in words if "lladdr" in w}


@pytest.fixture
def vxlan() -> Iterator[tuple[str, OverlayResource]]:
    ns = f"vfdbt{os.getpid() % 100000}"
    netns.create(ns)
    try:
        ip(ns, "link", "add", IFNAME, "type", "vxlan", "id", "4243", "local", "10.253.0.1",
           "dstport", "4789", "nolearning", "proxy")
        ip(ns, "link", "set", IFNAME, "up")
        yield ns, OverlayResource(lab="t", network="red", ifname=IFNAME, vni=4243,
                                  local="10.253.0.1", mtu=1450, peers=(), macs=(),
                                  arp_proxy=True, alias="vnet:t:@overlay-red:vxlan")
    finally:
        netns.remove(ns)


def converge(ns: str, resource: OverlayResource, *, peers: list[str] | None = None,
             macs: dict[str, tuple[str, str | None]] | None = None) -> None:
    """The driver's blocking converge, run on this thread inside the namespace."""
    with netns.entered(ns):
        if peers is not None:
            overlay._with_index(resource, overlay._converge_flood_peers, peers)
        if macs is not None:
            overlay._with_index(resource, overlay._converge_remote_macs, macs)


def remote(count: int, first_ip: str | None = "10.64.0.1") -> dict[str, tuple[str, str | None]]:
    return {f"02:0a:00:00:{i >> 8:02x}:{i & 0xff:02x}": (
        PEERS[i % 2], str(ipaddress.ip_address(first_ip) + i) if first_ip and i % 3 else None)
        for i in range(count)}


def expected(macs: dict[str, tuple[str, str | None]]
             ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    return ({(mac, dst) for mac, (dst, _) in macs.items()},
            {(addr, mac) for mac, (_, addr) in macs.items() if addr})


def test_thousands_of_remote_macs_converge_exactly(vxlan):
    ns, resource = vxlan
    converge(ns, resource, peers=list(PEERS[:2]))
    wanted = remote(3000)
    converge(ns, resource, macs=wanted)
    flood = {("00:00:00:00:00:00", PEERS[0]), ("00:00:00:00:00:00", PEERS[1])}
    assert (fdb(ns), neighbours(ns)) == (expected(wanted)[0] | flood, expected(wanted)[1])
    changed = dict(list(wanted.items())[1000:])                  # a third withdrawn
    for mac in list(changed)[:1000]:                             # a third moved, new IPs
        address = changed[mac][1]
        changed[mac] = (PEERS[2], address and str(ipaddress.ip_address(address) + 10000))
    converge(ns, resource, peers=[PEERS[1], PEERS[2]], macs=changed)
    flood = {("00:00:00:00:00:00", PEERS[1]), ("00:00:00:00:00:00", PEERS[2])}
    assert (fdb(ns), neighbours(ns)) == (expected(changed)[0] | flood, expected(changed)[1])
    converge(ns, resource, macs=changed)                         # nothing to do
    assert fdb(ns) == expected(changed)[0] | flood
    converge(ns, resource, peers=[], macs={})
    assert (fdb(ns), neighbours(ns)) == (set(), set())


def test_a_refused_entry_is_named_and_the_rest_of_its_batch_is_written(vxlan):
    ns, _ = vxlan
    with netns.entered(ns):
        index = int(ip(ns, "-o", "link", "show", IFNAME).split(":")[0])
        with neigh.NeighSocket() as sock:
            good = [neigh.fdb_set(index, mac, PEERS[0]) for mac in GOOD]
            bad = neigh.fdb_set(index + 1000, "02:0c:00:00:00:01", PEERS[1])  # no such netdev
            gone = neigh.fdb_delete(index, "02:0d:00:00:00:01")                # never there
            failures = sock.apply([*good[:300], bad, gone, *good[300:]])
    assert [(f.what, f.code) for f in failures] == [
        ("forwarding entry 02:0c:00:00:00:01 -> 10.253.0.3", 19)]   # ENODEV
    assert str(failures[0]).startswith("forwarding entry 02:0c:00:00:00:01 -> 10.253.0.3: "
                                       "the interface is gone")
    assert fdb(ns) == {(mac, PEERS[0]) for mac in GOOD}


def test_the_driver_names_the_mac_the_kernel_refused(vxlan):
    ns, resource = vxlan
    macs = remote(50, None)
    macs["02:0e:00:00:00:01"] = ("fd00::9", None)     # an IPv6 peer on an IPv4 netdev
    with pytest.raises(HostError) as err:
        converge(ns, resource, macs=macs)
    text = str(err.value)
    assert text.startswith("network red: the kernel refused 1 of 51 remote MAC entries of "
                           "vxfdbt: forwarding entry 02:0e:00:00:00:01 -> fd00::9: ")
    assert "Errno" not in text
    assert fdb(ns) == expected(remote(50, None))[0]
