"""PACKET_MMAP rings for the datapath: a TPACKET_V2 receive ring and a TPACKET_V2 send ring.

Why these and not others (measured, see docs/benchmarks.md):

* **Receive: TPACKET_V2, not V3.**  A V3 ring hands frames over a block at a time, and a
  block is only handed over when full or when its retire timer (1 ms at least) fires, which
  would add up to a millisecond to every round trip through an idle switch.  A V2 ring wakes
  the reader per frame and still lets it take every frame that arrived since in one go, with
  no system call per frame.  Its slots have a fixed size; a frame larger than a slot (a GSO
  super-frame of up to 64 KiB) is marked ``TP_STATUS_COPY`` and its full copy waits on the
  socket's ordinary receive queue (``PACKET_COPY_THRESH``), in order.
* **Send: a TX ring** on a second socket bound to the same netdev: frames are written into
  slots and one ``send()`` per batch hands them all to the kernel.  A socket with a TX ring
  sends only through it, so frames larger than a slot go out through the receive socket, after
  the ring is flushed, which keeps the order.

Both sockets use ``PACKET_VNET_HDR``: in the receive ring the kernel writes the 10-byte
``virtio_net_hdr`` right before the frame, and in the send ring it is expected before the frame.
The outer 802.1Q tag comes back in ``tp_vlan_tci`` with ``TP_STATUS_VLAN_VALID``.
"""

from __future__ import annotations

import fcntl
import mmap
import socket
import struct

from vnet.host.afpacket import (
    ETH_P_ALL,
    PACKET_ADD_MEMBERSHIP,
    PACKET_AUXDATA,
    PACKET_IGNORE_OUTGOING,
    PACKET_MR_PROMISC,
    PACKET_VNET_HDR,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SOL_PACKET,
)

SIOCGIFINDEX = 0x8933
PACKET_RX_RING = 5
PACKET_COPY_THRESH = 7
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_COPY = 2
TP_STATUS_LOSING = 4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_WRONG_FORMAT = 4

# struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid, pad[4]
RX_HDR = struct.Struct("=IIIHHIIHH4x")
STATUS = struct.Struct("=I")
TX_HDR = struct.Struct("=III")  # status, len, snaplen
TX_DATA_OFFSET = 32              # TPACKET_ALIGN(sizeof(struct tpacket2_hdr))
_REQ = struct.Struct("=IIII")    # struct tpacket_req: block_size, block_nr, frame_size, frame_nr
VNET_HDR_LEN = 10

RX_FRAME_SIZE = 2048   # a full-size Ethernet frame with its headers fits; larger ones are copied
RX_FRAMES = 2048       # 4 MiB, as the plain socket's receive buffer
TX_FRAME_SIZE = 2048
TX_FRAMES = 512
BLOCK_SIZE = 1 << 16


def _ring_request(frame_size: int, frames: int) -> bytes:
    per_block = BLOCK_SIZE // frame_size
    blocks = (frames + per_block - 1) // per_block
    return _REQ.pack(BLOCK_SIZE, blocks, frame_size, blocks * per_block)


class PacketRing:
    """Packet sockets on one netdev: ``rx`` (receive ring, promiscuous) and ``tx`` (send ring).

    The receive ring is read in place by the caller (see ``vnet.datapath.engine``): slot
    ``index`` is ``rx_map[index * rx_frame_size:]``; it belongs to the reader while its status
    has ``TP_STATUS_USER`` and goes back to the kernel when the reader writes 0.
    """

    def __init__(self, ifname: str, rx_frames: int = RX_FRAMES, tx_frames: int = TX_FRAMES,
                 promiscuous: bool = True, rcvbuf: int = 4 << 20) -> None:
        self.ifname = ifname
        self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.rx_map: mmap.mmap | None = None
        self.tx_map: mmap.mmap | None = None
        try:
            ifindex = _ifindex(self.rx, ifname)
            rx = self.rx
            rx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            rx.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            rx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            rx.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
            _force(rx, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
            _force(rx, SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20)
            req = _ring_request(RX_FRAME_SIZE, rx_frames)
            rx.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            _bs, blocks, self.rx_frame_size, self.rx_frames = _REQ.unpack(req)
            self.rx_map = mmap.mmap(rx.fileno(), BLOCK_SIZE * blocks)
            rx.bind((ifname, ETH_P_ALL))
            if promiscuous:
                mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
                rx.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            rx.setblocking(False)

            tx = self.tx
            tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            tx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            tx.setsockopt(SOL_PACKET, PACKET_LOSS, 1)  # skip a malformed slot, do not stall
            _force(tx, SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20)
            req = _ring_request(TX_FRAME_SIZE, tx_frames)
            tx.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
            _bs, blocks, self.tx_frame_size, self.tx_frames = _REQ.unpack(req)
            self.tx_map = mmap.mmap(tx.fileno(), BLOCK_SIZE * blocks)
            tx.bind((ifname, 0))
            tx.setblocking(False)
        except BaseException:
            self.close()
            raise
        self.rx_index = 0
        self.tx_index = 0
        self.tx_pending = 0       # frames written to the TX ring since the last flush
        self.tx_max = self.tx_frame_size - TX_DATA_OFFSET
        self.flush_deferred = 0
        self.rx_idle_wakes = 0    # consecutive wake-ups that found nothing at rx_index
        self.flush_errors = 0

    def oldest_ready(self) -> int | None:
        """The slot of the oldest frame waiting for the reader (by kernel timestamp), if any."""
        m = self.rx_map
        assert m is not None
        best: tuple[int, int] | None = None
        slot = None
        for i in range(self.rx_frames):
            status, _l, _s, _m, _n, sec, nsec, _t, _p = RX_HDR.unpack_from(
                m, i * self.rx_frame_size)
            if status & TP_STATUS_USER and (best is None or (sec, nsec) < best):
                best, slot = (sec, nsec), i
        return slot

    def fileno(self) -> int:
        return self.rx.fileno()

    def flush(self) -> None:
        """Hand every frame written to the TX ring to the kernel (one system call)."""
        self.tx_pending = 0
        try:
            self.tx.send(b"")
        except (BlockingIOError, InterruptedError):
            self.flush_deferred += 1  # the kernel takes the rest on the next flush
        except OSError:
            self.flush_errors += 1    # the netdev is down or gone; vnetd removes the port

    def close(self) -> None:
        for m in (self.rx_map, self.tx_map):
            if m is not None:
                m.close()
        self.rx_map = self.tx_map = None
        self.rx.close()
        self.tx.close()


def _ifindex(sock: socket.socket, ifname: str) -> int:
    """The netdev's index in the socket's namespace (SIOCGIFINDEX: PyPy's socket module has
    no ``if_nametoindex``)."""
    ifreq = struct.pack("16si12x", ifname.encode(), 0)
    return int(struct.unpack_from("16si", fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, ifreq))[1])


def _force(sock: socket.socket, force_opt: int, opt: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)
