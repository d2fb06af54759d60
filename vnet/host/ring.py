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
The outer VLAN tag the kernel took off comes back in ``tp_vlan_tci`` with
``TP_STATUS_VLAN_VALID``, and its TPID (0x8100 for an 802.1Q C-tag, 0x88a8 for an 802.1ad
S-tag) in ``tp_vlan_tpid`` with ``TP_STATUS_VLAN_TPID_VALID``; see ``vnet.host.afpacket``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct

from vnet.host.afpacket import (
    PACKET_VNET_HDR,
    SOL_PACKET,
    PacketOptions,
    bind_receiver,
    prepare_receiver,
    set_buffer,
    socket_counts,
    unbound_packet_socket,
)
from vnet.packet.vnethdr import VNET_HDR_LEN

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
TP_STATUS_VLAN_TPID_VALID = 0x40
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_WRONG_FORMAT = 4

# struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid, pad[4]
RX_HDR = struct.Struct("=IIIHHIIHH4x")
STATUS = struct.Struct("=I")
TX_HDR = struct.Struct("=III")  # status, len, snaplen
TX_DATA_OFFSET = 32              # TPACKET_ALIGN(sizeof(struct tpacket2_hdr))
_REQ = struct.Struct("=IIII")    # struct tpacket_req: block_size, block_nr, frame_size, frame_nr

RX_FRAME_SIZE = 2048   # a full-size Ethernet frame with its headers fits; larger ones are copied
RX_FRAMES = 2048       # 4 MiB, as the plain socket's receive buffer
TX_FRAME_SIZE = 2048
TX_FRAMES = 512
BLOCK_SIZE = 1 << 16


_libc = ctypes.CDLL(None, use_errno=True)


def set_ring(sock: socket.socket, option: int, request: bytes) -> None:
    """``setsockopt(SOL_PACKET, option, request)`` with the GIL released: setting up a ring
    waits for an RCU grace period in the kernel (~10 ms), and Python's ``setsockopt`` holds
    the GIL meanwhile, so rings opened by threads side by side would wait one after the
    other; a foreign call through ctypes lets them wait together."""
    buffer = ctypes.create_string_buffer(request, len(request))
    if _libc.setsockopt(sock.fileno(), SOL_PACKET, option, buffer, len(request)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ring_request(frame_size: int, frames: int) -> bytes:
    per_block = BLOCK_SIZE // frame_size
    blocks = (frames + per_block - 1) // per_block
    return _REQ.pack(BLOCK_SIZE, blocks, frame_size, blocks * per_block)


class PacketRing:
    """Packet sockets on one netdev: ``rx`` (receive ring, promiscuous) and ``tx`` (send ring).

    This class sets the rings up and answers questions about them; their reader and writer
    (``vnet.datapath.ports.RingPort``) keeps its own place in them and works on the maps in
    place.  Receive slot ``i`` is ``rx_map[i * rx_frame_size:]``; it belongs to the reader
    while its status has ``TP_STATUS_USER`` and goes back to the kernel when the reader
    writes 0.  Send slot ``i`` is ``tx_map[i * tx_frame_size:]``, free while its status is 0;
    ``flush`` hands the slots marked ``TP_STATUS_SEND_REQUEST`` to the kernel.  The frame's
    ``virtio_net_hdr`` (``VNET_HDR_LEN`` bytes) sits right before it in both.
    """

    def __init__(self, ifname: str, rx_frames: int = RX_FRAMES, tx_frames: int = TX_FRAMES,
                 promiscuous: bool = True, rcvbuf: int = 4 << 20) -> None:
        self.ifname = ifname
        self.rx = unbound_packet_socket()  # receives nothing until bound to ifname
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.rx_map: mmap.mmap | None = None
        self.tx_map: mmap.mmap | None = None
        try:
            rx = self.rx
            ifindex = prepare_receiver(rx, ifname, PacketOptions(rcvbuf=rcvbuf))
            rx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            rx.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
            req = _ring_request(RX_FRAME_SIZE, rx_frames)
            set_ring(rx, PACKET_RX_RING, req)
            _bs, blocks, self.rx_frame_size, self.rx_frames = _REQ.unpack(req)
            self.rx_map = mmap.mmap(rx.fileno(), BLOCK_SIZE * blocks)
            bind_receiver(rx, ifname, ifindex, promiscuous)

            tx = self.tx
            tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            tx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            tx.setsockopt(SOL_PACKET, PACKET_LOSS, 1)  # skip a malformed slot, do not stall
            set_buffer(tx, socket.SO_SNDBUF, 4 << 20)
            req = _ring_request(TX_FRAME_SIZE, tx_frames)
            set_ring(tx, PACKET_TX_RING, req)
            _bs, blocks, self.tx_frame_size, self.tx_frames = _REQ.unpack(req)
            self.tx_map = mmap.mmap(tx.fileno(), BLOCK_SIZE * blocks)
            tx.bind((ifname, 0))
            tx.setblocking(False)
        except BaseException:
            self.close()
            raise
        self.tx_max = self.tx_frame_size - TX_DATA_OFFSET - VNET_HDR_LEN  # largest frame
        self.flush_deferred = 0
        self.was_empty = False    # the ring was empty at the last wedge check
        self.kernel_drops = 0     # frames the kernel found no free slot for, so far
        self.flush_errors = 0

    def _statuses(self) -> list[int]:
        """Every receive slot's status word, in one pass (nonzero: the reader's)."""
        assert self.rx_map is not None
        with memoryview(self.rx_map) as whole, whole.cast("I") as words, \
                words[::self.rx_frame_size // 4] as column:
            return column.tolist()

    def ready_after(self, index: int) -> bool:
        """Whether one of the two slots after ``index`` holds a frame (cheap: no scan)."""
        m = self.rx_map
        assert m is not None
        count, size = self.rx_frames, self.rx_frame_size
        return any(STATUS.unpack_from(m, (index + step) % count * size)[0] & TP_STATUS_USER
                   for step in (1, 2))

    def next_ready(self, index: int) -> int | None:
        """The first slot after ``index``, in ring order, holding a frame for the reader."""
        statuses = self._statuses()
        count: int = self.rx_frames
        for step in range(1, count):
            slot = (index + step) % count
            if statuses[slot] & TP_STATUS_USER:
                return slot
        return None

    def kernel_counts(self) -> tuple[int, int]:
        """Frames the kernel saw and dropped on this ring since the last call (clear on read);
        the drops also add up in ``kernel_drops``."""
        seen, dropped = socket_counts(self.rx)
        self.kernel_drops += dropped
        return seen, dropped

    def wedged(self) -> bool:
        """True when the kernel has stopped filling the ring for good.

        Linux (at least to 6.18) marks a V2 slot as being filled before it writes the frame's
        ``virtio_net_hdr``; if the kernel cannot describe the frame in one, it drops the frame
        but leaves the mark, and from then on drops every frame at that slot: the ring stays
        empty while the kernel counts drops.  Checked from time to time: an empty ring twice
        in a row with every frame seen in between dropped means that, and the ring must be
        rebuilt."""
        empty = not any(status & TP_STATUS_USER for status in self._statuses())
        seen, dropped = self.kernel_counts()
        suspicious = empty and dropped > 0 and dropped == seen
        wedged = suspicious and self.was_empty
        self.was_empty = empty
        return wedged

    def ready_count(self) -> int:
        """How many receive slots hold frames for the reader."""
        return sum(1 for status in self._statuses() if status & TP_STATUS_USER)

    def fileno(self) -> int:
        return self.rx.fileno()

    def flush(self) -> None:
        """Hand every frame written to the TX ring to the kernel (one system call)."""
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

