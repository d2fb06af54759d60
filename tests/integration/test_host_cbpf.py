"""vnet.host.cbpf's programs in the kernel: as a packet socket's filter and in tc cls_bpf.

A namespace of our own with veth pairs v0/v1 and v2/v3; frames are sent into v1 from a packet
socket and arrive on v0.  The kernel handles a frame sent from a packet socket in the sender's
system call, in order, so a marker frame sent last fences each check: once it is received,
every frame sent before it that was going to be received has been.
"""

from __future__ import annotations

import secrets
import select
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest

from tests.conftest import needs_root
from vnet.errors import HostError
from vnet.host import afpacket, cbpf, netns
from vnet.host.ring import RX_HDR, TP_STATUS_USER, PacketRing

pytestmark = [needs_root, pytest.mark.root]

ETHERTYPE = b"\x88\xb5"  # local experimental
DEADLINE = 5.0
NO_IPV6 = [("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")]


def mac(n: int, host: int) -> bytes:
    return bytes([2, 0, 0, 0xCB, host, n])


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"vnh-cbpf-{secrets.token_hex(3)}"
    netns.create(name, NO_IPV6)
    try:
        with netns.open_iproute(name) as ipr:
            for a, b in (("v0", "v1"), ("v2", "v3")):
                ipr.link("add", ifname=a, kind="veth", peer={"ifname": b})
            for ifname in ("v0", "v1", "v2", "v3"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        yield name
    finally:
        netns.remove(name)


def receiver(ns: str, ifname: str) -> socket.socket:
    return afpacket.open_packet_socket(ifname, afpacket.PacketOptions(vnet_hdr=False), ns)


class Sender:
    """Numbered frames into ``v1``, tagged (an in-band 802.1Q tag) or not."""

    def __init__(self, ns: str) -> None:
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind(("v1", 0))
        self.token = secrets.token_bytes(8)
        self.sent = 0

    def send(self, src: bytes, dst: bytes, tagged: bool = False) -> int:
        n, self.sent = self.sent, self.sent + 1
        tag = b"\x81\x00\x00\x0a" if tagged else b""
        self.sock.send(dst + src + tag + ETHERTYPE + self.token + n.to_bytes(2, "big")
                       + bytes(40))
        return n

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sender(ns: str) -> Iterator[Sender]:
    s = Sender(ns)
    try:
        yield s
    finally:
        s.close()


def received_until(sock: socket.socket, token: bytes, marker: int) -> set[int]:
    """The numbers of ``token``'s frames received on ``sock`` up to ``marker``'s."""
    seen: set[int] = set()
    deadline = time.monotonic() + DEADLINE
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"marker frame {marker} not received; got {sorted(seen)}")
        select.select([sock], [], [], left)
        while True:
            try:
                _hdr, frame, _tci = afpacket.recv_frame(sock, vnet_hdr=False)
            except BlockingIOError:
                break
            at = frame.find(token)
            if at >= 0:
                seen.add(int.from_bytes(frame[at + 8:at + 10], "big"))
    return seen


def send_mix(sender: Sender, pairs: Sequence[tuple[bytes, bytes]]) -> tuple[set[int], int]:
    """Frames of listed pairs (untagged, tagged), of crossed and unlisted pairs, then a
    marker (unlisted); returns the numbers a ``reject_flows(pairs)`` filter keeps, and the
    marker's."""
    kept: set[int] = set()
    for i, (src, dst) in enumerate(pairs):
        sender.send(src, dst)
        kept.add(sender.send(src, dst, tagged=True))
        kept.add(sender.send(dst, src))
        kept.add(sender.send(src, pairs[(i + 1) % len(pairs)][1]) if len(pairs) > 1 else
                 sender.send(src, mac(0, 0xEE)))
    kept.add(sender.send(mac(1, 0xEE), mac(2, 0xEE)))
    marker = sender.send(mac(3, 0xEE), mac(4, 0xEE))
    return kept | {marker}, marker


def test_a_filter_of_max_pairs_drops_exactly_their_untagged_frames(
        ns: str, sender: Sender) -> None:
    """48 pairs attach with this machine's default optmem_max; after detaching, all pass."""
    pairs = [(mac(n, 1), mac(n, 2)) for n in range(cbpf.MAX_PAIRS)]
    sock = receiver(ns, "v0")
    with sock:
        cbpf.attach_filter(sock, cbpf.reject_flows(pairs))
        kept, marker = send_mix(sender, pairs)
        assert received_until(sock, sender.token, marker) == kept
        cbpf.attach_filter(sock, cbpf.reject_flows(pairs))  # replacing one as large fits
        cbpf.detach_filter(sock)
        cbpf.detach_filter(sock)  # none attached: no error
        first = sender.sent
        _kept, marker = send_mix(sender, pairs)
        assert received_until(sock, sender.token, marker) == set(range(first, sender.sent))


def ring_received_until(ring: PacketRing, token: bytes, marker: int) -> set[int]:
    """``received_until`` for a receive ring (slots are looked at, never given back)."""
    assert ring.rx_map is not None
    seen: set[int] = set()
    deadline = time.monotonic() + DEADLINE
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"marker frame {marker} not in the ring; got {sorted(seen)}")
        select.select([ring.rx], [], [], left)
        for index in range(ring.rx_frames):
            slot = index * ring.rx_frame_size
            status, _len, snap, at_mac, *_ = RX_HDR.unpack_from(ring.rx_map, slot)
            frame = ring.rx_map[slot + at_mac:slot + at_mac + snap]
            if status & TP_STATUS_USER and (at := frame.find(token)) >= 0:
                seen.add(int.from_bytes(frame[at + 8:at + 10], "big"))
    return seen


def test_a_receive_ring_gets_what_the_filter_keeps(ns: str, sender: Sender) -> None:
    """The datapath's PACKET_MMAP receive ring is filtered as a plain socket is."""
    pairs = [(mac(n, 1), mac(n, 2)) for n in range(cbpf.MAX_PAIRS)]
    with netns.entered(ns):
        ring = PacketRing("v0", rx_frames=256, tx_frames=16)
    try:
        cbpf.attach_filter(ring.rx, cbpf.reject_flows(pairs))
        kept, marker = send_mix(sender, pairs)
        assert ring_received_until(ring, sender.token, marker) == kept
    finally:
        ring.close()


def test_the_classifier_as_a_socket_filter_keeps_its_pair_alone(
        ns: str, sender: Sender) -> None:
    src, dst = mac(1, 1), mac(1, 2)
    sock = receiver(ns, "v0")
    with sock:
        cbpf.attach_filter(sock, cbpf.flow_classifier(src, dst))
        wanted = {sender.send(src, dst)}
        sender.send(src, dst, tagged=True)
        sender.send(dst, src)
        sender.send(src, mac(2, 2))
        sender.send(mac(2, 1), dst)
        wanted.add(marker := sender.send(src, dst))
        assert received_until(sock, sender.token, marker) == wanted


def tc(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "tc", *args], check=True, capture_output=True)


def bytecode(program: Sequence[cbpf.Insn]) -> str:
    """tc's ``bytecode`` argument: the count, then ``code jt jf k`` each, comma-separated."""
    return ",".join([str(len(program))] + [f"{i.code} {i.jt} {i.jf} {i.k}" for i in program])


def test_tc_redirects_the_flow_the_socket_filter_rejects(ns: str, sender: Sender) -> None:
    """The kernel-flow design end to end: on v0's ingress cls_bpf (classic) matches the pair
    and mirred redirects it out of v2 (to v3); v0's packet socket, which sees frames before
    tc does, rejects the pair with ``reject_flows``; every frame reaches exactly one."""
    src, dst = mac(1, 1), mac(1, 2)
    tc(ns, "qdisc", "add", "dev", "v0", "clsact")
    tc(ns, "filter", "add", "dev", "v0", "ingress", "bpf", "bytecode",
       bytecode(cbpf.flow_classifier(src, dst)), "action", "mirred", "egress", "redirect",
       "dev", "v2")
    at_v0, at_v3 = receiver(ns, "v0"), receiver(ns, "v3")
    with at_v0, at_v3:
        cbpf.attach_filter(at_v0, cbpf.reject_flows([(src, dst)]))
        redirected = {sender.send(src, dst) for _ in range(3)}
        kept = {sender.send(src, dst, tagged=True), sender.send(dst, src),
                sender.send(src, mac(2, 2))}
        redirected.add(last_redirected := sender.send(src, dst))
        kept.add(last_kept := sender.send(mac(2, 1), dst))
        assert received_until(at_v3, sender.token, last_redirected) == redirected
        assert received_until(at_v0, sender.token, last_kept) == kept


def test_a_filter_over_optmem_max_is_a_host_error_that_says_so(ns: str) -> None:
    try:  # a namespace has its own where it is per namespace (Linux 6.9 on), else none
        netns.write_sysctl(ns, "net.core.optmem_max", "4096")
    except FileNotFoundError:
        pytest.skip("net.core.optmem_max is not per network namespace on this kernel")
    sock = receiver(ns, "v0")
    pairs = [(mac(n, 1), mac(n, 2)) for n in range(cbpf.MAX_PAIRS)]
    with sock, pytest.raises(HostError, match=r"436 instructions.*optmem_max may be too small"):
        cbpf.attach_filter(sock, cbpf.reject_flows(pairs))
