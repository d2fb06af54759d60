"""A switch port's packet socket receives its own netdev's frames and nothing else, from the
first frame on; and a lab's node ports learn only their nodes' MACs.

Before, the sockets were created with protocol ETH_P_ALL and bound to their netdev after:
in between they received every netdev's frames, so a port opened while another interface
was busy started with that interface's frames, and the switch learned a stranger's MAC on
it (issue 10: a second MAC on alice.eth0 in the demo, older than every other entry).
"""

from __future__ import annotations

import ctypes
import secrets
import select
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.integration.test_networks import External
from vnet.host import afpacket, netns
from vnet.host.ring import RX_HDR, TP_STATUS_USER, PacketRing
from vnet.testing import TestHost, wait_until

pytestmark = needs_root
NOISE_MAC = bytes.fromhex("02000000aa01")
NOISE = bytes.fromhex("ffffffffffff") + NOISE_MAC + bytes.fromhex("88b5") + bytes(50)
OPENS = 100


@contextmanager
def noisy(ns: str, ifname: str) -> Iterator[threading.Event]:
    """Send NOISE out of ``ifname`` in ``ns`` as fast as possible until the block ends."""
    stop = threading.Event()
    with netns.entered(ns):
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sender.bind((ifname, 0))

    def run() -> None:
        while not stop.is_set():
            try:
                sender.send(NOISE)
            except OSError:  # a full queue (wait until it drains), or the link went away
                select.select([], [sender], [], 0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join()
        sender.close()


@pytest.fixture
def quiet_and_busy() -> Iterator[str]:
    """A namespace with a quiet veth pair q0/q1 and a busy one p0/p1 (noise from p1)."""
    name = f"vnt-sock-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        with netns.open_iproute(name) as ipr:
            ipr.link("add", ifname="p0", kind="veth", peer={"ifname": "p1"})
            ipr.link("add", ifname="q0", kind="veth", peer={"ifname": "q1"})
            for ifname in ("p0", "p1", "q0", "q1"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        yield name
    finally:
        netns.remove(name)


def wait_until_noise_arrives(ns: str) -> None:
    """The noise is flowing: a socket on p0 (where it arrives) receives it."""
    sock = afpacket.open_packet_socket("p0", afpacket.PacketOptions(vnet_hdr=False), ns)
    def noise_seen() -> bool:
        while select.select([sock], [], [], 0.05)[0]:
            if afpacket.recv_frame(sock, vnet_hdr=False)[1][6:12] == NOISE_MAC:
                return True
        return False

    try:
        wait_until(noise_seen, 10, "the noise to arrive on p0")
    finally:
        sock.close()


def strays_on_socket(ns: str) -> int:
    sock = afpacket.open_packet_socket("q0", afpacket.PacketOptions(), ns)
    strays = 0
    try:
        while True:
            strays += afpacket.recv_frame(sock)[1][6:12] == NOISE_MAC
    except BlockingIOError:
        return strays
    finally:
        sock.close()


def strays_in_ring(ns: str) -> int:
    with netns.entered(ns):
        ring = PacketRing("q0", rx_frames=64, tx_frames=16)
    strays = 0
    try:
        assert ring.rx_map is not None
        for index in range(ring.rx_frames):
            slot = index * ring.rx_frame_size
            status, _len, _snap, mac, *_ = RX_HDR.unpack_from(ring.rx_map, slot)
            if not status & TP_STATUS_USER:
                break
            strays += ring.rx_map[slot + mac + 6:slot + mac + 12] == NOISE_MAC
    finally:
        ring.close()
    return strays


@pytest.mark.parametrize("opener", [strays_on_socket, strays_in_ring],
                         ids=["socket", "ring"])
def test_a_port_never_receives_another_netdevs_frames(quiet_and_busy: str, opener) -> None:
    """q0 is silent, so every frame its port receives came from another netdev.  The noise
    on p0 runs all the while: before the fix, 100 opens caught hundreds of its frames."""
    with noisy(quiet_and_busy, "p1"):
        wait_until_noise_arrives(quiet_and_busy)
        strays = sum(opener(quiet_and_busy) for _ in range(OPENS))
    assert strays == 0, f"{strays} frames of p0 arrived on q0's port"


TOPOLOGY = """\
name: firstmac
networks:
  red: {vlan: 10}
  lan: {vlan: 40, mode: bridged, uplink: eth2}
nodes:
  alice:   {kind: netns, nics: [{name: eth0, network: red, ip: 10.0.10.11/24}]}
  bob:     {kind: netns, nics: [{name: eth0, network: red, ip: 10.0.10.12/24}]}
  carol:   {kind: netns, nics: [{name: eth0, network: red, ip: 10.0.10.13/24}]}
  printer: {kind: netns, nics: [{name: eth0, network: lan, ip: 198.51.100.10/24}]}
"""


SO_ATTACH_FILTER = 26


class _Bpf:
    """A classic BPF program that drops frames from NOISE_MAC (so the capture keeps up)."""

    def __init__(self) -> None:
        ld_w, ld_h, jeq, ret = 0x20, 0x28, 0x15, 0x06  # BPF_LD|W|ABS, BPF_LD|H|ABS, ...
        code = [(ld_w, 0, 0, 6), (jeq, 0, 2, int.from_bytes(NOISE_MAC[:4], "big")),
                (ld_h, 0, 0, 10), (jeq, 1, 0, int.from_bytes(NOISE_MAC[4:], "big")),
                (ret, 0, 0, 0x40000), (ret, 0, 0, 0)]
        self.instructions = ctypes.create_string_buffer(
            b"".join(struct.pack("HBBI", *i) for i in code))
        self.program = struct.pack("HL", len(code), ctypes.addressof(self.instructions))


NOT_FROM_NOISE = _Bpf()


def capture_everything(ns: str, stop: threading.Event, frames: list[tuple[str, int, bytes]]
                       ) -> threading.Thread:
    """Every frame of every netdev of ``ns`` (an unbound ETH_P_ALL socket) until ``stop``:
    (ifname, packet type, frame)."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, NOT_FROM_NOISE.program)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.settimeout(0.1)

    def run() -> None:
        with sock:
            while not stop.is_set():
                try:
                    frame, address = sock.recvfrom(65536)
                except TimeoutError:
                    continue
                frames.append((address[0], address[2], frame))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_node_ports_learn_only_their_nodes_macs_while_the_lan_is_busy(tmp_path: Path) -> None:
    """The LAN behind the uplink floods while the lab comes up (as the demo's LAN and
    Internet send IPv6 noise): no node port may learn a MAC that is not its node's.  And a
    capture of every netdev of the host from before `up` shows that no frame ever came out
    of a node NIC with a MAC other than the one declared (MAC set before the link is up)."""
    topology = tmp_path / "firstmac.yaml"
    topology.write_text(TOPOLOGY)
    with TestHost() as host:
        lan = External(host, "eth2", "198.51.100.1/24")
        try:
            stop_capture = threading.Event()
            frames: list[tuple[str, int, bytes]] = []
            capture = capture_everything(host.name, stop_capture, frames)
            with noisy(lan.name, "eth0"):
                lab = host.up(topology)
            for node, peer in (("alice", "10.0.10.12"), ("alice", "10.0.10.13"),
                               ("printer", "198.51.100.1")):
                assert lab.exec(node, ["ping", "-c", "1", "-W", "2", peer]).returncode == 0
            stop_capture.set()
            capture.join()
            status = lab.status()
            declared = {f"{n['name']}.{nic['name']}": nic["mac"] for n in status["nodes"]
                        for nic in n["nics"]}
            learned = [(e["port"], e["mac"]) for e in lab.fdb()]
            assert ("@uplink.eth2", "02:00:00:00:aa:01") in learned    # the noise was seen
            strangers = [(port, mac) for port, mac in learned
                         if not port.startswith("@") and mac != declared[port]]
            assert strangers == [], f"node ports learned MACs not their nodes': {strangers}"

            ifname_of = {nic["ifname"]: (nic["mac"], f"{n['name']}.{nic['name']}")
                         for n in status["nodes"] for nic in n["nics"]}
            sent: dict[str, set[str]] = {port: set() for _, port in ifname_of.values()}
            for ifname, packet_type, frame in frames:
                if ifname in ifname_of and packet_type != socket.PACKET_OUTGOING:
                    sent[ifname_of[ifname][1]].add(frame[6:12].hex(":"))
            assert all(sent.values()), sent  # every node spoke (ARP, ping)
            assert {port: macs for port, macs in sent.items()} == {
                port: {mac} for mac, port in ifname_of.values()}
        finally:
            lan.close()
