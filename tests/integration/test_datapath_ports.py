"""The datapath's port classes on real netdevs: a veth pair in a namespace of the test's own,
one end a ``RingPort`` or ``SocketPort``, the other a plain packet socket.

What the loop relies on: ``drain`` gives ``(vnet_hdr, frame, tci)`` with the outer tag the
kernel took off in ``tci``; ``emit`` + ``flush`` sends, keeping the order of frames too big
for a ring slot (they go out through the plain socket) among the others.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from vnet.datapath.ports import PORT_TYPES, Port, RingPort, Schedule
from vnet.host import afpacket, netns
from vnet.packet import VNET_HDR_LEN, insert_tag
from vnet.switch import PortConfig
from vnet.testing import wait_until

pytestmark = [needs_root, pytest.mark.root]

ETHERTYPE = b"\x88\xb5"  # IEEE local experimental: nothing else in the namespace sends it
SRC, DST = bytes.fromhex("02aa00000001"), bytes.fromhex("02aa00000002")
NO_HDR = bytes(VNET_HDR_LEN)
ROOT = Path(__file__).resolve().parents[2]


def frame(payload: bytes) -> bytes:
    return DST + SRC + ETHERTYPE + payload


@pytest.fixture
def veth() -> Iterator[str]:
    """A namespace holding the veth pair p0 (the port) <-> p1 (the test's end), MTU 9000."""
    name = f"vdp{os.getpid() % 100000}"
    netns.create(name)
    try:
        def ip(*args: str) -> None:
            subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                        "net.ipv6.conf.all.disable_ipv6=1"], check=True)
        ip("link", "add", "p0", "mtu", "9000", "type", "veth", "peer", "name", "p1", "mtu",
           "9000")
        ip("link", "set", "p0", "up")
        ip("link", "set", "p1", "up")
        yield name
    finally:
        netns.remove(name)


Received = list[tuple[bytes, bytes, "int | None"]]


def open_port(kind: str, ns: str, everything: bool = False) -> tuple[Port, Received]:
    """The port, and the list its test frames (or ``everything``) are delivered to."""
    received: Received = []

    def deliver(hdr: bytes, frame: bytes, tci: int | None, now: float) -> None:
        if everything or frame[12:14] == ETHERTYPE:
            received.append((hdr, frame, tci))

    config = PortConfig(1, "p0", "access", vlan=10)
    with netns.entered(ns):
        return PORT_TYPES[kind](1, config, "p0", Schedule(), deliver), received


def drain_until(port: Port, received: Received, count: int, timeout: float = 10.0
                ) -> Received:
    deadline = time.monotonic() + timeout
    while len(received) < count:
        assert time.monotonic() < deadline, f"only {len(received)} of {count} frames arrived"
        select.select([port.fileno()], [], [], 0.05)
        port.drain(time.monotonic(), 64)
    return received


def receive_until(sock: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} frames arrived"
        select.select([sock], [], [], 0.05)
        try:
            _hdr, data, _tci = afpacket.recv_frame(sock, vnet_hdr=False)
        except BlockingIOError:
            continue
        if data[12:14] == ETHERTYPE:
            got.append(data)
    return got


@pytest.mark.parametrize("kind", ["ring", "socket"])
def test_a_port_drains_frames_with_their_tag_and_emits_in_order(kind: str, veth: str) -> None:
    port, received = open_port(kind, veth)
    peer = afpacket.open_packet_socket("p1", afpacket.PacketOptions(vnet_hdr=False), veth)
    try:
        plain, tagged = frame(b"plain" * 20), frame(b"tagged" * 20)
        peer.send(plain)
        peer.send(insert_tag(tagged, 3 << 13 | 10))
        (hdr1, got1, tci1), (hdr2, got2, tci2) = drain_until(port, received, 2)
        assert len(hdr1) == len(hdr2) == VNET_HDR_LEN
        assert (got1, tci1) == (plain, None)
        assert (got2, tci2) == (tagged, 3 << 13 | 10)  # the kernel took the tag off

        small, big = frame(b"s" * 100), frame(b"B" * 4000)  # big: more than a ring slot
        for data in (small, big, small):
            port.emit(NO_HDR, data)
        for queued in port.schedule.dirty:
            queued.flush()
        assert receive_until(peer, 3) == [small, big, small]
        stats = port.stats({"drops": {}})
        assert stats["ifname"] == "p0" and stats["tx_errors"] == {}
        assert ("ring" in stats) == (kind == "ring")
    finally:
        port.close()
        peer.close()


def test_a_ring_port_takes_a_frame_larger_than_its_slot(veth: str) -> None:
    port, received = open_port("ring", veth)
    peer = afpacket.open_packet_socket("p1", afpacket.PacketOptions(vnet_hdr=False), veth)
    try:
        assert isinstance(port, RingPort)
        big = frame(b"J" * 8000)  # copied whole through the socket (TP_STATUS_COPY)
        peer.send(big)
        peer.send(frame(b"after"))
        assert [f[1] for f in drain_until(port, received, 2)] == [big, frame(b"after")]
        assert port.stats({"drops": {}})["ring"]["rx_slots"] == port.ring.rx_frames
    finally:
        port.close()
        peer.close()


@pytest.mark.parametrize("kind", ["ring", "socket"])
def test_what_a_port_took_and_lost_adds_up_to_what_its_netdev_received(kind: str,
                                                                         veth: str) -> None:
    """A burst larger than the ring or the socket's queue, sent while the port is not
    drained, with 802.1Q and 802.1ad frames of 14-19 bytes among it: the frames delivered
    and those the kernel had no room for (``rx-ring-full``, ``rx-queue-full``) add up to the
    burst, and the netdev's own count (``netdev_rx_frames``) to the burst and the short
    frames, which the kernel drops before any packet socket and counts nowhere else."""
    port, received = open_port(kind, veth, everything=True)  # a short frame would show
    peer = afpacket.open_packet_socket("p1", afpacket.PacketOptions(vnet_hdr=False), veth)
    try:
        short = [(DST + SRC + tpid + b"\x00\x0a\x08\x00\x45")[:size]
                 for size in range(14, 20) for tpid in (b"\x81\x00", b"\x88\xa8")]
        burst = 30_000
        peer.setblocking(True)
        for data in short:
            peer.send(data)
        small = frame(b"b" * 46)
        for _ in range(burst):
            peer.send(small)

        def lost() -> int:
            drops: dict[str, int] = port.stats({"drops": {}})["drops"]
            return sum(drops.values())

        def all_accounted() -> bool:
            port.drain(time.monotonic(), 4096)
            port.maintain(time.monotonic())  # as the loop does every second
            return len(received) + lost() == burst

        wait_until(all_accounted, message=lambda: f"{len(received)} frames delivered and "
                                                  f"{lost()} lost to add up to {burst}")
        assert lost() > 0, "the burst never filled the port: nothing was tested"
        assert all(f == small for _h, f, _t in received)
        print(f"{kind}: {len(received)} delivered, {lost()} lost, of {burst}")
        assert port.stats({"drops": {}})["netdev_rx_frames"] == burst + len(short)
    finally:
        port.close()
        peer.close()


@pytest.mark.skipif(shutil.which("pypy3") is None,
                    reason="needs pypy3: apt-get install pypy3 (.ci/install does)")
@pytest.mark.parametrize("kind", ["ring", "socket"])
def test_both_port_types_open_under_pypy(kind: str, veth: str) -> None:
    """The datapath runs under PyPy, whose socket module has no ``if_nametoindex``: the
    socket port once failed there while the ring port worked."""
    script = ("import sys\n"
              "from vnet.datapath.ports import PORT_TYPES, Schedule\n"
              "from vnet.switch import PortConfig\n"
              f"port = PORT_TYPES[{kind!r}](1, PortConfig(1, 'p0', 'access', vlan=10), 'p0',"
              " Schedule(), print)\n"
              "print(port.fileno() > 0)\n")
    done = subprocess.run(["ip", "netns", "exec", veth, "pypy3", "-c", script],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_a_ring_port_delivers_a_small_frame_of_another_flow_before_super_frames(
        veth: str) -> None:
    """Frames too large for a slot (as GSO super-frames are) wait in the socket's queue; a
    small frame of another flow behind them is delivered first, one of their own flow keeps
    its place; and a turn past ``Schedule.turn_end`` stops after one large frame."""
    port, received = open_port("ring", veth)
    peer = afpacket.open_packet_socket("p1", afpacket.PacketOptions(vnet_hdr=False), veth)
    try:
        assert isinstance(port, RingPort)
        bigs = [frame(bytes([n]) * 8000) for n in range(3)]
        own = frame(b"same flow")
        other = bytes.fromhex("02aa00000003") + SRC + ETHERTYPE + b"another flow"
        for data in (*bigs, own, other):
            peer.send(data)
        wait_until(lambda: port.ring.ready_count() == 5, 10, "the five frames in the ring")
        port.schedule.turn_end = 0.0   # this turn is over after its first large frame
        port.drain(time.monotonic(), 64)
        assert [f[1] for f in received] == [other, bigs[0]]
        assert port in port.schedule.backlog
        port.schedule.turn_end = float("inf")
        port.drain(time.monotonic(), 64)
        assert [f[1] for f in received] == [other, *bigs, own]
        assert port not in port.schedule.backlog and port.ring.ready_count() == 0
        peer.send(frame(b"next"))   # the ring goes on in order after the slot given back
        assert drain_until(port, received, 6)[-1][1] == frame(b"next")
    finally:
        port.close()
        peer.close()
