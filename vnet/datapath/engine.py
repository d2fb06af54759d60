"""The datapath: one process, one epoll loop, the learning switch between packet sockets.

It makes no network-configuration calls: vnetd tells it over the control socket which
bridges (one per lab), VLANs and ports exist, and the datapath opens a packet socket on each
port's netdev.  The switching decision comes from ``vnet.switch`` (pure); this module only
moves bytes and applies the decision.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from vnet import jsonlines
from vnet.errors import DatapathError
from vnet.host import afpacket
from vnet.host.ring import (
    RX_HDR,
    STATUS,
    TP_STATUS_COPY,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_USER,
    TP_STATUS_VLAN_VALID,
    TX_DATA_OFFSET,
    TX_HDR,
    PacketRing,
)
from vnet.packet import insert_tag, split_outer_tag
from vnet.packet.vnethdr import shift_vnet_hdr
from vnet.switch import PortConfig, Switch, VlanOptions

log = logging.getLogger("vnet.datapath")

RX_BUDGET = 64  # frames drained from one port per wake-up, so one busy port cannot starve others
EXPIRE_INTERVAL = 1.0
IO_MODES = ("ring", "socket")
BUSY_POLL = 100e-6  # seconds of polling without sleeping after a wake-up that moved frames
# Seconds a receive slot may stay empty while later slots hold frames.  A slot is not
# abandoned just because another CPU filled the next ones first: a vCPU descheduled mid-copy
# (nested VMs, steal time) finished its slot more than 2 ms late here, and a slot skipped
# too early is picked up only when the reader finds it again, out of order and up to a
# second later (seen as a flood frame arriving ~0.5 s late under PyPy).
HOLE_GRACE = 20e-3


@dataclass
class Port:
    number: int
    bridge: str
    config: PortConfig
    ifname: str
    sock: socket.socket                   # receives (and sends what the ring cannot hold)
    ring: PacketRing | None = None        # PACKET_MMAP receive and send rings (io="ring")
    tx_errors: dict[str, int] = field(default_factory=dict)

    def count_tx_error(self, reason: str) -> None:
        self.tx_errors[reason] = self.tx_errors.get(reason, 0) + 1


@dataclass
class Bridge:
    name: str
    switch: Switch = field(default_factory=Switch)
    ports: dict[str, Port] = field(default_factory=dict)


@dataclass
class ControlConnection:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)


class Datapath:
    """The datapath; ``io`` is "ring" (PACKET_MMAP rings, the default) or "socket" (a
    ``recvmsg``/``send`` per frame, kept as the reference and the fallback)."""

    def __init__(self, control_path: str, io: str = "ring",
                 busy_poll: float = BUSY_POLL) -> None:
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {IO_MODES}, not {io!r}")
        self.io = io
        self.busy_poll = busy_poll
        self.dirty: list[PacketRing] = []  # rings with frames written but not yet flushed
        self.holes: set[int] = set()       # ports whose reader waits at an empty slot
        self.backlog: set[int] = set()     # ports whose last drain stopped at RX_BUDGET
        self.control_path = control_path
        self.epoll = select.epoll()
        self.bridges: dict[str, Bridge] = {}
        self.ports: dict[int, Port] = {}          # by port number
        self.port_by_fd: dict[int, Port] = {}
        self.controls: dict[int, ControlConnection] = {}
        self.next_port_number = 1
        self.running = True
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(control_path):
            os.unlink(control_path)
        self.listener.bind(control_path)
        os.chmod(control_path, 0o600)
        bound = os.stat(control_path)
        self.control_id = (bound.st_dev, bound.st_ino)   # close removes only this file
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        next_expire = time.monotonic() + EXPIRE_INTERVAL
        spin_until = 0.0
        monotonic, poll = time.monotonic, self.epoll.poll
        while self.running:
            # busy-poll for a moment after traffic: the reply to what was just forwarded is
            # usually back within microseconds, sooner than a sleep-and-wake-up round trip
            if self.backlog or (spin_until and monotonic() < spin_until):
                timeout = 0.0
            else:
                timeout = HOLE_GRACE if self.holes else EXPIRE_INTERVAL
            busy = False
            for fd, events in poll(timeout):
                port = self.port_by_fd.get(fd)
                if port is not None:
                    busy = True
                    if events & select.EPOLLERR:
                        self._clear_socket_error(port)
                    if port.ring is not None:
                        self._drain_ring(port, port.ring)
                    else:
                        self._drain(port)
                elif fd == self.listener.fileno():
                    self._accept()
                elif fd in self.controls:
                    self._serve(fd)
                # else: an fd closed by an earlier event of this same batch (a deleted port)
            if self.holes or self.backlog:
                self._revisit()
            if self.dirty:
                self._flush()
            if busy:
                spin_until = monotonic() + self.busy_poll
            now = time.monotonic()
            if now >= next_expire:
                for bridge in self.bridges.values():
                    bridge.switch.fdb.expire(now)
                self._check_rings()
                next_expire = now + EXPIRE_INTERVAL
        self.close()

    def _drain(self, port: Port) -> None:
        switch = self.bridges[port.bridge].switch
        ports = self.ports
        recv = afpacket.recv_frame
        sock = port.sock
        for _ in range(RX_BUDGET):
            try:
                hdr, frame, tci = recv(sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # the netdev went away under us; vnetd will remove the port
                port.count_tx_error(f"rx-{errno.errorcode.get(err.errno or 0, 'error')}")
                return
            if tci is None and frame[12:14] == b"\x81\x00":
                frame, tci = split_outer_tag(frame)
                hdr = shift_vnet_hdr(hdr, -4)
            decision = switch.receive(port.number, frame, tci, time.monotonic())
            if decision.drop is not None:
                continue
            if decision.untagged:
                data = hdr + frame
                for number in decision.untagged:
                    _send(ports[number], data)
            if decision.tagged:
                data = shift_vnet_hdr(hdr, 4) + insert_tag(frame, decision.tci)
                for number in decision.tagged:
                    _send(ports[number], data)

    def _drain_ring(self, port: Port, ring: PacketRing) -> None:
        """Forward up to RX_BUDGET frames from the receive ring, in place, no system call.

        Frames are taken strictly in ring order, the order the kernel fills slots in: a
        reader that took them out of order would leave free slots behind the kernel's
        head, and the kernel wakes the reader only while the slot it filled last is
        taken, so such a ring can stop waking its reader."""
        switch = self.bridges[port.bridge].switch
        ports = self.ports
        m = ring.rx_map
        assert m is not None
        size, count, index = ring.rx_frame_size, ring.rx_frames, ring.rx_index
        unpack, set_status = RX_HDR.unpack_from, STATUS.pack_into
        receive, number_in = switch.receive, port.number
        now = time.monotonic()
        taken = 0
        while taken < RX_BUDGET:
            off = index * size
            status, length, snaplen, mac, _n, _s, _ns, vtci, _tpid = unpack(m, off)
            if not status & TP_STATUS_USER:
                skip_to = self._at_empty_slot(port, ring, index, now, woken_for_nothing=not taken)
                if skip_to == index:
                    break
                index = skip_to
                continue
            taken += 1
            index += 1
            if index == count:
                index = 0
            if status & TP_STATUS_COPY:  # larger than a slot: the whole frame is queued
                set_status(m, off, 0)
                try:
                    hdr, frame, tci = afpacket.recv_frame(port.sock)
                except OSError:
                    port.count_tx_error("rx-copy-lost")
                    continue
            else:
                start = off + mac
                hdr = m[start - 10:start]
                frame = m[start:start + snaplen]
                set_status(m, off, 0)
                if snaplen < length:
                    port.count_tx_error("rx-truncated")
                    continue
                tci = vtci if status & TP_STATUS_VLAN_VALID else None
            if tci is None and frame[12:14] == b"\x81\x00":
                frame, tci = split_outer_tag(frame)
                hdr = shift_vnet_hdr(hdr, -4)
            decision = receive(number_in, frame, tci, now)
            if decision.drop is not None:
                continue
            for number in decision.untagged:
                self._emit(ports[number], hdr, frame)
            if decision.tagged:
                tagged_hdr = shift_vnet_hdr(hdr, 4)
                tagged = insert_tag(frame, decision.tci)
                for number in decision.tagged:
                    self._emit(ports[number], tagged_hdr, tagged)
        ring.rx_index = index
        if taken == RX_BUDGET:
            self.backlog.add(number_in)
        elif self.backlog:
            self.backlog.discard(number_in)
        if ring.hole_since and index != ring.hole_index:  # the late frame came: no hole
            ring.hole_since = 0.0
            self.holes.discard(port.number)

    def _at_empty_slot(self, port: Port, ring: PacketRing, index: int, now: float,
                       woken_for_nothing: bool) -> int:
        """Where to read next when the slot at ``index`` holds no frame.

        Usually the kernel simply has nothing more.  If the slot after it holds a frame, the
        kernel is either still writing ours (two CPUs can finish neighbouring slots out of
        order, and a vCPU can be descheduled mid-copy) or gave the slot up.  The kernel wakes
        the reader only while the slot it filled last is taken, so the loop comes back here
        on a timer; if the slot is still empty HOLE_GRACE later, skip to the next frame in
        ring order (the kernel reuses the slot on its next lap).  Holes can span several
        slots: a wake-up that found nothing at all looks through the whole ring."""
        if not ring.hole_since:
            waiting = (ring.next_ready(index) is not None if woken_for_nothing
                       else ring.ready_after(index))
            if waiting:
                ring.hole_since, ring.hole_index = now, index
                self.holes.add(port.number)
            return index
        if now - ring.hole_since < HOLE_GRACE:
            return index
        ring.hole_since = 0.0
        self.holes.discard(port.number)
        skip_to = ring.next_ready(index)
        if skip_to is None:
            return index
        port.count_tx_error("rx-ring-skip")
        return skip_to

    def _revisit(self) -> None:
        """Drain again the rings that may hold frames without the kernel waking us: a ring
        left with frames when its budget ran out, a reader waiting at an empty slot.  (The
        kernel signals a ring readable only while the slot it filled last is taken.)"""
        for number in list(self.backlog | self.holes):
            port = self.ports.get(number)
            if port is None or port.ring is None:
                self.holes.discard(number)
                self.backlog.discard(number)
            else:
                self._drain_ring(port, port.ring)

    def _check_rings(self) -> None:
        """Once a second: a reader waiting at an empty slot with frames further on (a gap
        wider than ``ready_after`` looks) starts its grace period, and a ring the kernel
        stopped filling (see ``PacketRing.wedged``) is rebuilt."""
        now = time.monotonic()
        for port in list(self.ports.values()):
            ring = port.ring
            if ring is None:
                continue
            if not ring.hole_since and ring.next_ready(ring.rx_index) is not None:
                ring.hole_since, ring.hole_index = now, ring.rx_index
                self.holes.add(port.number)
            if ring.wedged():
                log.warning("port %s: the kernel stopped filling its receive ring; rebuilding it",
                            port.ifname)
                port.count_tx_error("rx-ring-rebuilt")
                self._reopen(port)

    def _emit(self, port: Port, hdr: bytes, frame: bytes) -> None:
        """Write one frame into the port's send ring (flushed after this wake-up's batch)."""
        ring = port.ring
        if ring is None:
            _send(port, hdr + frame)
            return
        length = len(hdr) + len(frame)
        if length > ring.tx_max:  # a super-frame: out through the plain socket, in order
            if ring.tx_pending:
                ring.flush()
            _send(port, hdr + frame)
            return
        m = ring.tx_map
        assert m is not None
        off = ring.tx_index * ring.tx_frame_size
        if STATUS.unpack_from(m, off)[0]:  # the kernel still holds this slot: the ring is full
            if ring.tx_pending:
                ring.flush()
            if STATUS.unpack_from(m, off)[0]:
                port.count_tx_error("tx-ring-full")
                return
        data = off + TX_DATA_OFFSET
        m[data:data + 10] = hdr
        m[data + 10:data + length] = frame
        TX_HDR.pack_into(m, off, TP_STATUS_SEND_REQUEST, length, length)
        index = ring.tx_index + 1
        ring.tx_index = 0 if index == ring.tx_frames else index
        ring.tx_pending += 1
        if ring.tx_pending == 1:
            self.dirty.append(ring)

    def _flush(self) -> None:
        for ring in self.dirty:
            if ring.tx_pending:
                ring.flush()
        self.dirty.clear()

    def _clear_socket_error(self, port: Port) -> None:
        err = port.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            port.count_tx_error(f"socket-{errno.errorcode.get(err, err)}")

    # ---- control ---------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.controls[conn.fileno()] = ControlConnection(conn)
        self.epoll.register(conn.fileno(), select.EPOLLIN)

    def _serve(self, fd: int) -> None:
        control = self.controls[fd]
        try:
            chunk = control.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop_control(fd)
            return
        control.buffer += chunk
        while b"\n" in control.buffer:
            line, _, rest = bytes(control.buffer).partition(b"\n")
            control.buffer = bytearray(rest)
            reply = self.handle_line(line)
            control.sock.setblocking(True)
            try:
                control.sock.sendall(jsonlines.encode(reply))
            except OSError:
                self._drop_control(fd)
                return
            control.sock.setblocking(False)
        if len(control.buffer) > jsonlines.MAX_LINE:
            self._drop_control(fd)

    def _drop_control(self, fd: int) -> None:
        control = self.controls.pop(fd)
        self.epoll.unregister(fd)
        control.sock.close()

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = jsonlines.decode(line)
            op = request.pop("op", None)
            handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                return jsonlines.failed(f"unknown datapath operation {op!r}")
            return jsonlines.ok(handler(**request))
        except (DatapathError, jsonlines.ProtocolError, ValueError, TypeError, OSError) as err:
            return jsonlines.failed(str(err))
        except Exception as err:  # a bug: report it, keep forwarding for everyone else
            log.exception("control request failed")
            return jsonlines.failed(f"internal error in the datapath: {err!r}")

    # Each op_* is one control operation; all are idempotent so vnetd can replay them.

    def op_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "bridges": sorted(self.bridges)}

    def op_add_bridge(self, bridge: str, vlans: list[dict[str, Any]]) -> None:
        br = self.bridges.setdefault(bridge, Bridge(bridge))
        for vlan in vlans:
            br.switch.add_vlan(VlanOptions(vid=int(vlan["vid"]),
                                           mac_aging=float(vlan.get("mac_aging", 300.0)),
                                           mac_limit=int(vlan.get("mac_limit", 1024))))

    def op_del_bridge(self, bridge: str) -> None:
        br = self.bridges.get(bridge)
        if br is None:
            return
        for name in list(br.ports):
            self.op_del_port(bridge, name)
        del self.bridges[bridge]

    def op_add_port(self, bridge: str, name: str, ifname: str, mode: str,
                    vlan: int | None = None, allowed: list[int] | None = None,
                    native: int | None = None) -> dict[str, Any]:
        br = self._bridge(bridge)
        existing = br.ports.get(name)
        number = existing.number if existing else self.next_port_number
        config = PortConfig(number=number, name=name, mode=mode,  # type: ignore[arg-type]
                            vlan=vlan, allowed=frozenset(allowed or ()), native=native)
        if existing is not None:
            if existing.config == config and existing.ifname == ifname:
                return {"number": number}
            self.op_del_port(bridge, name)
        ring = None
        if self.io == "ring":
            ring = PacketRing(ifname)
            sock = ring.rx
        else:
            sock = afpacket.open_packet_socket(ifname)
        self.next_port_number = max(self.next_port_number, number + 1)
        port = Port(number, bridge, config, ifname, sock, ring)
        br.switch.add_port(config)
        br.ports[name] = port
        self.ports[number] = port
        self.port_by_fd[sock.fileno()] = port
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        log.info("port %s/%s on %s added as %d", bridge, name, ifname, number)
        return {"number": number}

    def op_del_port(self, bridge: str, name: str) -> None:
        br = self.bridges.get(bridge)
        port = br.ports.pop(name, None) if br else None
        if br is None or port is None:
            return
        br.switch.remove_port(port.number)
        del self.ports[port.number]
        del self.port_by_fd[port.sock.fileno()]
        self.epoll.unregister(port.sock.fileno())
        if port.ring is not None:
            if port.ring in self.dirty:
                self.dirty.remove(port.ring)
            port.ring.close()
        else:
            port.sock.close()

    def _reopen(self, port: Port) -> None:
        """Replace a port's rings with fresh ones on the same netdev (the switch keeps its
        port number, tables and counters)."""
        old = port.ring
        assert old is not None
        try:
            ring = PacketRing(port.ifname)
        except OSError as err:  # the netdev is going away: vnetd removes the port
            log.warning("port %s: cannot reopen its rings: %s", port.ifname, err)
            return
        if old in self.dirty:
            old.flush()
            self.dirty.remove(old)
        del self.port_by_fd[old.fileno()]
        self.epoll.unregister(old.fileno())
        self.holes.discard(port.number)
        old.kernel_counts()
        ring.kernel_drops = old.kernel_drops
        old.close()
        port.ring, port.sock = ring, ring.rx
        self.port_by_fd[ring.fileno()] = port
        self.epoll.register(ring.fileno(), select.EPOLLIN)

    def op_add_static(self, bridge: str, vid: int, mac: str, port: str) -> None:
        br = self._bridge(bridge)
        if port not in br.ports:
            raise DatapathError(f"bridge {bridge!r} has no port {port!r}")
        br.switch.fdb.add_static(vid, mac, br.ports[port].number)

    def op_fdb(self, bridge: str) -> list[dict[str, Any]]:
        br = self._bridge(bridge)
        names = {p.number: p.config.name for p in br.ports.values()}
        return [{"vlan": e.vid, "mac": e.mac, "port": names.get(e.port, str(e.port)),
                 "age": round(e.age, 1), "static": e.static}
                for e in br.switch.fdb.entries(time.monotonic())]

    def op_fdb_size(self, bridge: str) -> int:
        """How many entries the bridge's MAC table holds (cheap, unlike ``fdb``)."""
        return len(self._bridge(bridge).switch.fdb)

    def op_flush_fdb(self, bridge: str) -> None:
        """Forget every learned and static MAC of the bridge."""
        br = self._bridge(bridge)
        for port in br.ports.values():
            br.switch.fdb.flush_port(port.number)

    def op_stats(self, bridge: str | None = None) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for br in self.bridges.values():
            if bridge is not None and br.name != bridge:
                continue
            result[br.name] = {name: self._port_stats(br, p) for name, p in br.ports.items()}
        return result

    @staticmethod
    def _port_stats(br: Bridge, port: Port) -> dict[str, Any]:
        stats = {**br.switch.counters(port.number).snapshot(), "ifname": port.ifname,
                 "tx_errors": dict(port.tx_errors)}
        if port.ring is not None:
            stats["ring"] = port.ring.health()
            if port.ring.kernel_drops:  # the ring was full: the kernel had nowhere to put them
                stats["drops"] = {**stats["drops"], "rx-ring-full": port.ring.kernel_drops}
        return stats

    def op_shutdown(self) -> None:
        self.running = False

    def _bridge(self, name: str) -> Bridge:
        try:
            return self.bridges[name]
        except KeyError:
            raise DatapathError(f"no bridge {name!r} in the datapath") from None

    def close(self) -> None:
        for bridge in list(self.bridges):
            self.op_del_bridge(bridge)
        for fd in list(self.controls):
            self._drop_control(fd)
        self.listener.close()
        self.epoll.close()
        # a successor (vnetd restarted after a crash) may have bound the path meanwhile:
        # its socket is a different file, and stays
        with contextlib.suppress(FileNotFoundError):
            now = os.stat(self.control_path)
            if (now.st_dev, now.st_ino) == self.control_id:
                os.unlink(self.control_path)


def _send(port: Port, data: bytes) -> None:
    try:
        port.sock.send(data)
    except BlockingIOError:
        port.count_tx_error("tx-queue-full")
    except OSError as err:
        port.count_tx_error(f"tx-{errno.errorcode.get(err.errno or 0, 'error')}")
