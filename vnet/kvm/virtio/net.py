"""virtio-net backed by a TAP: frames move between the guest's queues and the TAP's fd.

The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and its header size set to the
12 bytes of a VIRTIO_F_VERSION_1 ``virtio_net_hdr``, so a frame passes between guest buffers
and the TAP with its header unchanged.  Offloads are negotiated, not assumed: the device
offers checksum and TSO in both directions, and what the driver accepts for its receive side
(GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN) becomes the TAP's TUNSETOFFLOAD, so the kernel sends
partial-checksum or GSO frames only to a guest that said it can take them.  A NIC on a
network that spans hosts has an MTU below 1500 (the overlay's): the device then offers
VIRTIO_NET_F_MTU with it in its config space, so a guest driver that honours it (Linux's
virtio_net does) sends no frame too big for the overlay.
"""

from __future__ import annotations

import fcntl
import os
import struct

from vnet.kvm.virtio.mmio import MmioTransport
from vnet.packet.ethernet import mac_to_bytes

DEVICE_ID = 1
F_CSUM, F_GUEST_CSUM, F_MTU, F_MAC = 1 << 0, 1 << 1, 1 << 3, 1 << 5
F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN = 1 << 7, 1 << 8, 1 << 9
F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN = 1 << 11, 1 << 12, 1 << 13
OFFERED = (F_CSUM | F_GUEST_CSUM | F_MAC | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN
           | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN)
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
NET_HDR_LEN = 12
RX, TX = 0, 1
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
MAX_FRAME = 65536 + NET_HDR_LEN


def tun_offloads(features: int) -> int:
    """TUNSETOFFLOAD flags for what the driver accepted on its receive side.  TSO needs
    checksum offload, as the kernel requires."""
    if not features & F_GUEST_CSUM:
        return 0
    flags = TUN_F_CSUM
    if features & F_GUEST_TSO4:
        flags |= TUN_F_TSO4
    if features & F_GUEST_TSO6:
        flags |= TUN_F_TSO6
    if features & F_GUEST_ECN and flags & (TUN_F_TSO4 | TUN_F_TSO6):
        flags |= TUN_F_TSO_ECN
    return flags


def open_tap(name: str) -> int:
    """Attach to the (persistent) TAP ``name``; non-blocking fd with 12-byte vnet headers."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", NET_HDR_LEN))
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


class VirtioNet:
    device_id = DEVICE_ID
    features = OFFERED
    num_queues = 2

    def __init__(self, tap_fd: int, mac: str, mtu: int | None = None) -> None:
        self.tap_fd = tap_fd
        self.mac = mac_to_bytes(mac)
        self.mtu = mtu
        if mtu is not None:
            self.features = OFFERED | F_MTU
        self.pending_rx: bytes | None = None  # a frame read from the TAP, waiting for a buffer
        # Counters (frames and bytes without the virtio-net header), written on the device
        # thread, read by the control socket's status.
        self.stats = {"rx_frames": 0, "rx_bytes": 0, "rx_drops": 0,
                      "tx_frames": 0, "tx_bytes": 0, "tx_drops": 0}

    def config(self) -> bytes:
        """``virtio_net_config``: mac, status (link up), max_virtqueue_pairs (1), and the
        mtu where it is offered (the fields sit at fixed offsets)."""
        if self.mtu is None:
            return self.mac + struct.pack("<H", 1)
        return self.mac + struct.pack("<HHH", 1, 1, self.mtu)

    def negotiated(self, features: int) -> None:
        self.offloads = tun_offloads(features)
        fcntl.ioctl(self.tap_fd, TUNSETOFFLOAD, self.offloads)

    def notify(self, transport: MmioTransport, queue: int) -> None:
        if queue == TX:
            self.transmit(transport)
        else:
            self.receive(transport)

    def transmit(self, transport: MmioTransport) -> None:
        q = transport.queue(TX)
        while q is not None and (chain := q.pop()) is not None:
            head, buffers = chain
            data = q.read(buffers)
            if len(data) > NET_HDR_LEN:
                try:
                    os.write(self.tap_fd, data)
                    self.stats["tx_frames"] += 1
                    self.stats["tx_bytes"] += len(data) - NET_HDR_LEN
                except OSError:
                    self.stats["tx_drops"] += 1  # the TAP's netdev is down: lost, as on a wire
            q.push_used(head, 0)

    def receive(self, transport: MmioTransport) -> None:
        """Move frames from the TAP into the guest's receive buffers while both have some."""
        q = transport.queue(RX)
        while q is not None and transport.driver_ok:
            if self.pending_rx is None:
                try:
                    self.pending_rx = os.read(self.tap_fd, MAX_FRAME)
                except BlockingIOError:
                    return
            chain = q.pop()
            if chain is None:
                return  # no buffer: keep the frame until the guest posts one
            head, buffers = chain
            written = q.write(buffers, self.pending_rx)
            if written < len(self.pending_rx):
                self.stats["rx_drops"] += 1  # the guest's buffer was too small
            else:
                self.stats["rx_frames"] += 1
                self.stats["rx_bytes"] += written - NET_HDR_LEN
            q.push_used(head, written)
            self.pending_rx = None
