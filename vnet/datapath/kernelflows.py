"""Kernel flows, the edge: an ``Offload``'s plans applied to the kernel (``vnet.datapath.offload``
is the policy, pure).

A kernel flow of in-port P is two things on P's netdev:

* a tc cls_bpf filter on its ingress (a clsact qdisc vnet puts there) that matches the
  flow's untagged frames (``cbpf.flow_classifier``) and redirects them with act_mirred to
  the out-port's netdev (``vnet.host.tcflow``);
* an entry in the socket filter of the datapath's receive socket on P (``cbpf.reject_flows``):
  a packet socket sees every frame *before* tc ingress redirects it, so without the filter
  each redirected frame would also be copied into the ring and forwarded a second time.

Order keeps frames from being lost in between: on install the tc filter goes first, then
the socket filter (for a moment a frame may go both ways: a duplicate, which TCP and ping
take in their stride); on removal the socket filter goes first, then the tc filter.

Only netdevs that are vnet's own get a clsact qdisc (vnetd says so per port: never a
bridged network's uplink, whose tc configuration is the host's), and it is taken away when
the port goes.  A kernel without cls_bpf or act_mirred is found out on the first port
(``probe``): kernel flows are then off, with the reason in ``reason``, and every frame goes
through Python as before.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Container, Iterable, Mapping
from typing import Protocol

from vnet.datapath.offload import FlowCount, KernelFlow, Offload, Plan
from vnet.errors import HostError
from vnet.host import cbpf
from vnet.host.afpacket import interface_index

log = logging.getLogger("vnet.datapath")

PRIO = 1   # every kernel flow's filter priority (one chain; handles tell them apart)


class FilterStats(Protocol):
    @property
    def packets(self) -> int: ...
    @property
    def bytes(self) -> int: ...


class TcAdapter(Protocol):
    """What this edge needs of ``vnet.host.tcflow`` (a Protocol, so that tests may stand in
    for the kernel where it cannot be reached)."""

    def reset_ingress(self, ifindex: int) -> None: ...
    def remove_ingress(self, ifindex: int) -> None: ...
    def add_redirect(self, ifindex: int, handle: int, prio: int, program: bytes,
                     to_ifindex: int) -> None: ...
    def delete_filter(self, ifindex: int, handle: int, prio: int) -> None: ...
    def filter_stats(self, ifindex: int) -> Mapping[tuple[int, int], FilterStats]: ...
    def probe(self, ifindex: int) -> str | None: ...
    def close(self) -> None: ...


class FilteredPort(Protocol):
    """What this edge needs of a datapath port."""

    number: int
    ifname: str
    sock: socket.socket

    def set_rx_filter(self, program: tuple[cbpf.Insn, ...] | None) -> None: ...


class KernelFlows:
    """The kernel flows of one datapath, on the ports ``prepare`` took."""

    def __init__(self, tc: TcAdapter) -> None:
        self.tc = tc
        self.ifindex: dict[int, int] = {}   # prepared port number -> its netdev's ifindex
        self.reason: str | None = None      # why kernel flows are off, once they are
        self._probed = False

    @property
    def enabled(self) -> bool:
        return self.reason is None

    def prepare(self, port: FilteredPort) -> bool:
        """A fresh clsact qdisc on ``port``'s netdev (whatever an earlier datapath left
        there goes); False: the port gets no kernel flows (the reason is logged)."""
        if not self.enabled:
            return False
        try:
            ifindex = interface_index(port.sock, port.ifname)   # (PyPy: no if_nametoindex)
            if not self._probed:
                self._probed = True
                self.reason = self.tc.probe(ifindex)
                if self.reason is not None:
                    log.warning("kernel flows are off: %s", self.reason)
                    return False
            self.tc.reset_ingress(ifindex)
        except (HostError, OSError) as err:
            log.warning("port %s gets no kernel flows: %s", port.ifname, err)
            return False
        self.ifindex[port.number] = ifindex
        return True

    def forget(self, number: int) -> None:
        """Port ``number`` is going: its qdisc (and every filter on it) with it."""
        ifindex = self.ifindex.pop(number, None)
        if ifindex is not None:
            try:
                self.tc.remove_ingress(ifindex)
            except HostError as err:
                log.warning("cannot remove the kernel flows of ifindex %d: %s", ifindex, err)

    def apply(self, offload: Offload, plan: Plan, ports: Mapping[int, FilteredPort],
              now: float) -> None:
        """Tell the kernel ``plan`` (``offload`` already holds it as done): flows the kernel
        refuses are handed back to ``offload.refused``."""
        if not plan:
            return
        installing = {flow.key for flow in plan.install}
        self._filter_sockets(offload, {flow.in_port for flow in plan.remove}, ports, now,
                             leave_out=installing)
        for flow in plan.remove:
            self._delete(flow)
        installed_on: set[int] = set()
        for flow in plan.install:
            if flow.key not in offload.flows:
                continue   # its in-port's socket filter failed just now
            if self._install(flow):
                installed_on.add(flow.in_port)
            else:
                offload.refused(flow, now)
        self._filter_sockets(offload, installed_on, ports, now)

    def _install(self, flow: KernelFlow) -> bool:
        source, target = self.ifindex.get(flow.in_port), self.ifindex.get(flow.out_port)
        if source is None or target is None:
            return False
        program = cbpf.encode(cbpf.flow_classifier(flow.src, flow.dst))
        try:
            self.tc.add_redirect(source, flow.handle, PRIO, program, target)
        except HostError as err:
            log.warning("the kernel refused a flow %s -> %s: %s", flow.src.hex(":"),
                        flow.dst.hex(":"), err)
            return False
        return True

    def _delete(self, flow: KernelFlow) -> None:
        source = self.ifindex.get(flow.in_port)
        if source is None:
            return   # its port is gone, and its qdisc with it
        try:
            self.tc.delete_filter(source, flow.handle, PRIO)
        except HostError as err:
            log.warning("cannot remove a kernel flow %s -> %s: %s", flow.src.hex(":"),
                        flow.dst.hex(":"), err)

    def _filter_sockets(self, offload: Offload, in_ports: Iterable[int],
                        ports: Mapping[int, FilteredPort], now: float,
                        leave_out: Container[tuple[int, bytes]] = ()) -> None:
        """Each of ``in_ports``'s receive sockets keeps out the frames the kernel redirects
        from it now (not yet those of ``leave_out``), and only those.  A socket the kernel
        will not filter gets no filter and its port no flows: its frames all come to Python
        (never lost, never twice)."""
        for number in in_ports:
            port = ports.get(number)
            if port is None:
                continue
            pairs = offload.pairs(number, leave_out)
            try:
                port.set_rx_filter(cbpf.reject_flows(pairs) if pairs else None)
            except HostError as err:
                log.warning("port %s: its kernel flows are removed: %s", port.ifname, err)
                with contextlib.suppress(HostError):
                    port.set_rx_filter(None)   # first: a frame goes twice rather than not
                dropped = [entry.flow for entry in offload.flows.values()
                           if entry.flow.in_port == number]
                for flow in dropped:
                    offload.refused(flow, now)
                    self._delete(flow)

    def counts(self, offload: Offload) -> dict[tuple[int, int], FlowCount]:
        """The kernel's counts of ``offload``'s flows, by (in-port, handle)."""
        found: dict[tuple[int, int], FlowCount] = {}
        for number in {entry.flow.in_port for entry in offload.flows.values()}:
            ifindex = self.ifindex.get(number)
            if ifindex is None:
                continue
            try:
                stats = self.tc.filter_stats(ifindex)
            except HostError as err:
                log.warning("cannot read the kernel flows' counts of ifindex %d: %s",
                            ifindex, err)
                continue
            found.update(((number, handle), FlowCount(s.packets, s.bytes))
                         for (prio, handle), s in stats.items() if prio == PRIO)
        return found

    def close(self) -> None:
        for number in list(self.ifindex):
            self.forget(number)
        self.tc.close()
