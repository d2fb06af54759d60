"""AF_PACKET sockets bound to one netdev, with virtio-net headers and VLAN metadata.

Two kernel facts shape this adapter (see docs/architecture.md):

* The kernel strips the outer VLAN tag of every received frame into metadata before packet
  sockets see it, an 802.1Q C-tag (TPID 0x8100) and an 802.1ad S-tag (0x88a8) alike, so the
  tag comes back through ``PACKET_AUXDATA``, its TPID beside its TCI.  A C-tag's TCI is
  returned beside the frame; any other tag is put back in band (``c_tag_beside``), where the
  switch sees it for what it is.  Frames we send keep their in-band tag.
* A frame of 14-19 bytes whose EtherType is 0x8100 or 0x88a8 is too short for the kernel to
  take a tag off: it frees it before any packet socket sees it, and counts it in no drop
  counter (only in the netdev's ``rx_packets``); see docs/counters.md.
* veth and TAP netdevs hand over GSO super-frames with partial checksums.  With
  ``PACKET_VNET_HDR`` every frame is preceded by a 10-byte ``virtio_net_hdr`` that describes
  them, and the same header on send lets the kernel segment or pass them on, so TCP works with
  the default offloads left on.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass

from vnet.host import netns
from vnet.packet.ethernet import c_tag_beside
from vnet.packet.vnethdr import VNET_HDR_LEN

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
TP_STATUS_VLAN_VALID = 0x10       # a tag was moved out: its TCI is given
TP_STATUS_VLAN_TPID_VALID = 0x40  # ... and its TPID (every kernel since 3.14)
SO_SNDBUFFORCE = 32  # not exported by the socket module on every Python
SO_RCVBUFFORCE = 33
SIOCGIFINDEX = 0x8933

NO_VNET_HDR = bytes(VNET_HDR_LEN)
MAX_FRAME = 65536 + 64
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_CMSG_SPACE = socket.CMSG_SPACE(_AUXDATA.size)


@dataclass(frozen=True)
class PacketOptions:
    vnet_hdr: bool = True     # exchange virtio_net_hdr with the kernel (GSO, csum offload)
    promiscuous: bool = True  # see frames for every MAC, as a bridge port must
    rcvbuf: int = 4 << 20
    sndbuf: int = 4 << 20


def open_packet_socket(ifname: str, options: PacketOptions = PacketOptions(),
                       netns_name: str | None = None) -> socket.socket:
    """Open a non-blocking packet socket on ``ifname`` (inside ``netns_name`` if given).

    It receives only ``ifname``'s frames, from its first: see ``unbound_packet_socket``."""
    with netns.entered(netns_name):
        sock = unbound_packet_socket()
        try:
            ifindex = prepare_receiver(sock, ifname, options)
            bind_receiver(sock, ifname, ifindex, options.promiscuous)
        except BaseException:
            sock.close()
            raise
    return sock


def unbound_packet_socket() -> socket.socket:
    """A packet socket that receives nothing until it is bound to one netdev.

    Created with protocol ``ETH_P_ALL``, a packet socket receives the frames of *every*
    netdev of the namespace until ``bind`` narrows it to one: a switch port opened while
    another interface was busy started with that interface's frames in its queue, and the
    switch learned their source MACs on the wrong port.  With protocol 0 it receives nothing,
    and ``bind((ifname, ETH_P_ALL))`` starts it on that netdev alone (as libpcap does)."""
    return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)


# The steps every receiving packet socket of vnet takes, here and in ``vnet.host.ring``
# (which sets up its ring between the two).

def prepare_receiver(sock: socket.socket, ifname: str, options: PacketOptions) -> int:
    """Options a receiver needs before it is bound (and before a ring is set up, which
    fixes the header layout); returns ``ifname``'s index."""
    ifindex = interface_index(sock, ifname)
    if options.vnet_hdr:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    set_buffer(sock, socket.SO_RCVBUF, options.rcvbuf)
    set_buffer(sock, socket.SO_SNDBUF, options.sndbuf)
    return ifindex


def bind_receiver(sock: socket.socket, ifname: str, ifindex: int, promiscuous: bool) -> None:
    """Bind to ``ifname`` for every protocol, join promiscuously if asked, stop blocking."""
    sock.bind((ifname, ETH_P_ALL))
    if promiscuous:  # per socket: the membership goes away with it
        mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)


def interface_index(sock: socket.socket, ifname: str) -> int:
    """The netdev's index in the socket's namespace (SIOCGIFINDEX: PyPy's socket module has
    no ``if_nametoindex``)."""
    ifreq = struct.pack("16si12x", ifname.encode(), 0)
    return int(struct.unpack_from("16si", fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, ifreq))[1])


_FORCED = {socket.SO_RCVBUF: SO_RCVBUFFORCE, socket.SO_SNDBUF: SO_SNDBUFFORCE}


def set_buffer(sock: socket.socket, opt: int, size: int) -> None:
    """Set SO_RCVBUF or SO_SNDBUF to ``size``, past the system's limit where allowed (root:
    the ``...FORCE`` variant), else within it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _FORCED[opt], size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


def socket_counts(sock: socket.socket) -> tuple[int, int]:
    """Frames the kernel handed to ``sock`` and frames among them it dropped for want of
    room (its receive queue or ring full), since the last call: clear on read."""
    seen, dropped = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return seen, dropped


def recv_frame(sock: socket.socket, vnet_hdr: bool = True) -> tuple[bytes, bytes, int | None]:
    """Receive one frame: ``(vnet_hdr, frame, tci)``; raises BlockingIOError when empty.

    ``tci`` is the TCI of the 802.1Q C-tag the kernel removed, or None if it removed none
    or another kind of tag, which is then back in ``frame`` (``c_tag_beside``).
    """
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_FRAME, _CMSG_SPACE)
    hdr, frame = (data[:VNET_HDR_LEN], data[VNET_HDR_LEN:]) if vnet_hdr else (NO_VNET_HDR, data)
    return _with_tag(hdr, frame, ancdata)


class FrameReader:
    """``recv_frame`` for a port that receives many large frames: the kernel copies each
    into a buffer kept from frame to frame, and only the frame is copied out of it.

    ``recv_frame`` makes three objects of a frame's size (what ``recvmsg`` returns, the
    frame sliced out of it, and, on the way out, the header and frame joined); a GSO
    super-frame is 64 KiB, and PyPy's GC pays for every object that large (its 1 MiB
    nursery fills in a few frames and each collection does a step of a major one).  With one
    such object per frame (and the header and frame sent gathered, ``sendmsg``), a TCP
    stream through the PyPy datapath took ~72 us of CPU per 64 KiB forwarded instead of
    ~92 us (docs/benchmarks.md); CPython gains little (it pays for the copies only)."""

    def __init__(self, vnet_hdr: bool = True) -> None:
        self._view = memoryview(bytearray(MAX_FRAME))
        self._start = VNET_HDR_LEN if vnet_hdr else 0

    def read(self, sock: socket.socket) -> tuple[bytes, bytes, int | None]:
        """As ``recv_frame(sock, vnet_hdr)``."""
        view, start = self._view, self._start
        size, ancdata, _flags, _addr = sock.recvmsg_into((view,), _CMSG_SPACE)
        hdr = view[:start].tobytes() if start else NO_VNET_HDR
        return _with_tag(hdr, view[start:size].tobytes(), ancdata)


def _with_tag(hdr: bytes, frame: bytes, ancdata: list[tuple[int, int, bytes]]
              ) -> tuple[bytes, bytes, int | None]:
    tag = aux_tag(ancdata)
    if tag is None:
        return hdr, frame, None
    return c_tag_beside(hdr, frame, *tag)


def aux_tag(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int] | None:
    """``(tpid, tci)`` of the tag the kernel moved out of the frame (``tpid`` 0 if it did not
    say), or None."""
    for level, kind, payload in ancdata:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUXDATA.size:
            status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(payload)
            if status & TP_STATUS_VLAN_VALID:
                return (tpid if status & TP_STATUS_VLAN_TPID_VALID else 0), tci
    return None
