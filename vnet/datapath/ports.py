"""The datapath's ports: where frames come in and go out, one class per kind of I/O.

A port moves frames and knows nothing of switching: it hands each frame it receives to
``deliver``, which the loop (``vnet.datapath.engine``) gave it, and which asks the bridge's
switch where the frame goes and emits it through the ports the decision names.  Each port
owns its I/O state (sockets, its place in a ring, hole recovery) and counts what its I/O
lost (``io_errors``, shown as ``tx_errors``).

The port interface (``Port``), as the loop uses it:

``fileno()``
    the fd the loop polls for readability
``drain(now, budget)``
    take up to ``budget`` received frames, each passed on at once as
    ``deliver(vnet_hdr, frame, tci, now)``: ``frame`` as the kernel delivered it, ``tci``
    the TCI of the 802.1Q C-tag the kernel took off (None if none); a tag of any other TPID
    it took off (an 802.1ad S-tag) goes back in band first (``c_tag_beside``), so that the
    switch never takes it for a C-tag.  At once, not collected first: a
    batch of 64 KiB GSO super-frames held back is megabytes out of the cache (CPython's
    TCP fell from about 20 to 11 Gbit/s so)
``emit(vnet_hdr, frame)``
    send one frame; it may only be queued, for ``flush``
``flush()``
    hand what ``emit`` queued to the kernel (the loop calls it after each port's turn for
    every port in ``Schedule.dirty``)
``maintain(now)``
    once a second; True asks the loop to ``rebuild()`` the port (its fd changes)
``socket_error()``
    epoll reported EPOLLERR on the fd
``stats(counters)``
    the switch's counters of the port plus the port's own
``set_rx_filter(program)``
    a classic BPF socket filter on its receive socket (kernel flows keep their frames out
    of it, ``vnet.datapath.kernelflows``); kept across a ``rebuild``
``close()``

A port with work the kernel will not wake the loop for says so in the loop's ``Schedule``:
``dirty`` (sends queued), ``backlog`` (frames left when its budget or its time,
``turn_end``, ran out), ``holes`` (it waits at an empty ring slot: come back within
``HOLE_GRACE``).

Adding a port type (an overlay port over UDP/VXLAN, a capture mirror): subclass ``Port``,
implement the interface (a port that only sends delivers nothing), and
register the class with ``@port_type("name")``; the loop needs no change.  Netdev ports are
chosen by the datapath's ``--io`` name; a port of another kind comes with its own control
request (``vnet.datapath.protocol``) whose handler constructs it.

(Runs under PyPy 3.9 too: no ``X | Y`` outside annotations.)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from vnet.datapath.sparse import HEAD as FLOW_HEAD
from vnet.datapath.sparse import Lookahead, flow_key
from vnet.errors import HostError
from vnet.host import afpacket, cbpf
from vnet.host.netdev import RxFrames
from vnet.host.ring import (
    RX_HDR,
    STATUS,
    TP_STATUS_COPY,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    TX_DATA_OFFSET,
    TX_HDR,
    PacketRing,
)
from vnet.packet.ethernet import ETH_P_8021Q, c_tag_beside
from vnet.packet.vnethdr import VNET_HDR_LEN
from vnet.switch import PortConfig

if TYPE_CHECKING:
    from vnet.datapath.mirror import Mirror

    # (vnet_hdr, frame, tci, now) -> the decision (inject reports it; ports ignore it)
    Deliver = Callable[[bytes, bytes, int | None, float], object]

log = logging.getLogger("vnet.datapath")

# Seconds a receive slot may stay empty while later slots hold frames.  A slot is not
# abandoned just because another CPU filled the next ones first: a vCPU descheduled mid-copy
# (nested VMs, steal time) finished its slot more than 2 ms late here, and a slot skipped
# too early is picked up only when the reader finds it again, out of order and up to a
# second later (seen as a flood frame arriving ~0.5 s late under PyPy).
HOLE_GRACE = 20e-3


class Flushing(Protocol):
    def flush(self) -> None: ...


class Schedule:
    """Work the loop owes its ports beyond their fds' readiness (see the module docstring)."""

    __slots__ = ("backlog", "dirty", "holes", "turn_end")

    def __init__(self) -> None:
        self.dirty: list[Flushing] = []   # sends queued, not yet flushed (may repeat one)
        self.backlog: set[Port] = set()   # the last drain stopped at its budget (or turn_end)
        self.holes: set[Port] = set()     # the reader waits at an empty slot
        # when the current port's turn should end (monotonic): a port whose frames take long
        # (super-frames) stops after the one that passed it and is left in ``backlog``
        self.turn_end = float("inf")

    def forget(self, port: Port) -> None:
        self.dirty[:] = [p for p in self.dirty if p is not port]
        self.backlog.discard(port)
        self.holes.discard(port)


class Port(ABC):
    """One switch port's I/O; ``number`` is its number in the bridge's switch, ``deliver``
    where the frames it receives go."""

    kind: ClassVar[str]

    def __init__(self, number: int, config: PortConfig, ifname: str, schedule: Schedule,
                 deliver: Deliver, opened: Any = None) -> None:
        """``opened``: what ``open_ahead(ifname)`` made for it, if it was called."""
        self.number = number
        self.config = config
        self.ifname = ifname
        self.schedule = schedule
        self.deliver = deliver
        self.own_deliver = deliver  # ``deliver`` is a mirror's wrapper of it while mirrored
        self.mirrors: tuple[Mirror, ...] = ()  # vnet.datapath.mirror; none by default
        self.io_errors: dict[str, int] = {}
        self.sock: socket.socket  # the socket the loop polls; the subclass opens it
        self.netdev_rx: RxFrames | None = None  # a netdev port: the kernel's count
        self.rx_filter: tuple[cbpf.Insn, ...] | None = None  # its socket filter, if any

    @classmethod
    def open_ahead(cls, ifname: str) -> Any:
        """The slow part of opening a port on ``ifname``, done before the port is (in a
        thread, side by side with other ports'); None: this type has nothing to gain.
        Whatever it returns has a ``close()``."""
        return None

    def count_error(self, reason: str) -> None:
        self.io_errors[reason] = self.io_errors.get(reason, 0) + 1

    def fileno(self) -> int:
        return self.sock.fileno()

    @abstractmethod
    def drain(self, now: float, budget: int) -> None:
        """Deliver up to ``budget`` received frames (see the module docstring)."""

    @abstractmethod
    def emit(self, hdr: bytes, frame: bytes) -> None:
        """Send ``frame`` with its virtio-net header (now, or at the next ``flush``)."""

    def flush(self) -> None:  # noqa: B027 - most ports queue nothing
        """Hand the frames ``emit`` queued to the kernel (nothing, for a port that queues
        none)."""

    def maintain(self, now: float) -> bool:
        """Once a second; True asks the loop to ``rebuild`` the port."""
        return False

    def rebuild(self) -> None:  # noqa: B027 - only a port that asks (maintain) needs one
        """Replace the port's sockets with fresh ones on the same netdev (the loop has
        unregistered the fd and registers ``fileno()`` afterwards)."""

    def set_rx_filter(self, program: tuple[cbpf.Insn, ...] | None) -> None:
        """Receive only what ``program`` accepts (None: everything); a ``HostError`` if the
        kernel refuses it (the filter before stays)."""
        if program is None:
            cbpf.detach_filter(self.sock)
        else:
            cbpf.attach_filter(self.sock, program)
        self.rx_filter = program

    def socket_error(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.count_error(f"socket-{errno.errorcode.get(err, err)}")

    def stats(self, counters: dict[str, Any]) -> dict[str, Any]:
        """The switch's ``counters`` of this port with the port's own beside them, and the
        kernel's count of what the netdev received (docs/counters.md)."""
        stats = {**counters, "ifname": self.ifname, "tx_errors": dict(self.io_errors)}
        received = self.netdev_rx.count() if self.netdev_rx is not None else None
        if received is not None:
            stats["netdev_rx_frames"] = received
        if self.mirrors:
            stats["mirrors"] = len(self.mirrors)
        return stats

    def close(self) -> None:
        """``detach``, then ``release``: a port closed where it is."""
        self.detach()
        self.release()

    def detach(self) -> None:
        """Out of the loop's schedule (the loop's thread only)."""
        self.schedule.forget(self)

    def release(self) -> None:
        """Close its sockets, from any thread: each close of a packet socket waits for an
        RCU grace period in the kernel (about 10 ms), so the datapath does it off its loop
        (``Datapath._del_port``) rather than stall forwarding for every port removed."""
        self.sock.close()
        if self.netdev_rx is not None:
            self.netdev_rx.close()


PORT_TYPES: dict[str, type[Port]] = {}
P = TypeVar("P", bound=type[Port])


def port_type(kind: str) -> Callable[[P], P]:
    """Register a port class under ``kind``."""

    def register(cls: P) -> P:
        cls.kind = kind
        PORT_TYPES[kind] = cls
        return cls

    return register


@port_type("ring")
class RingPort(Port):
    """A netdev port on PACKET_MMAP rings (``vnet.host.ring``): frames are read from the
    receive ring and written into the send ring in place, with no system call per frame;
    one ``send`` after each turn of the loop's flushes the send ring.  The default."""

    def __init__(self, number: int, config: PortConfig, ifname: str, schedule: Schedule,
                 deliver: Deliver, opened: PacketRing | None = None) -> None:
        super().__init__(number, config, ifname, schedule, deliver)
        try:
            self.netdev_rx = RxFrames(ifname)  # counting before the first frame can be taken
            self._use(opened if opened is not None else PacketRing(ifname))
        except BaseException:
            if self.netdev_rx is not None:
                self.netdev_rx.close()
            if opened is not None:   # it is this port's to close now
                opened.close()
            raise

    @classmethod
    def open_ahead(cls, ifname: str) -> PacketRing:
        """Its rings: setting up each waits for an RCU grace period (``ring.set_ring``)."""
        return PacketRing(ifname)

    def _use(self, ring: PacketRing) -> None:
        """Read and write ``ring`` from its start."""
        assert ring.rx_map is not None and ring.tx_map is not None
        self.ring = ring
        self.sock = ring.rx  # also takes frames too large for a slot, both ways
        self.reader = afpacket.FrameReader()
        self.rx_map, self.tx_map = ring.rx_map, ring.tx_map
        self.rx_frame_size, self.rx_frames = ring.rx_frame_size, ring.rx_frames
        self.tx_frame_size, self.tx_max = ring.tx_frame_size, ring.tx_max
        self.tx_end = ring.tx_frame_size * ring.tx_frames
        self.rx_index = 0       # the next receive slot to read (and to give back)
        self.tx_offset = 0      # where the next send slot starts
        self.tx_pending = 0     # frames written to the send ring since the last flush
        self.hole_since = 0.0   # when the reader found rx_index empty with frames after it
        self.hole_index = 0     # ... that slot
        self.lookahead = Lookahead()   # the slots examined ahead of the reader (``_ahead``)

    def drain(self, now: float, budget: int) -> None:
        """Deliver up to ``budget`` frames from the receive ring, in ring order, except that
        small frames of other flows go ahead of super-frames (``_ahead``); a turn also ends
        after the super-frame that took it past ``Schedule.turn_end``.

        Slots are given back strictly in ring order, the order the kernel fills them in: a
        reader that freed them out of order would leave free slots behind the kernel's
        head, and the kernel wakes the reader only while the slot it filled last is taken,
        so such a ring can stop waking its reader."""
        m = self.rx_map
        size, count, index = self.rx_frame_size, self.rx_frames, self.rx_index
        unpack, set_status, hdr_len = RX_HDR.unpack_from, STATUS.pack_into, VNET_HDR_LEN
        deliver, lookahead = self.deliver, self.lookahead
        examined = lookahead.slots   # its deque: a test of it costs a small frame no call
        schedule = self.schedule
        taken = 0
        over = False
        while taken < budget:
            off = index * size
            status, length, snaplen, mac, _n, _s, _ns, vtci, vtpid = unpack(m, off)
            if not status & TP_STATUS_USER:
                skip_to = self._at_empty_slot(index, now, woken_for_nothing=not taken)
                if skip_to == index:
                    break
                index = skip_to
                continue
            copied = status & TP_STATUS_COPY
            if copied:   # a super-frame: small frames of other flows behind it go first
                taken += self._ahead(index, budget - taken, now)
                if taken >= budget:
                    break
            index += 1
            if index == count:
                index = 0
            if examined and lookahead.consume():   # it went ahead: only give the slot back
                set_status(m, off, 0)
                continue
            taken += 1
            if copied:  # larger than a slot: the whole frame is queued
                set_status(m, off, 0)
                try:
                    hdr, frame, tci = self.reader.read(self.sock)
                except OSError:
                    self.count_error("rx-copy-lost")
                    continue
                deliver(hdr, frame, tci, now)
                if monotonic() >= schedule.turn_end:
                    over = True
                    break
                continue
            # as ``_slot_frame``, inline: this is the path of every small frame
            start = off + mac
            hdr = m[start - hdr_len:start]
            frame = m[start:start + snaplen]
            set_status(m, off, 0)
            if snaplen < length:
                self.count_error("rx-truncated")
                continue
            if not status & TP_STATUS_VLAN_VALID:
                tci = None
            elif vtpid == ETH_P_8021Q or not status & TP_STATUS_VLAN_TPID_VALID:
                tci = vtci
            else:  # an S-tag (or another TPID): back in band, where the switch sees it
                hdr, frame, tci = c_tag_beside(hdr, frame, vtpid, vtci)
            deliver(hdr, frame, tci, now)
        self.rx_index = index
        if taken >= budget or over:
            schedule.backlog.add(self)
        elif schedule.backlog:
            schedule.backlog.discard(self)
        if self.hole_since and index != self.hole_index:  # the late frame came: no hole
            self.hole_since = 0.0
            schedule.holes.discard(self)

    def _slot_frame(self, m: mmap.mmap, off: int, status: int, length: int, snaplen: int,
                    mac: int, vtci: int, vtpid: int) -> tuple[bytes, bytes, int | None] | None:
        """The frame in the slot at ``off`` (header, frame, C-tag TCI); None if it was
        truncated (counted)."""
        start = off + mac
        hdr = m[start - VNET_HDR_LEN:start]
        frame = m[start:start + snaplen]
        if snaplen < length:
            self.count_error("rx-truncated")
            return None
        if not status & TP_STATUS_VLAN_VALID:
            return hdr, frame, None
        if vtpid == ETH_P_8021Q or not status & TP_STATUS_VLAN_TPID_VALID:
            return hdr, frame, vtci
        # an S-tag (or another TPID): back in band, where the switch sees it
        return c_tag_beside(hdr, frame, vtpid, vtci)

    def _ahead(self, head: int, budget: int, now: float) -> int:
        """Look ahead from the super-frame at slot ``head`` (``vnet.datapath.sparse``): the
        slots not examined yet, in ring order up to the first empty one, each passed over or
        delivered now (up to ``budget``); a slot delivered ahead stays the reader's until it
        gets there.  Returns how many were delivered."""
        m, lookahead, size, count = self.rx_map, self.lookahead, self.rx_frame_size, self.rx_frames
        unpack, examine, deliver = RX_HDR.unpack_from, lookahead.examine, self.deliver
        index = (head + len(lookahead)) % count
        delivered = 0
        while delivered < budget and len(lookahead) < count:
            off = index * size
            status, length, snaplen, mac, _n, _s, _ns, vtci, vtpid = unpack(m, off)
            if not status & TP_STATUS_USER:
                break
            start = off + mac
            small = not status & TP_STATUS_COPY
            if examine(flow_key(m[start:start + min(snaplen, FLOW_HEAD)]), small):
                got = self._slot_frame(m, off, status, length, snaplen, mac, vtci, vtpid)
                delivered += 1
                if got is not None:
                    deliver(got[0], got[1], got[2], now)
            index += 1
            if index == count:
                index = 0
        return delivered

    def _at_empty_slot(self, index: int, now: float, woken_for_nothing: bool) -> int:
        """Where to read next when the slot at ``index`` holds no frame.

        Usually the kernel simply has nothing more.  If the slot after it holds a frame, the
        kernel is either still writing ours (two CPUs can finish neighbouring slots out of
        order, and a vCPU can be descheduled mid-copy) or gave the slot up.  The kernel wakes
        the reader only while the slot it filled last is taken, so the loop comes back here
        on a timer; if the slot is still empty HOLE_GRACE later, skip to the next frame in
        ring order (the kernel reuses the slot on its next lap).  Holes can span several
        slots: a wake-up that found nothing at all looks through the whole ring."""
        ring = self.ring
        if not self.hole_since:
            waiting = (ring.next_ready(index) is not None if woken_for_nothing
                       else ring.ready_after(index))
            if waiting:
                self.hole_since, self.hole_index = now, index
                self.schedule.holes.add(self)
            return index
        if now - self.hole_since < HOLE_GRACE:
            return index
        self.hole_since = 0.0
        self.schedule.holes.discard(self)
        skip_to = ring.next_ready(index)
        if skip_to is None:
            return index
        self.count_error("rx-ring-skip")
        return skip_to

    def emit(self, hdr: bytes, frame: bytes) -> None:
        """Write one frame into the send ring (flushed after this wake-up's batch)."""
        if len(frame) > self.tx_max:  # a super-frame: out through the plain socket, in order
            if self.tx_pending:
                self.flush()
            _send(self, hdr, frame)
            return
        m = self.tx_map
        off = self.tx_offset
        if STATUS.unpack_from(m, off)[0]:  # the kernel still holds this slot: the ring is full
            if self.tx_pending:
                self.flush()
            if STATUS.unpack_from(m, off)[0]:
                self.count_error("tx-ring-full")
                return
        length = VNET_HDR_LEN + len(frame)
        data = off + TX_DATA_OFFSET
        m[data:data + VNET_HDR_LEN] = hdr
        m[data + VNET_HDR_LEN:data + length] = frame
        TX_HDR.pack_into(m, off, TP_STATUS_SEND_REQUEST, length, length)
        off += self.tx_frame_size
        self.tx_offset = 0 if off == self.tx_end else off
        pending = self.tx_pending + 1
        self.tx_pending = pending
        if pending == 1:
            self.schedule.dirty.append(self)

    def flush(self) -> None:
        if self.tx_pending:
            self.tx_pending = 0
            self.ring.flush()

    def maintain(self, now: float) -> bool:
        """A reader waiting at an empty slot with frames further on (a gap wider than
        ``ready_after`` looks) starts its grace period; a ring the kernel stopped filling
        (see ``PacketRing.wedged``) asks to be rebuilt."""
        if not self.hole_since and self.ring.next_ready(self.rx_index) is not None:
            self.hole_since, self.hole_index = now, self.rx_index
            self.schedule.holes.add(self)
        if self.ring.wedged():
            log.warning("port %s: the kernel stopped filling its receive ring; rebuilding it",
                        self.ifname)
            self.count_error("rx-ring-rebuilt")
            return True
        return False

    def rebuild(self) -> None:
        """Fresh rings on the same netdev (the switch keeps the port's number, tables and
        counters); the old ones stay if the netdev is going away (vnetd removes the port)."""
        try:
            ring = PacketRing(self.ifname)
        except OSError as err:
            log.warning("port %s: cannot reopen its rings: %s", self.ifname, err)
            return
        old = self.ring
        self.flush()
        self.schedule.forget(self)
        old.kernel_counts()
        ring.kernel_drops = old.kernel_drops
        old.close()
        self._use(ring)
        if self.rx_filter is not None:   # kernel flows' frames stay out of the new ring too
            try:
                self.set_rx_filter(self.rx_filter)
            except HostError as err:
                log.warning("port %s: cannot filter its new ring: %s", self.ifname, err)

    def stats(self, counters: dict[str, Any]) -> dict[str, Any]:
        stats = super().stats(counters)
        ring = self.ring
        stats["ring"] = {"rx_index": self.rx_index, "rx_ready": ring.ready_count(),
                         "rx_slots": ring.rx_frames}
        if ring.kernel_drops:  # the ring was full: the kernel had nowhere to put them
            stats["drops"] = {**stats["drops"], "rx-ring-full": ring.kernel_drops}
        return stats

    def release(self) -> None:
        self.ring.close()
        if self.netdev_rx is not None:
            self.netdev_rx.close()


@port_type("socket")
class SocketPort(Port):
    """A netdev port on a plain packet socket: a ``recvmsg`` and a ``send`` per frame.  The
    reference the rings are measured against, and the fallback."""

    def __init__(self, number: int, config: PortConfig, ifname: str, schedule: Schedule,
                 deliver: Deliver) -> None:
        super().__init__(number, config, ifname, schedule, deliver)
        self.netdev_rx = RxFrames(ifname)  # counting before the first frame can be taken
        try:
            self.sock = afpacket.open_packet_socket(ifname)
        except BaseException:
            self.netdev_rx.close()
            raise
        self.kernel_drops = 0  # frames the kernel found the receive queue full for
        self.reader = afpacket.FrameReader()

    def drain(self, now: float, budget: int) -> None:
        recv, sock, deliver = self.reader.read, self.sock, self.deliver
        for _ in range(budget):
            try:
                hdr, frame, tci = recv(sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # the netdev went away under us; vnetd will remove the port
                self.count_error(f"rx-{errno.errorcode.get(err.errno or 0, 'error')}")
                return
            deliver(hdr, frame, tci, now)

    def emit(self, hdr: bytes, frame: bytes) -> None:
        _send(self, hdr, frame)

    def maintain(self, now: float) -> bool:
        self._count_kernel_drops()  # often enough that the kernel's 32-bit count cannot wrap
        return False

    def _count_kernel_drops(self) -> None:
        with contextlib.suppress(OSError):  # the netdev is going away; vnetd removes the port
            self.kernel_drops += afpacket.socket_counts(self.sock)[1]

    def stats(self, counters: dict[str, Any]) -> dict[str, Any]:
        stats = super().stats(counters)
        self._count_kernel_drops()
        if self.kernel_drops:  # the receive queue was full: the kernel had nowhere to put them
            stats["drops"] = {**stats["drops"], "rx-queue-full": self.kernel_drops}
        return stats


def _send(port: Port, hdr: bytes, frame: bytes) -> None:
    """Send ``hdr`` and ``frame`` as one frame (gathered by the kernel: no joined copy)."""
    try:
        port.sock.sendmsg((hdr, frame))
    except BlockingIOError:
        port.count_error("tx-queue-full")
    except OSError as err:
        port.count_error(f"tx-{errno.errorcode.get(err.errno or 0, 'error')}")
