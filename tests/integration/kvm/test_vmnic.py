"""The NIC benchmark's far ends on a TAP of the test's own namespace: the tiny guest's send and
sink modes through virtio-net, and the kernel-only stand-in, counted from the host side.

Conditions, not times: every frame sent arrives, in order, and the sink's count is exactly
what the host wrote."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vnet.bench.nicframes import DATA, bench_frame, parse_bench
from vnet.bench.vmnic import BARE, GUEST_IP, GUEST_MAC, TAP_MAC, VIRTIO, NicWorld, query
from vnet.packet.ethernet import mac_to_bytes
from vnet.testing import wait_until

HAS_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")
PATHS = [pytest.param(VIRTIO, marks=pytest.mark.skipif(not HAS_KVM, reason="needs /dev/kvm")),
         BARE]


@pytest.fixture
def world():
    if not HAS_KVM:  # NicWorld refuses to start without KVM: the bench needs both paths
        pytest.skip("needs /dev/kvm")
    with NicWorld() as w:
        yield w


@pytest.mark.parametrize("path", PATHS)
def test_the_sender_delivers_every_frame_the_host_counts(world: NicWorld, path: str) -> None:
    frames = 5000  # many wraps of the used index's low byte: a torn index showed within 1000
    counter = world.packet_socket(0x88B5, rcvbuf=32 << 20)
    counter.settimeout(0.2)
    seen: list[int] = []
    try:
        with world.far_end(path, "send", frames) as far:
            def all_arrived() -> bool:
                far.check()
                try:
                    while len(seen) < frames:
                        frame = parse_bench(counter.recv(128))
                        assert frame is not None
                        assert (frame.dst, frame.src, frame.kind) == (
                            mac_to_bytes(TAP_MAC), mac_to_bytes(GUEST_MAC), DATA)
                        seen.append(frame.value)
                except TimeoutError:
                    pass
                return len(seen) >= frames

            wait_until(all_arrived, 60, lambda: f"{frames} frames from the {path} sender "
                       f"(have {len(seen)})")
            assert seen == list(range(1, frames + 1))
            if path == VIRTIO:
                wait_until(lambda: f"tiny guest: sent {frames} frames\n"
                           in far.console.read_text(), 30, "the guest to say it is done")
    finally:
        counter.close()


@pytest.mark.parametrize("path", PATHS)
def test_the_sink_counts_every_frame_the_host_sent_and_echoes(world: NicWorld,
                                                              path: str) -> None:
    sender, replies = world.packet_socket(0), world.packet_socket(0x88B5)
    try:
        with world.far_end(path, "sink") as far:
            assert query(sender, replies, far) == 0
            dropped = world.tap_packets()[3]  # queries sent before the far end attached
            dst, src = mac_to_bytes(GUEST_MAC), mac_to_bytes(TAP_MAC)
            for seq in range(1, 301):  # fewer than the TAP's queue holds: none dropped
                sender.send(bench_frame(dst, src, DATA, seq))
            assert query(sender, replies, far) == 300
            assert world.tap_packets()[3] == dropped  # none dropped on its way out
            assert_echoes(world)
    finally:
        sender.close()
        replies.close()


def assert_echoes(world: NicWorld) -> None:
    """The far end answers a UDP datagram to its echo port (port 7) with the same bytes."""
    udp = world.udp_socket()
    try:
        udp.settimeout(5)
        udp.sendto(b"vnet", (GUEST_IP, 7))
        assert udp.recvfrom(64)[0] == b"vnet"
    finally:
        udp.close()


def test_the_guest_without_bench_options_ignores_bench_frames(world: NicWorld) -> None:
    """Backward compatible: a guest not in sink mode drops the frames (and answers nothing)."""
    sender, replies = world.packet_socket(0), world.packet_socket(0x88B5)
    try:
        with world.far_end(VIRTIO, "plain") as far:
            wait_until(lambda: " up\n" in (far.console.read_text() if far.console.exists()
                                           else ""), 60, "the guest to come up")
            assert "sink" not in far.console.read_text()
            sender.send(bench_frame(mac_to_bytes(GUEST_MAC), mac_to_bytes(TAP_MAC), ord("Q")))
            assert_echoes(world)  # an echo, after the query: the guest has seen it
            replies.settimeout(0.2)
            with pytest.raises(TimeoutError):
                replies.recv(128)
    finally:
        sender.close()
        replies.close()


@pytest.mark.skipif(not HAS_KVM, reason="needs /dev/kvm")
def test_the_bench_reports_both_paths() -> None:
    result = subprocess.run([sys.executable, "-m", "vnet.bench.vmnic", "--repeat", "1",
                             "--seconds", "0.3"], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "virtio-net    bare TAP" in result.stdout
    for row in ("guest -> host, frames/s", "host -> guest, delivered/s", "round trip p50, us"):
        assert row in result.stdout
