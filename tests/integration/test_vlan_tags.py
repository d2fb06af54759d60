"""Tags that are not 802.1Q C-tags, on trunks, with real frames through the datapath.

Topology ``topologies/switch.yaml``: a1, a2 access in blue (VLAN 10); b1 access in green
(VLAN 20); t1 trunk [blue, green] without native VLAN; t2 trunk [green] with native blue.

The kernel moves an outer 802.1ad S-tag (TPID 0x88a8) out of the frame as it does an 802.1Q
one, and says which it was only in the TPID beside the TCI; a switch that read the TCI alone
switched S-tagged frames as C-tagged ones of the same VID, into the access ports of that VLAN.
Every test runs on both receive paths of the datapath: the PACKET_MMAP ring and the plain
socket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from tests.conftest import needs_root
from vnet.testing import Dataplane, Lab, TestHost, wait_until

pytestmark = [needs_root, pytest.mark.vnet_topology("topologies/switch.yaml")]

BCAST = "ff:ff:ff:ff:ff:ff"
T1_MAC, T2_MAC = "02:00:00:00:09:01", "02:00:00:00:09:02"
ALL = ["a1:eth0", "a2:eth0", "b1:eth0", "t1:eth0", "t2:eth0"]


@pytest.fixture(params=["ring", "socket"])
def vnet_host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[TestHost]:
    """The datapath on PACKET_MMAP rings, and on plain packet sockets (``--io``)."""
    monkeypatch.setenv("VNET_DATAPATH_IO", request.param)
    with TestHost() as host:
        yield host


def udp(marker: bytes) -> Packet:
    return IP(src="10.9.9.1", dst="10.9.9.2") / UDP(sport=1000, dport=2000) / Raw(marker)


def carrying(marker: bytes) -> Callable[[Packet], bool]:
    return lambda p: bytes(p).endswith(marker)


def switched(lab: Lab, port: str, frames: int) -> dict[str, Any]:
    """The counters of ``port`` once the switch has taken in ``frames`` frames there."""
    counters: dict[str, Any] = wait_until(
        lambda: (c := lab.counters(port))["rx_frames"] >= frames and c,
        message=lambda: f"the switch to take in {frames} frames on {port}; its counters: "
                        f"{lab.counters(port)}")
    return counters


def nowhere(dp: Dataplane, marker: bytes) -> None:
    for port in ALL:
        dp.verify_no_frame(port, carrying(marker))


def test_s_tagged_frames_on_a_trunk_reach_no_vlan(vnet_lab: Lab) -> None:
    """S-tag VID 10 alone, and over a C-tag (QinQ), on t1 (which carries VLAN 10 tagged) and
    on t2 (whose native VLAN is 10): none reaches blue's access ports or any other port, and
    each is counted as an ``s-tagged`` drop."""
    dp = vnet_lab.dataplane
    sent = {"t1:eth0": T1_MAC, "t2:eth0": T2_MAC}
    for port, mac in sent.items():
        eth = Ether(src=mac, dst=BCAST)
        dp.send(port, eth / Dot1AD(vlan=10) / udp(b"s-alone"))
        dp.send(port, eth / Dot1AD(vlan=10) / Dot1Q(vlan=10) / udp(b"s-over-c10"))
        dp.send(port, eth / Dot1AD(vlan=20) / Dot1Q(vlan=10) / udp(b"s20-over-c10"))
        # a priority C-tag (the kernel takes it off) with the S-tag behind it, in band
        dp.send(port, eth / Dot1Q(vlan=0) / Dot1AD(vlan=10) / udp(b"prio-then-s"))
    for port in sent:
        drops = switched(vnet_lab, port, 4)["drops"]
        assert drops.get("s-tagged") == 4, (port, drops)
    for marker in (b"s-alone", b"s-over-c10", b"s20-over-c10", b"prio-then-s"):
        nowhere(dp, marker)
    # The same trunk's C-tagged VLAN 10 still gets through: the capture sees what comes.
    dp.send("t1:eth0", Ether(src=T1_MAC, dst=BCAST) / Dot1Q(vlan=10) / udp(b"c10"))
    for port in ("a1:eth0", "a2:eth0", "t2:eth0"):
        dp.receive(port, carrying(b"c10"))
    dp.verify_no_frame("b1:eth0", carrying(b"c10"))


def test_a_0x9100_tag_is_no_vlan_tag(vnet_lab: Lab) -> None:
    """0x9100 (pre-standard QinQ) is only an EtherType to the kernel, IEEE 802.1Q, the Linux
    bridge and OVS: the frame is untagged.  t1 has no native VLAN, so it is dropped there
    (not switched into VLAN 10); on t2 it stays in the native VLAN, with its bytes."""
    dp = vnet_lab.dataplane
    for port, mac in (("t1:eth0", T1_MAC), ("t2:eth0", T2_MAC)):
        dp.send(port, Ether(src=mac, dst=BCAST, type=0x9100) / Dot1Q(vlan=10)
                / udp(port.encode()))
    assert switched(vnet_lab, "t1:eth0", 1)["drops"].get("untagged-no-native") == 1
    nowhere(dp, b"t1:eth0")
    for port in ("a1:eth0", "a2:eth0"):
        frame = bytes(dp.receive(port, carrying(b"t2:eth0")))
        assert frame[12:16] == b"\x91\x00\x00\x0a", frame.hex()  # as sent: in band, untouched
    tagged = bytes(dp.receive("t1:eth0", carrying(b"t2:eth0")))   # VLAN 10 tagged on t1
    assert tagged[12:20] == b"\x81\x00\x00\x0a\x91\x00\x00\x0a", tagged.hex()
    dp.verify_no_frame("b1:eth0", carrying(b"t2:eth0"))


def test_tagged_frames_too_short_for_their_tag_show_only_in_the_netdevs_count(
        vnet_lab: Lab) -> None:
    """802.1Q and 802.1ad frames of 14-19 bytes: the kernel frees them before the datapath's
    packet socket sees them, and counts them only as received on the port's netdev; the port
    reports that count as ``netdev_rx_frames``, so the difference shows (docs/counters.md).
    A frame sent after them fences the check: the kernel handles a frame sent from a packet
    socket in the sender's system call, in order, so once the switch has counted the fence it
    would have counted them."""
    dp = vnet_lab.dataplane
    before = vnet_lab.counters("t1:eth0")
    mac = bytes.fromhex(T1_MAC.replace(":", ""))
    short = [(b"\xff" * 6 + mac + tpid + b"\x00\x0a\x08\x00\x45")[:size]
             for size in range(14, 20) for tpid in (b"\x81\x00", b"\x88\xa8")]
    for frame in short:
        dp.send("t1:eth0", frame)
    dp.send("t1:eth0", Ether(src=T1_MAC, dst=BCAST) / Dot1Q(vlan=10) / udp(b"fence"))
    dp.receive("a1:eth0", carrying(b"fence"))
    after = switched(vnet_lab, "t1:eth0", before["rx_frames"] + 1)
    assert after["rx_frames"] - before["rx_frames"] == 1, (before, after)
    assert after["drops"] == before["drops"], (before, after)
    assert after["netdev_rx_frames"] - before["netdev_rx_frames"] == len(short) + 1
