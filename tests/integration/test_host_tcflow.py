"""Kernel flows on real netdevs: a namespace of the test's own with veth pairs a0-a1 and b0-b1;
a redirect on a1's ingress to b1 takes what a0 sends out of b0.

The adapter runs inside the namespace: its netlink socket is opened there, as the datapath's
is in the namespace it runs in.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import needs_root
from vnet.host import cbpf, netns
from vnet.host.tcflow import COUNTED_ETH_HEADER, FlowStats, Tc
from vnet.testing import wait_until

pytestmark = [needs_root, pytest.mark.root]

ETH_P_ALL = 0x0003
ETHERTYPE = b"\x88\xb5"  # IEEE local experimental: nothing else in the namespace sends it
SRC, DST = bytes.fromhex("02aa00000001"), bytes.fromhex("02aa00000002")
EVERYTHING = cbpf.encode(cbpf.ACCEPT_ALL)
FRAME_LEN = 100
HANDLE, PRIO = 0x10, 7


def frame(tag: bytes) -> bytes:
    return (DST + SRC + ETHERTYPE + tag).ljust(FRAME_LEN, b"\0")


@dataclass
class Bed:
    name: str
    index: dict[str, int]
    socks: dict[str, socket.socket]
    tc: Tc

    def send(self, ifname: str, tags: list[bytes]) -> None:
        for tag in tags:
            self.socks[ifname].send(frame(tag))

    def receive(self, ifname: str, want: set[bytes], timeout: float = 10.0) -> set[bytes]:
        """The test tags seen on ``ifname`` until all of ``want`` were (or the deadline)."""
        sock, seen = self.socks[ifname], set[bytes]()
        deadline = time.monotonic() + timeout
        while not want <= seen and time.monotonic() < deadline:
            if not select.select([sock], [], [], 0.05)[0]:
                continue
            data, address = sock.recvfrom(65536)
            if address[2] != socket.PACKET_OUTGOING and data[12:14] == ETHERTYPE:
                seen.add(data[14:22])
        return seen


@pytest.fixture
def bed() -> Iterator[Bed]:
    name = f"vnhtc{os.getpid() % 100000}"
    netns.create(name, [("net.ipv6.conf.all.disable_ipv6", "1"),
                        ("net.ipv6.conf.default.disable_ipv6", "1")])
    socks: dict[str, socket.socket] = {}
    tc = Tc()
    try:
        for a, b in (("a0", "a1"), ("b0", "b1")):
            subprocess.run(["ip", "-n", name, "link", "add", a, "type", "veth", "peer", "name",
                            b], check=True, capture_output=True)
            for ifname in (a, b):
                subprocess.run(["ip", "-n", name, "link", "set", ifname, "up"], check=True,
                               capture_output=True)
        with netns.entered(name):
            index = {n: socket.if_nametoindex(n) for n in ("a0", "a1", "b0", "b1")}
            for ifname in index:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                sock.bind((ifname, 0))
                socks[ifname] = sock
            tc.open()
        yield Bed(name, index, socks, tc)
    finally:
        tc.close()
        for sock in socks.values():
            sock.close()
        netns.remove(name)


def tags(prefix: bytes, count: int) -> list[bytes]:
    return [prefix + i.to_bytes(8 - len(prefix), "big") for i in range(count)]


def test_a_redirect_takes_what_a0_sends_out_of_b0_and_counts_it(bed: Bed) -> None:
    a1, b1 = bed.index["a1"], bed.index["b1"]
    assert bed.tc.probe(a1) is None
    bed.tc.reset_ingress(a1)
    bed.tc.add_redirect(a1, HANDLE, PRIO, EVERYTHING, b1)

    sent = tags(b"r", 20)
    bed.send("a0", sent)
    assert bed.receive("b0", set(sent)) == set(sent)
    stats = wait_until(lambda: bed.tc.filter_stats(a1).get((PRIO, HANDLE)),
                       message="the redirect's counts")
    # The count also holds whatever else a1 received (there is nothing else in the namespace:
    # no IPv6, no addresses), so exactly the test frames; their Ethernet headers are not in
    # the bytes (tc ingress sees a frame from its network header on).
    assert stats == FlowStats(len(sent), len(sent) * (FRAME_LEN - 14 + COUNTED_ETH_HEADER))
    assert list(bed.tc.filter_stats(a1)) == [(PRIO, HANDLE)]

    bed.tc.delete_filter(a1, HANDLE, PRIO)
    bed.tc.delete_filter(a1, HANDLE, PRIO)   # already gone: fine
    assert bed.tc.filter_stats(a1) == {}
    later = tags(b"n", 5)
    bed.send("a0", later)
    assert set(later) <= bed.receive("a1", set(later))   # a1 has had them (its socket
    sentinel = tags(b"s", 1)                             # sees them before tc does)
    bed.send("b1", sentinel)   # sent after a1 had the others: b0 has it after them
    seen = bed.receive("b0", set(sentinel))
    assert set(sentinel) <= seen and not set(later) & seen

    bed.tc.remove_ingress(a1)
    bed.tc.remove_ingress(a1)   # none there: fine
    shown = subprocess.run(["ip", "netns", "exec", bed.name, "tc", "qdisc", "show", "dev",
                            "a1"], check=True, capture_output=True, text=True).stdout
    assert "clsact" not in shown


def test_reset_ingress_drops_the_filters_that_were_there(bed: Bed) -> None:
    a1, b1 = bed.index["a1"], bed.index["b1"]
    bed.tc.reset_ingress(a1)
    bed.tc.add_redirect(a1, HANDLE, PRIO, EVERYTHING, b1)
    bed.tc.add_redirect(a1, HANDLE + 1, PRIO + 1, EVERYTHING, b1)
    assert set(bed.tc.filter_stats(a1)) == {(PRIO, HANDLE), (PRIO + 1, HANDLE + 1)}
    bed.tc.reset_ingress(a1)
    assert bed.tc.filter_stats(a1) == {}


def test_refusals_name_the_request_and_carry_the_kernels_words(bed: Bed) -> None:
    a1, b1 = bed.index["a1"], bed.index["b1"]
    bed.tc.reset_ingress(a1)
    bed.tc.add_redirect(a1, HANDLE, PRIO, EVERYTHING, b1)
    with pytest.raises(Exception, match=rf"cannot add kernel flow redirect on ifindex {a1} "
                                        rf"to {b1} .*: File exists"):
        bed.tc.add_redirect(a1, HANDLE, PRIO, EVERYTHING, b1)
    with pytest.raises(Exception, match=rf"on ifindex {a1} to 99999 .*: No such device"):
        bed.tc.add_redirect(a1, HANDLE + 1, PRIO, EVERYTHING, 99999)
    gone = 99999
    bed.tc.remove_ingress(gone)
    bed.tc.delete_filter(gone, HANDLE, PRIO)
    assert bed.tc.filter_stats(a1)  # the socket is still in step after the refusals
