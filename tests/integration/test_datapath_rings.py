"""The PACKET_MMAP ring datapath stays live through overload.

Under a 64-byte flood the kernel drops frames, leaves the odd receive slot unfilled and
stops waking the reader while the slot it filled last is free; a reader that lost its
place there once stopped forwarding on the flooded port for good.  Here: flood, then
ping straight away, several times.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import needs_root
from vnet.bench import measure, testbed
from vnet.bench.testbed import (
    ADDR_A,
    ADDR_B,
    MAC_A,
    MAC_B,
    SINK_ADDR,
    VnetPython,
    ns_cmd,
    run,
)
from vnet.datapath.protocol import GetStats


@needs_root
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(not measure.have_trafgen(),
                    reason="needs trafgen: apt-get install netsniff-ng (.ci/install does)")
def test_ring_datapath_forwards_right_after_a_64_byte_flood(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNET_DATAPATH_IO", "ring")
    bed = testbed.Testbed(f"vr{os.getpid() % 10000}")
    try:
        bed.build()
        switch = VnetPython(bed)   # the rings under overload: no kernel flow takes the flood
        switch.start(mac_table=1024)
        measure.warm_up(bed)
        conf = measure._trafgen_conf(bed, "flood",
                                     measure.udp64(MAC_A, MAC_B, ADDR_A, SINK_ADDR))
        for _ in range(3):
            flood = measure.trafgen(bed, bed.node_a, conf)
            time.sleep(2.0)
            bed.stop(flood, signal.SIGINT)
            ping = run(ns_cmd(bed.node_a, ["ping", "-n", "-c", "10", "-i", "0.05", "-W", "1",
                                           ADDR_B]), check=False)
            stats = switch.call(GetStats("bench"))["bench"]
            assert " 0% packet loss" in ping.stdout, (ping.stdout, stats)
        assert stats["pb"]["tx_frames"] > 10_000, stats  # the flood did go through the rings
        assert "ring" in stats["pa"], stats
        # Offered faster than it forwards: the kernel had no free slot for the rest, and the
        # port's counters say so (the kernel's own drop count, PACKET_STATISTICS).
        assert stats["pa"]["drops"].get("rx-ring-full", 0) > 0, stats
    finally:
        bed.close()
