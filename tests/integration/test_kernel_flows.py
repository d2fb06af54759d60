"""Kernel flows end to end: the vnet datapath between two namespaces (the benchmark's
testbed), a steady ping handed to the kernel, and handed back to Python when the switch's
tables change or the port goes.

The kernel's own counts (tc's, read over netlink inside the testbed's host namespace) say
which path the frames took: a flow's frames counted there were redirected by the kernel and
never reached the Python switch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import needs_root
from vnet.bench import testbed
from vnet.bench.testbed import ADDR_B, MAC_B, Vnet, VnetPython, ns_cmd, run
from vnet.datapath import protocol
from vnet.datapath.kernelflows import PRIO
from vnet.datapath.mirror import Records
from vnet.host import netns
from vnet.host.tcflow import Tc
from vnet.testing import wait_until

pytestmark = [needs_root, pytest.mark.root]


class Bed:
    def __init__(self, bed: testbed.Testbed, switch: Vnet) -> None:
        self.bed, self.switch = bed, switch
        self.python = switch.python
        with netns.entered(bed.host):
            self.tc = Tc().open()
            self.index = {name: socket.if_nametoindex(name)
                          for name in (bed.port_a, bed.port_b)}

    def ping(self, count: int, interval: str = "0.01") -> None:
        result = run(ns_cmd(self.bed.node_a, ["ping", "-n", "-q", "-c", str(count), "-i",
                                              interval, "-W", "1", ADDR_B]), check=False)
        assert " 0% packet loss" in result.stdout, (result.stdout, self.stats())

    def steady(self) -> None:
        """Ping until both ways are kernel flows (a flow needs 32 frames within a second
        once the switch has cached its decision; pinging in bursts until then waits for
        that, whatever the window's phase)."""
        def offloaded() -> bool:
            self.ping(20, interval="0.005")
            return self.flows() == 2
        wait_until(offloaded, timeout=30, message=lambda: f"two kernel flows: {self.stats()}")

    def stats(self) -> dict[str, Any]:
        return dict(self.switch.call(protocol.GetStats("bench"))["bench"])

    def flows(self) -> int:
        return int(self.switch.call(protocol.Ping())["kernel_flows"]["flows"])

    def kernel_packets(self, port: str) -> int:
        """What the kernel flows on ``port``'s ingress redirected so far."""
        return sum(s.packets for (prio, _h), s in self.tc.filter_stats(self.index[port]).items()
                   if prio == PRIO)


@pytest.fixture(params=["cpython", "pypy"])
def kf(request: pytest.FixtureRequest) -> Iterator[Bed]:
    """The datapath under CPython and under PyPy (whose socket module lacks some calls)."""
    python = shutil.which("pypy3") if request.param == "pypy" else None
    if request.param == "pypy" and python is None:
        pytest.skip("needs pypy3: apt-get install pypy3 (.ci/install does)")
    bed = testbed.Testbed(f"kf{os.getpid() % 10000}")
    try:
        bed.build()
        switch = Vnet(bed, python)
        switch.start(mac_table=1024)
        world = Bed(bed, switch)
        try:
            yield world
        finally:
            world.tc.close()
    finally:
        bed.close()


def test_a_steady_ping_is_forwarded_by_the_kernel_until_the_table_changes(kf: Bed) -> None:
    reply = kf.switch.call(protocol.Ping())["kernel_flows"]
    assert reply["enabled"], reply["reason"]
    kf.steady()                                     # A <-> B, steady: over the threshold
    stats = kf.stats()
    assert stats["pa"]["kernel_flows"] == 1 and stats["pb"]["kernel_flows"] == 1, stats
    before = kf.kernel_packets("pa"), kf.kernel_packets("pb")
    python_rx = kf.stats()["pa"]["rx_frames"]
    kf.ping(40)
    after = kf.kernel_packets("pa"), kf.kernel_packets("pb")
    assert after[0] - before[0] >= 40 and after[1] - before[1] >= 40, (before, after)
    # the switch's counters count the kernel's frames too (added once a second)
    wait_until(lambda: kf.stats()["pa"]["rx_frames"] >= python_rx + 40,
               message=lambda: f"the kernel's frames in the port's counters: {kf.stats()}")

    # the table changes (flushed): the kernel hands the flows back, Python floods and learns
    kf.switch.call(protocol.FlushFdb("bench"))
    wait_until(lambda: kf.flows() == 0, message=lambda: f"flows removed: {kf.stats()}")
    assert kf.kernel_packets("pa") == 0 and kf.kernel_packets("pb") == 0
    kf.ping(10, interval="0.2")                     # below the threshold: all in Python
    assert kf.flows() == 0
    assert kf.switch.call(protocol.GetFdbSize("bench")) == 2   # learned again in Python


def test_a_removed_port_takes_its_flows_and_its_qdisc_with_it(kf: Bed) -> None:
    kf.steady()
    kf.switch.call(protocol.DelPort("bench", kf.bed.port_a))
    assert kf.flows() == 0                           # both: in from pa, and out to pa
    qdiscs = run(["tc", "-n", kf.bed.host, "qdisc", "show", "dev", kf.bed.port_a]).stdout
    assert "clsact" not in qdiscs, qdiscs
    assert kf.kernel_packets("pb") == 0
    lost = run(ns_cmd(kf.bed.node_b, ["ping", "-n", "-q", "-c", "3", "-i", "0.1", "-W", "1",
                                      "10.254.0.1"]), check=False)
    assert " 100% packet loss" in lost.stdout, lost.stdout   # nothing forwards to pa now


def test_a_datapath_without_kernel_flows_forwards_every_frame_itself(kf: Bed) -> None:
    kf.steady()
    kf.switch.stop()                                 # a clean stop takes its flows away
    qdiscs = run(["tc", "-n", kf.bed.host, "qdisc", "show", "dev", kf.bed.port_a]).stdout
    assert "clsact" not in qdiscs, qdiscs
    kf.switch = VnetPython(kf.bed, kf.python)
    kf.switch.start(mac_table=1024)
    reply = kf.switch.call(protocol.Ping())["kernel_flows"]
    assert not reply["enabled"] and reply["reason"] == "off by configuration"
    kf.ping(60)
    assert kf.flows() == 0 and kf.stats()["pa"]["rx_frames"] >= 60


def test_a_capture_takes_its_ports_flows_back_to_python_and_gives_them_up_after(
        kf: Bed) -> None:
    kf.steady()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as capture:
        capture.settimeout(30)
        capture.connect(kf.switch.control)
        capture.sendall(protocol.encode(protocol.Mirror("bench", kf.bed.port_b, "in")))
        reply = b""
        while not reply.endswith(b"\n"):
            reply += capture.recv(1)
        assert json.loads(reply)["ok"], reply
        assert kf.flows() == 0        # every frame through pb must pass the mirror
        kf.ping(10)
        records = Records()
        seen: list[bytes] = []
        while len(seen) < 10:        # the echo replies, as pb received them
            seen += [r.data for r in records.feed(capture.recv(65536))
                     if r.data[6:12] == bytes.fromhex(MAC_B.replace(":", ""))]
    kf.steady()                       # the capture is gone: the flows come back
