"""The datapath: one process, one epoll loop, the learning switch between its ports.

It makes no network-configuration calls: vnetd tells it over the control socket
(``vnet.datapath.control``, requests of ``vnet.datapath.protocol``) which bridges (one per
lab), VLANs and ports exist.  The pieces:

* ``vnet.datapath.ports``: port I/O (PACKET_MMAP rings or plain packet sockets), batched;
* ``vnet.switch``: the switching decision (pure);
* ``vnet.datapath.polling``: when the loop spins and how long it sleeps (adaptive polling),
  and the per-port budget fitted to a time slice (fairness between ports);
* ``vnet.datapath.offload`` and ``vnet.datapath.kernelflows``: kernel flows, the switch's
  steady unicast decisions repeated by the kernel (tc redirects) until they change;
* here: the loop (epoll, the ports' turns, the once-a-second timer for MAC aging and ring
  upkeep), ``_deliverer``, the one place a decision is applied, whatever
  the ports' I/O, and the handlers of the control requests, which own bridges and ports.

Adding a control request: the dataclass in ``protocol``, a method here, and an entry in
``Datapath.handlers`` (a unit test checks that every request has one).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from vnet.datapath import protocol
from vnet.datapath.control import ControlServer, Stream
from vnet.datapath.kernelflows import KernelFlows
from vnet.datapath.mirror import Mirror, install
from vnet.datapath.offload import Offload, OffloadSettings, Plan
from vnet.datapath.polling import PollPolicy, PollSettings, next_budget, turn_order
from vnet.datapath.ports import HOLE_GRACE, PORT_TYPES, Port, Schedule
from vnet.errors import DatapathError
from vnet.host import cbpf, tcflow
from vnet.packet import insert_tag, split_outer_tag
from vnet.packet.vnethdr import VNET_HDR_LEN, shift_vnet_hdr
from vnet.switch import Forward, Switch

if TYPE_CHECKING:
    from vnet.datapath.ports import Deliver

log = logging.getLogger("vnet.datapath")

RX_BUDGET = 64  # frames of one port per turn at most: one busy port cannot starve others
RX_SLICE = 150e-6  # seconds one port's turn should take at most (its budget shrinks to fit)
EXPIRE_INTERVAL = 1.0
IO_MODES = tuple(PORT_TYPES)  # ring (the default), socket
BUSY_POLL = 100e-6  # seconds of polling without sleeping after a wake-up that moved frames
FINE_SLEEP = 2e-3   # sleeps shorter than this wait in select() (µs) rather than epoll (ms)
PR_SET_TIMERSLACK = 29
OFFLOAD_EVERY = 5e-3  # while frames move, kernel flows are planned at most this often


@dataclass
class Bridge:
    name: str
    switch: Switch = field(default_factory=Switch)
    ports: dict[str, Port] = field(default_factory=dict)
    offload: Offload | None = None   # its kernel flows' policy, if the datapath has them


class Datapath:
    """The datapath; ``io`` names the port type of netdev ports: "ring" (PACKET_MMAP rings,
    the default) or "socket" (a ``recvmsg``/``send`` per frame, the reference and the
    fallback)."""

    def __init__(self, control_path: str, io: str = "ring",
                 busy_poll: float = BUSY_POLL, polling: PollSettings | None = None,
                 kernel_flows: bool = True) -> None:
        if io not in PORT_TYPES:
            raise ValueError(f"io must be one of {IO_MODES}, not {io!r}")
        self.port_type = PORT_TYPES[io]
        self.polling = PollPolicy(replace(polling or PollSettings(), linger=busy_poll))
        self.budgets: dict[int, int] = {}     # port number -> frames of its next turn
        self.schedule = Schedule()
        self.epoll = select.epoll()
        self.bridges: dict[str, Bridge] = {}
        self.ports: dict[int, Port] = {}          # by port number
        self.port_by_fd: dict[int, Port] = {}
        self.next_port_number = 1
        self.running = True
        self.kernel_flows = _kernel_flows() if kernel_flows else None
        self.next_offload = 0.0   # when kernel flows are planned next while frames move
        self.max_pairs = cbpf.pairs_that_fit(cbpf.optmem_max())   # kernel flows per in-port
        # Removed ports' sockets are closed here, off the loop (``Port.release``); the
        # threads overlap the kernel's grace periods, so a lab's down closes its ports at once.
        self.closer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="port-close")
        self.opener = ThreadPoolExecutor(max_workers=8, thread_name_prefix="port-open")
        self.opened_ahead: dict[str, Any] = {}   # ifname -> what open_ahead made for it
        self.handlers: dict[type[protocol.Request], Callable[..., Any]] = {
            protocol.Ping: self.ping, protocol.AddBridge: self.add_bridge,
            protocol.DelBridge: self.del_bridge, protocol.AddPort: self.add_port,
            protocol.DelPort: self.del_port, protocol.AddStatic: self.add_static,
            protocol.GetFdb: self.fdb, protocol.GetFdbSize: self.fdb_size,
            protocol.FlushFdb: self.flush_fdb, protocol.GetStats: self.stats,
            protocol.Trace: self.trace, protocol.Inject: self.inject,
            protocol.Mirror: self.mirror, protocol.Shutdown: self.shutdown,
            protocol.Lifeline: self.lifeline}
        self.control = ControlServer(control_path, self.epoll, self.handle,
                                     self.schedule.dirty, prepare=self.open_ports_ahead)

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        monotonic, poll, wait = time.monotonic, self.epoll.poll, select.select
        epoll_fd = [self.epoll.fileno()]
        schedule, port_by_fd, control = self.schedule, self.port_by_fd, self.control
        policy, budgets = self.polling, self.budgets
        _fine_timer_slack()
        now = monotonic()
        next_expire = now + EXPIRE_INTERVAL
        while self.running:
            # spin (timeout 0) where frames are likely, sleep otherwise (vnet.datapath.polling)
            timeout = 0.0
            if not schedule.backlog:
                cap = HOLE_GRACE if schedule.holes else EXPIRE_INTERVAL
                asked = policy.sleep(now)
                timeout = cap if asked is None or asked > cap else asked
            if 0.0 < timeout < FINE_SLEEP:   # epoll's timeout is in whole milliseconds
                wait(epoll_fd, (), (), timeout)
                timeout = 0.0
            events = poll(timeout)
            now = monotonic()
            policy.woke(now)
            ready: list[Port] = []
            for fd, mask in events:
                port = port_by_fd.get(fd)
                if port is not None:
                    if mask & select.EPOLLERR:
                        port.socket_error()
                    ready.append(port)
                else:
                    control.on_event(fd, mask)
            drained = turn_order(ready, schedule.backlog) if len(ready) > 1 else ready
            for port in drained:
                self._drain(port, budgets)
            if schedule.holes or schedule.backlog:
                self._revisit(drained)
            if schedule.dirty:
                for queued in schedule.dirty:   # ports, and capture streams
                    queued.flush()
                schedule.dirty.clear()
            arrived = now
            now = monotonic()
            if drained:
                policy.moved(arrived, now)
                if now >= self.next_offload:
                    self._plan_kernel_flows(now)
            if now >= next_expire:
                self._every_second(now)
                next_expire = now + EXPIRE_INTERVAL
        self.close()

    def _drain(self, port: Port, budgets: dict[int, int]) -> None:
        """One turn of ``port``: up to its budget of frames, the budget then fitted to the
        time the turn took (``polling.next_budget``), so that a port of GSO super-frames
        does not hold the others' small frames for milliseconds; a port may also end its
        turn early at ``Schedule.turn_end`` (frames kept coming while it forwarded).  What
        the turn switched is flushed at once: a reply switched here does not wait for the
        next port's turn (a bulk port's, ~150 µs) in the send ring."""
        schedule = self.schedule
        budget = budgets.get(port.number, RX_BUDGET)
        start = time.monotonic()
        schedule.turn_end = start + RX_SLICE
        port.drain(start, budget)
        exhausted = port in schedule.backlog
        if exhausted or budget < RX_BUDGET:
            budgets[port.number] = next_budget(budget, exhausted, time.monotonic() - start,
                                               RX_SLICE, RX_BUDGET)
        if schedule.dirty:
            for queued in schedule.dirty:
                queued.flush()
            schedule.dirty.clear()

    def _deliverer(self, br: Bridge, number: int) -> Deliver:
        """Where port ``number`` of ``br`` delivers what it receives: the frame is
        switched and emitted where the decision says.  The one code path that applies a
        decision, for every port type.  A frame of a steady flow (its decision cached) that
        came untagged and went untagged out of one port is noted as a kernel flow's
        candidate; a sweep of new flows never reaches ``note``."""
        receive, ports = br.switch.receive, self.ports
        note = br.offload.note if br.offload is not None else None

        def deliver(hdr: bytes, frame: bytes, tci: int | None, now: float) -> Forward:
            if tci is None and frame[12:14] == b"\x81\x00":  # the kernel left the tag in
                frame, tci = split_outer_tag(frame)
                hdr = shift_vnet_hdr(hdr, -4)
            decision = receive(number, frame, tci, now)
            if decision.drop is not None:
                return decision
            for out in decision.untagged:
                ports[out].emit(hdr, frame)
            if decision.tagged:
                tagged_hdr = shift_vnet_hdr(hdr, 4)
                tagged = insert_tag(frame, decision.tci)
                for out in decision.tagged:
                    ports[out].emit(tagged_hdr, tagged)
            elif (note is not None and decision.cached and tci is None
                    and len(decision.untagged) == 1):
                note(number, frame)   # a steady flow's frame: a kernel flow's candidate
            return decision  # for inject: where it went

        return deliver

    def _revisit(self, drained: list[Port]) -> None:
        """Drain the ports that may hold frames without the kernel waking us and had no turn
        in this round yet: one left with frames when its budget ran out, one waiting at an
        empty ring slot.  (The kernel signals a ring readable only while the slot it filled
        last is taken.)"""
        schedule, budgets = self.schedule, self.budgets
        for port in list(schedule.backlog | schedule.holes):
            if port not in drained:
                self._drain(port, budgets)

    def _every_second(self, now: float) -> None:
        self._account_kernel_flows(now)   # before aging: a running flow keeps its source
        for bridge in self.bridges.values():
            bridge.switch.fdb.expire(now)
        self._plan_kernel_flows(now)
        for port in list(self.ports.values()):
            if port.maintain(now):
                self._unregister(port)
                port.rebuild()
                self._register(port)

    # ---- kernel flows (vnet.datapath.offload, vnet.datapath.kernelflows) -------------------

    def _plan_kernel_flows(self, now: float) -> None:
        """What each switch's kernel flows should be now, told to the kernel."""
        self.next_offload = now + OFFLOAD_EVERY
        for br in self.bridges.values():
            if br.offload is not None:
                self._apply(br.offload, br.offload.plan(now), now)

    def _account_kernel_flows(self, now: float) -> None:
        kernel_flows = self.kernel_flows
        if kernel_flows is None:
            return
        for br in self.bridges.values():
            offload = br.offload
            if offload is not None and offload.flows:
                self._apply(offload, offload.account(kernel_flows.counts(offload), now), now)

    def _allow_kernel_flows(self, br: Bridge, port: Port) -> None:
        """``port`` may have kernel flows again, if its netdev was prepared for them."""
        if (br.offload is not None and self.kernel_flows is not None
                and port.number in self.kernel_flows.ifindex and not port.mirrors):
            br.offload.allow(port.number)

    def _apply(self, offload: Offload, plan: Plan, now: float) -> None:
        if plan and self.kernel_flows is not None:
            self.kernel_flows.apply(offload, plan, self.ports, now)

    def _register(self, port: Port) -> None:
        self.port_by_fd[port.fileno()] = port
        self.epoll.register(port.fileno(), select.EPOLLIN)

    def _unregister(self, port: Port) -> None:
        del self.port_by_fd[port.fileno()]
        self.epoll.unregister(port.fileno())

    # ---- control requests (see vnet.datapath.protocol); all idempotent ------------------------

    def handle(self, request: protocol.Request, stream: Stream | None = None) -> Any:
        handler = self.handlers[type(request)]
        result = handler(request) if stream is None else handler(request, stream)
        self._plan_kernel_flows(time.monotonic())   # the tables may have changed under them
        return result

    @contextmanager
    def open_ports_ahead(self, requests: list[protocol.Request]) -> Iterator[None]:
        """While a batch of requests is answered: the new ports it adds opened beforehand,
        side by side in threads (vnetd sends a lab's ports at once, and each ring's setup
        waits for a grace period that they can then share); what is not used is closed."""
        new = [r.ifname for r in requests if isinstance(r, protocol.AddPort)
               and r.bridge in self.bridges and r.name not in self.bridges[r.bridge].ports]
        if len(new) > 1:
            for ifname, opened in zip(new, self.opener.map(self._open_ahead, new), strict=True):
                if opened is not None:
                    self.opened_ahead[ifname] = opened
        try:
            yield
        finally:
            for opened in self.opened_ahead.values():
                self.closer.submit(opened.close)
            self.opened_ahead.clear()

    def _open_ahead(self, ifname: str) -> Any:
        try:
            return self.port_type.open_ahead(ifname)
        except OSError:
            return None   # add_port tries again, and reports what is wrong

    def ping(self, _request: protocol.Ping) -> dict[str, Any]:
        kernel_flows = self.kernel_flows
        return {"pid": os.getpid(), "bridges": sorted(self.bridges),
                "kernel_flows": {"enabled": kernel_flows is not None and kernel_flows.enabled,
                                 "reason": "off by configuration" if kernel_flows is None
                                 else kernel_flows.reason,
                                 "flows": sum(len(br.offload.flows) for br in
                                              self.bridges.values() if br.offload)}}

    def add_bridge(self, request: protocol.AddBridge) -> None:
        br = self.bridges.get(request.bridge)
        if br is None:
            br = self.bridges[request.bridge] = Bridge(request.bridge)
            if self.kernel_flows is not None:
                br.offload = Offload(br.switch, OffloadSettings(max_per_port=self.max_pairs))
        for vlan in request.vlans:
            br.switch.add_vlan(vlan)

    def del_bridge(self, request: protocol.DelBridge) -> None:
        br = self.bridges.get(request.bridge)
        if br is None:
            return
        for name in list(br.ports):
            self._del_port(br, name)
        del self.bridges[request.bridge]

    def add_port(self, request: protocol.AddPort) -> dict[str, Any]:
        br = self._bridge(request.bridge)
        existing = br.ports.get(request.name)
        number = existing.number if existing else self.next_port_number
        config = request.config(number)
        if existing is not None:
            if existing.config == config and existing.ifname == request.ifname:
                return {"number": number}
            self._del_port(br, request.name)
        opened = self.opened_ahead.pop(request.ifname, None)   # only a type that opens ahead
        try:
            port = self.port_type(number, config, request.ifname, self.schedule,
                                  self._deliverer(br, number),
                                  **({} if opened is None else {"opened": opened}))
        except OSError as err:
            raise DatapathError(f"cannot open port {request.name!r} on {request.ifname!r}: "
                                f"{err.strerror or err}") from None
        self.next_port_number = max(self.next_port_number, number + 1)
        br.switch.add_port(config)
        br.ports[request.name] = port
        self.ports[number] = port
        self._register(port)
        if request.kernel_flows and self.kernel_flows is not None:
            self.kernel_flows.prepare(port)
            self._allow_kernel_flows(br, port)
        log.info("port %s/%s on %s added as %d", br.name, request.name, request.ifname, number)
        return {"number": number}

    def del_port(self, request: protocol.DelPort) -> None:
        br = self.bridges.get(request.bridge)
        if br is not None:
            self._del_port(br, request.name)

    def _del_port(self, br: Bridge, name: str) -> None:
        port = br.ports.pop(name, None)
        if port is None:
            return
        for mirror in port.mirrors:
            mirror.end(f"port {name} was removed")
        install(port, ())
        if br.offload is not None:
            self._apply(br.offload, br.offload.disallow(port.number), time.monotonic())
            if self.kernel_flows is not None:
                self.kernel_flows.forget(port.number)
        br.switch.remove_port(port.number)
        del self.ports[port.number]
        self.budgets.pop(port.number, None)
        self._unregister(port)
        port.detach()
        self.closer.submit(_release, port)

    def add_static(self, request: protocol.AddStatic) -> None:
        br = self._bridge(request.bridge)
        port = br.ports.get(request.port)
        if port is None:
            raise DatapathError(f"bridge {request.bridge!r} has no port {request.port!r}")
        br.switch.fdb.add_static(request.vid, request.mac, port.number)

    def fdb(self, request: protocol.GetFdb) -> list[dict[str, Any]]:
        br = self._bridge(request.bridge)
        names = {p.number: p.config.name for p in br.ports.values()}
        return [{"vlan": e.vid, "mac": e.mac, "port": names.get(e.port, str(e.port)),
                 "age": round(e.age, 1), "static": e.static}
                for e in br.switch.fdb.entries(time.monotonic())]

    def fdb_size(self, request: protocol.GetFdbSize) -> int:
        return len(self._bridge(request.bridge).switch.fdb)

    def flush_fdb(self, request: protocol.FlushFdb) -> None:
        br = self._bridge(request.bridge)
        for port in br.ports.values():
            br.switch.fdb.flush_port(port.number)

    def stats(self, request: protocol.GetStats) -> dict[str, dict[str, Any]]:
        return {br.name: {name: _with_kernel_flows(
                              port.stats(br.switch.counters(port.number).snapshot()),
                              br.offload, port.number)
                          for name, port in br.ports.items()}
                for br in self.bridges.values()
                if request.bridge is None or br.name == request.bridge}

    def trace(self, request: protocol.Trace) -> dict[str, Any]:
        br, port = self._port(request.bridge, request.port)
        frame, tci = split_outer_tag(bytes.fromhex(request.frame))  # as ``deliver`` does
        return br.switch.explain(port.number, frame, tci, time.monotonic()).to_json()

    def inject(self, request: protocol.Inject) -> dict[str, Any]:
        br, port = self._port(request.bridge, request.port)
        decision = port.deliver(bytes(VNET_HDR_LEN), bytes.fromhex(request.frame), None,
                                time.monotonic())
        assert isinstance(decision, Forward)
        names = {p.number: name for name, p in br.ports.items()}
        egress = [{"port": names[n], "tagging": "untagged"} for n in decision.untagged] + [
            {"port": names[n], "tagging": "tagged"} for n in decision.tagged]
        return {"drop": decision.drop, "vlan": None if decision.drop else decision.vid,
                "egress": egress}

    def mirror(self, request: protocol.Mirror, stream: Stream | None = None
               ) -> dict[str, Any]:
        """Copies of what the port receives and sends go to ``stream`` until its reader
        closes it (``vnet.datapath.mirror``); then the mirror is removed."""
        if stream is None:
            raise DatapathError("mirror needs a connection of its own")
        br, port = self._port(request.bridge, request.port)
        mirror = Mirror(request.direction, stream)

        def closed() -> None:
            if mirror in port.mirrors:
                install(port, tuple(m for m in port.mirrors if m is not mirror))
                if not port.mirrors:
                    self._allow_kernel_flows(br, port)
                log.info("mirror of %s/%s removed (%d frames, %d dropped)", request.bridge,
                         request.port, mirror.frames, mirror.dropped)
            mirror.end("the capture ended")

        stream.on_close = closed
        if br.offload is not None:   # a capture sees every frame: none may bypass Python
            self._apply(br.offload, br.offload.disallow(port.number), time.monotonic())
        install(port, (*port.mirrors, mirror))
        log.info("mirror of %s/%s (%s) added", request.bridge, request.port, request.direction)
        return {"number": port.number}

    def _port(self, bridge: str, name: str) -> tuple[Bridge, Port]:
        br = self._bridge(bridge)
        port = br.ports.get(name)
        if port is None:
            raise DatapathError(f"bridge {bridge!r} has no port {name!r} (it has: "
                                f"{', '.join(sorted(br.ports)) or 'none'})")
        return br, port

    def lifeline(self, _request: protocol.Lifeline) -> dict[str, Any]:
        """The connection itself is the lifeline (``ControlServer`` keeps it); the pid says
        to the sender which process holds it."""
        return {"pid": os.getpid()}

    def shutdown(self, _request: protocol.Shutdown) -> None:
        self.running = False

    def _bridge(self, name: str) -> Bridge:
        try:
            return self.bridges[name]
        except KeyError:
            raise DatapathError(f"no bridge {name!r} in the datapath") from None

    def close(self) -> None:
        for name in list(self.bridges):
            self.del_bridge(protocol.DelBridge(name))
        if self.kernel_flows is not None:
            self.kernel_flows.close()
        self.control.close()
        self.epoll.close()
        self.opener.shutdown(wait=True)
        self.closer.shutdown(wait=True)


def _kernel_flows() -> KernelFlows | None:
    """The kernel-flows edge; None where no rtnetlink socket can be had (logged: every
    frame goes through Python then)."""
    try:
        return KernelFlows(tcflow.Tc().open())
    except OSError as err:
        log.warning("kernel flows are off: %s", err)
        return None


def _with_kernel_flows(stats: dict[str, Any], offload: Offload | None,
                       number: int) -> dict[str, Any]:
    if offload is not None:
        stats["kernel_flows"] = offload.on_port(number)
    return stats


def _fine_timer_slack() -> None:
    """Timed sleeps end within a microsecond of their deadline rather than the default
    50 µs slack (the predicted polling windows are a few tens of µs); best effort."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def _release(port: Port) -> None:
    """``port.release()`` in a closer thread: a failure is logged, never lost silently."""
    try:
        port.release()
    except Exception:
        log.exception("closing the sockets of removed port %s failed", port.ifname)
