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
from vnet.packet import insert_tag, split_outer_tag
from vnet.packet.vnethdr import shift_vnet_hdr
from vnet.switch import PortConfig, Switch, VlanOptions

log = logging.getLogger("vnet.datapath")

RX_BUDGET = 64  # frames drained from one port per wake-up, so one busy port cannot starve others
EXPIRE_INTERVAL = 1.0


@dataclass
class Port:
    number: int
    bridge: str
    config: PortConfig
    ifname: str
    sock: socket.socket
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
    def __init__(self, control_path: str) -> None:
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
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        next_expire = time.monotonic() + EXPIRE_INTERVAL
        while self.running:
            for fd, events in self.epoll.poll(EXPIRE_INTERVAL):
                port = self.port_by_fd.get(fd)
                if port is not None:
                    if events & select.EPOLLERR:
                        self._clear_socket_error(port)
                    self._drain(port)
                elif fd == self.listener.fileno():
                    self._accept()
                elif fd in self.controls:
                    self._serve(fd)
                # else: an fd closed by an earlier event of this same batch (a deleted port)
            now = time.monotonic()
            if now >= next_expire:
                for bridge in self.bridges.values():
                    bridge.switch.fdb.expire(now)
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
        sock = afpacket.open_packet_socket(ifname)
        self.next_port_number = max(self.next_port_number, number + 1)
        port = Port(number, bridge, config, ifname, sock)
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
        port.sock.close()

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
            result[br.name] = {
                name: {**br.switch.counters(p.number).snapshot(), "ifname": p.ifname,
                       "tx_errors": dict(p.tx_errors)}
                for name, p in br.ports.items()}
        return result

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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)


def _send(port: Port, data: bytes) -> None:
    try:
        port.sock.send(data)
    except BlockingIOError:
        port.count_tx_error("tx-queue-full")
    except OSError as err:
        port.count_tx_error(f"tx-{errno.errorcode.get(err.errno or 0, 'error')}")
