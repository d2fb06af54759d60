"""Flow tests of every switch rule, with real frames through the datapath in namespaces.

Topology ``topologies/switch.yaml``: a1, a2 access in blue (VLAN 10); b1 access in green
(VLAN 20); t1 trunk [blue, green] without native VLAN; t2 trunk [green] with native blue.
Blue keeps learned entries for 300 s, green for 3 s (the aging test's).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from tests.conftest import needs_root
from vnet.testing import Dataplane, Lab, TestHost, wait_until

pytestmark = [needs_root, pytest.mark.vnet_topology("topologies/switch.yaml")]


@pytest.fixture(params=["cpython", "pypy"])
def vnet_host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[TestHost]:
    """Every switch rule twice: the datapath under vnetd's CPython, and under PyPy
    (``vnetd --datapath-python``)."""
    if request.param == "pypy":
        if shutil.which("pypy3") is None:
            pytest.skip("needs pypy3: apt-get install pypy3 (.ci/install does)")
        monkeypatch.setenv("VNET_DATAPATH_PYTHON", "pypy3")
    with TestHost() as host:
        if request.param == "pypy":
            pid = host.call("ping")["datapath_pid"]
            assert "pypy" in os.readlink(f"/proc/{pid}/exe")
        yield host

BCAST = "ff:ff:ff:ff:ff:ff"
M1, M2, M3 = "02:00:00:00:01:01", "02:00:00:00:01:02", "02:00:00:00:01:03"
ACCESS = ["a1:eth0", "a2:eth0", "b1:eth0"]
ALL = [*ACCESS, "t1:eth0", "t2:eth0"]
MEMBERS = {"blue": ["a1:eth0", "a2:eth0", "t1:eth0", "t2:eth0"],
           "green": ["b1:eth0", "t1:eth0", "t2:eth0"]}
NETWORK_OF = {"a1:eth0": "blue", "a2:eth0": "blue", "b1:eth0": "green"}
GREEN_AGING = 3.0


def udp(src: str, dst: str, payload: bytes = b"vnet") -> Ether:
    return Ether(src=src, dst=dst) / IP(src="10.9.9.1", dst="10.9.9.2") / UDP(
        sport=1000, dport=2000) / Raw(payload)


def tagged(frame: Ether, vid: int, prio: int = 0) -> Ether:
    """``frame`` with an 802.1Q tag inserted after the MAC addresses."""
    return Ether(src=frame.src, dst=frame.dst) / Dot1Q(vlan=vid, prio=prio) / frame.payload


def learn(dp: Dataplane, port: str, mac: str) -> None:
    """Let the switch learn ``mac`` on access port ``port``: a broadcast from it, waited for
    (and taken) at every other port of its VLAN, so no copy can arrive later to surprise a
    check.  Waiting keeps the order of events: the datapath owes no order to frames that
    enter on different ports."""
    frame = udp(mac, BCAST, port.encode())
    dp.send(port, frame)
    for other in MEMBERS[NETWORK_OF[port]]:
        if other != port:
            dp.receive(other, lambda p: bytes(p).endswith(port.encode()))


def arrived(dp: Dataplane, port: str, src_prefix: bytes) -> int:
    """How many frames from a source MAC starting with ``src_prefix`` are queued at ``port``
    (not consumed)."""
    dp.poll(0)
    return sum(1 for f in dp.ports[port].queue if f[6:6 + len(src_prefix)] == src_prefix)


def switched(lab: Lab, port: str, frames: int) -> dict[str, Any]:
    """The counters of ``port`` once the switch has taken in ``frames`` frames there: it
    counts a frame (and its drop or its copies) when it switches it, which it owes no
    deadline, so a test waits for that rather than for a while."""
    counters: dict[str, Any] = wait_until(
        lambda: (c := lab.counters(port))["rx_frames"] >= frames and c,
        message=lambda: f"the switch to take in {frames} frames on {port}; its counters: "
                        f"{lab.counters(port)}")
    return counters


def fdb_of(lab: Lab) -> dict[tuple[int, str], dict[str, object]]:
    return {(e["vlan"], e["mac"]): e for e in lab.fdb()}


def test_broadcast_floods_only_its_vlan(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    frame = udp(M1, BCAST)
    dp.send("a1:eth0", frame)
    dp.verify_packet(frame, "a2:eth0")
    dp.verify_packet(tagged(frame, 10), "t1:eth0")  # trunk: tagged with blue's VID
    dp.verify_packet(frame, "t2:eth0")              # trunk whose native VLAN is blue: untagged
    dp.verify_no_packet(frame, "b1:eth0")
    dp.verify_no_other_packets()


def test_learning_turns_flooding_into_unicast(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    unknown = udp(M1, M2)
    dp.send("a1:eth0", unknown)  # M2 unknown: flooded in blue, and M1 learned on a1
    dp.verify_packet(unknown, "a2:eth0")
    dp.verify_packet(tagged(unknown, 10), "t1:eth0")
    dp.verify_packet(unknown, "t2:eth0")
    dp.verify_no_other_packets()
    reply = udp(M2, M1)
    dp.send("a2:eth0", reply)     # M1 known: only to a1; M2 learned on a2
    dp.verify_packet(reply, "a1:eth0")
    dp.verify_no_other_packets()
    dp.send("a1:eth0", unknown)   # now M2 is known too
    dp.verify_packet(unknown, "a2:eth0")
    dp.verify_no_other_packets()
    table = fdb_of(vnet_lab)
    assert table[(10, M1)]["port"] == "a1.eth0" and table[(10, M1)]["static"] is False
    assert table[(10, M2)]["port"] == "a2.eth0"


def test_learning_is_per_vlan(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    learn(dp, "a1:eth0", M1)            # M1 learned in VLAN 10 only
    to_m1 = udp(M3, M1)
    dp.send("b1:eth0", to_m1)           # in VLAN 20 M1 is unknown: flooded in green only
    dp.verify_packet(tagged(to_m1, 20), "t1:eth0")
    dp.verify_packet(tagged(to_m1, 20), "t2:eth0")
    dp.verify_no_other_packets()


def test_mac_move_follows_the_station(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    learn(dp, "a1:eth0", M1)
    learn(dp, "a2:eth0", M1)             # the station moved to a2
    to_m1 = udp(M2, M1)
    dp.send("t2:eth0", to_m1)            # untagged on t2 = native blue
    dp.verify_packet(to_m1, "a2:eth0")
    dp.verify_no_other_packets()
    assert fdb_of(vnet_lab)[(10, M1)]["port"] == "a2.eth0"
    assert vnet_lab.counters("a2:eth0")["mac_moves"] >= 1


def test_entries_age_out(vnet_lab: Lab) -> None:
    """Green's mac_aging is 3 s: an entry is listed only while younger than that, goes no
    sooner, and once gone its MAC is flooded again.  Each bound holds however slow the
    machine: a slow one only looks less often."""
    dp = vnet_lab.dataplane
    before_learning = time.monotonic()
    learn(dp, "b1:eth0", M1)
    ages: list[float] = []

    def aged_out() -> bool:
        entry = fdb_of(vnet_lab).get((20, M1))
        if entry is not None:
            ages.append(float(entry["age"]))  # type: ignore[arg-type]
        return entry is None

    wait_until(aged_out, message="M1's entry in green (mac_aging 3 s) to age out")
    # Not before its time (the datapath stamps a frame when it reads it, after we sent it;
    # 0.5 s spares the stamp of a read that began a moment before the frame came).
    gone_after = time.monotonic() - before_learning
    assert gone_after >= GREEN_AGING - 0.5, f"aged out after {gone_after:.2f} s"
    assert max(ages, default=0.0) <= GREEN_AGING, ages   # never listed older than its aging
    to_m1 = tagged(udp(M3, M1), 20)
    dp.send("t1:eth0", to_m1)            # unknown again: flooded in green
    dp.verify_packet(udp(M3, M1), "b1:eth0")
    dp.verify_packet(to_m1, "t2:eth0")
    dp.verify_no_other_packets()


def test_access_port_priority_tag_counts_as_untagged(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    frame = udp(M1, BCAST)
    dp.send("a1:eth0", tagged(frame, 0, prio=5))
    dp.verify_packet(frame, "a2:eth0")                    # leaves an access port untagged
    dp.verify_packet(tagged(frame, 10, prio=5), "t1:eth0")  # the priority is kept on a trunk
    dp.verify_packet(frame, "t2:eth0")
    dp.verify_no_other_packets()


def test_access_port_drops_tagged_frames_and_double_tags(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    frame = udp(M1, BCAST)
    dp.send("a1:eth0", tagged(frame, 20))  # a VLAN-20 tag on a blue access port
    hop = Ether(src=M1, dst=BCAST) / Dot1Q(vlan=0) / Dot1Q(vlan=20) / frame.payload
    dp.send("a1:eth0", hop)                # priority tag hiding a VLAN-20 tag: VLAN hopping
    hop10 = Ether(src=M1, dst=BCAST) / Dot1Q(vlan=10) / Dot1Q(vlan=20) / frame.payload
    dp.send("a1:eth0", hop10)
    dp.verify_no_other_packets()
    drops = switched(vnet_lab, "a1:eth0", 3)["drops"]
    assert drops.get("tagged-on-access") == 3, drops


def test_trunk_ingress_filtering(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    frame = udp(M3, BCAST)
    dp.send("t1:eth0", tagged(frame, 20))   # allowed: green
    dp.verify_packet(frame, "b1:eth0")      # leaves the access port untagged
    dp.verify_packet(tagged(frame, 20), "t2:eth0")
    dp.verify_no_other_packets()
    dp.send("t1:eth0", tagged(frame, 30))   # red exists, but t1 does not carry it
    dp.send("t1:eth0", tagged(frame, 99))   # no such VLAN at all
    dp.send("t1:eth0", frame)               # untagged, and t1 has no native VLAN
    dp.verify_no_other_packets()
    drops = switched(vnet_lab, "t1:eth0", 4)["drops"]
    assert drops.get("vlan-not-allowed") == 2 and drops.get("untagged-no-native") == 1, drops


def test_trunk_native_vlan_is_untagged_both_ways(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    frame = udp(M3, BCAST)
    dp.send("t2:eth0", frame)                # untagged on t2: native blue
    dp.verify_packet(frame, "a1:eth0")
    dp.verify_packet(frame, "a2:eth0")
    dp.verify_packet(tagged(frame, 10), "t1:eth0")
    dp.verify_no_other_packets()
    dp.send("t2:eth0", tagged(frame, 10))    # the native VLAN tagged is accepted too
    dp.verify_packet(frame, "a1:eth0")
    dp.verify_packet(frame, "a2:eth0")
    dp.verify_packet(tagged(frame, 10), "t1:eth0")
    dp.verify_no_other_packets()


def test_bad_source_macs_are_dropped_and_never_learned(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    for src in ("01:00:5e:00:00:01", BCAST, "00:00:00:00:00:00"):
        dp.send("a1:eth0", udp(src, BCAST))
    dp.verify_no_other_packets()
    assert switched(vnet_lab, "a1:eth0", 3)["drops"].get("bad-src-mac") == 3
    assert not any(e["mac"] in ("01:00:5e:00:00:01", BCAST) for e in vnet_lab.fdb())


def test_reserved_group_is_not_forwarded(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    for last in (0x00, 0x02, 0x0E, 0x0F):
        dp.send("a1:eth0", udp(M1, f"01:80:c2:00:00:{last:02x}"))
    dp.verify_no_other_packets()
    other_multicast = udp(M1, "01:80:c2:00:00:10")   # just outside the reserved block
    dp.send("a1:eth0", other_multicast)
    dp.verify_packet(other_multicast, "a2:eth0")


def test_mac_flood_is_held_by_the_per_port_limit(vnet_lab: Lab) -> None:
    """Blue keeps entries for 300 s, so no entry ages out during the flood, however long the
    machine takes to send it: what holds the flood is the limit alone."""
    dp = vnet_lab.dataplane
    learn(dp, "a2:eth0", M2)                      # a victim station learned first
    flood = [bytes(udp(f"02:66:00:00:{i >> 8:02x}:{i & 0xff:02x}", BCAST))
             for i in range(2000)]
    for frame in flood:
        dp.send("a1:eth0", frame)
    flooded_to = ["a2:eth0", "t1:eth0", "t2:eth0"]

    def copies() -> list[int]:
        return [arrived(dp, p, b"\x02\x66") for p in flooded_to]

    wait_until(lambda: min(copies()) >= len(flood),
               message=lambda: f"all {len(flood)} flood frames at each of "
                               f"{', '.join(flooded_to)}; there arrived {copies()}")
    dp.flush()                                    # every copy is in: none can come later
    learned_on_a1 = [e for e in vnet_lab.fdb() if e["port"] == "a1.eth0"]
    assert len(learned_on_a1) == 64              # blue's mac_limit, and not one more
    assert vnet_lab.counters("a1:eth0")["learn_limited"] == len(flood) - 64
    victim = udp(M1, M2)
    dp.send("t2:eth0", victim)                    # the victim's entry survived the flood
    dp.verify_packet(victim, "a2:eth0")
    dp.verify_no_other_packets()


def test_ping_within_a_vlan_and_not_across(vnet_lab: Lab) -> None:
    assert vnet_lab.exec("a1", ["ping", "-c", "2", "-W", "1", "10.1.0.2"]).returncode == 0
    # b1 has an address in the same subnet but sits in another VLAN: unreachable.
    assert vnet_lab.exec("a1", ["ping", "-c", "2", "-W", "1", "10.1.0.3"]).returncode != 0


def test_counters_count_frames_and_bytes(vnet_lab: Lab) -> None:
    dp = vnet_lab.dataplane
    frame = udp(M1, BCAST, b"x" * 100)
    dp.send("a1:eth0", frame, count=5)
    dp.verify_packet(frame, "a2:eth0")
    a1, a2 = switched(vnet_lab, "a1:eth0", 5), vnet_lab.counters("a2:eth0")
    assert a1["rx_frames"] == 5 and a1["rx_bytes"] == 5 * len(frame)
    assert a2["tx_frames"] == 5 and a2["tx_bytes"] == 5 * len(frame)
    assert vnet_lab.counters("t1:eth0")["tx_bytes"] == 5 * (len(frame) + 4)  # tagged egress


def test_arp_and_icmp_through_the_trunk_are_tagged(vnet_lab: Lab) -> None:
    """A node behind a trunk talks to an access node with tagged frames it builds itself."""
    dp = vnet_lab.dataplane
    t1_mac = "02:00:00:00:09:01"
    a1_mac = next(n["nics"][0]["mac"] for n in vnet_lab.status()["nodes"] if n["name"] == "a1")
    dp.send("t1:eth0", Ether(src=t1_mac, dst=BCAST) / Dot1Q(vlan=10) / ARP(
        op=1, hwsrc=t1_mac, psrc="10.1.0.9", pdst="10.1.0.1"))
    reply = dp.receive("t1:eth0", lambda p: p.haslayer(ARP) and p[ARP].op == 2)
    assert reply[Dot1Q].vlan == 10 and reply[ARP].hwsrc == a1_mac
    dp.send("t1:eth0", Ether(src=t1_mac, dst=a1_mac) / Dot1Q(vlan=10) / IP(
        src="10.1.0.9", dst="10.1.0.1") / ICMP(id=7))
    echo = dp.receive("t1:eth0", lambda p: p.haslayer(ICMP) and p[ICMP].type == 0)
    assert echo[Dot1Q].vlan == 10 and echo[IP].src == "10.1.0.1"
