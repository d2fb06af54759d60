"""The kernel-flows edge (vnet.datapath.kernelflows) against a stand-in for tc and ports: the
order of its steps, which is what keeps frames from being lost or kept twice, and what it
does when the kernel says no.  The real kernel: tests/integration/test_kernel_flows.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.test_datapath_offload import installed, learned_pair, steady
from tests.unit.test_switch_rules import A, B
from vnet.datapath.kernelflows import PRIO, KernelFlows
from vnet.datapath.offload import Plan
from vnet.errors import HostError
from vnet.host import cbpf


@dataclass(frozen=True)
class Stats:
    packets: int
    bytes: int


@dataclass
class FakeTc:
    """Records each call in ``log`` (shared with the ports); ``refuse`` names calls to fail."""

    log: list[tuple[object, ...]]
    refuse: set[str] = field(default_factory=set)
    reason: str | None = None
    stats: dict[int, dict[tuple[int, int], Stats]] = field(default_factory=dict)

    def _call(self, *what: object) -> None:
        self.log.append(what)
        if what[0] in self.refuse:
            raise HostError(f"refused {what[0]}")

    def reset_ingress(self, ifindex: int) -> None:
        self._call("reset", ifindex)

    def remove_ingress(self, ifindex: int) -> None:
        self._call("remove", ifindex)

    def add_redirect(self, ifindex: int, handle: int, prio: int, program: bytes,
                     to_ifindex: int) -> None:
        self._call("add", ifindex, handle, to_ifindex)

    def delete_filter(self, ifindex: int, handle: int, prio: int) -> None:
        self._call("delete", ifindex, handle)

    def filter_stats(self, ifindex: int) -> dict[tuple[int, int], Stats]:
        return self.stats.get(ifindex, {})

    def probe(self, ifindex: int) -> str | None:
        self._call("probe", ifindex)
        return self.reason

    def close(self) -> None:
        self._call("close")


@dataclass
class FakePort:
    number: int
    ifname: str
    log: list[tuple[object, ...]]
    fail: bool = False
    sock: Any = None
    rx_filter: tuple[cbpf.Insn, ...] | None = None

    def set_rx_filter(self, program: tuple[cbpf.Insn, ...] | None) -> None:
        self.log.append(("filter", self.number, None if program is None else len(program)))
        if self.fail and program is not None:
            raise HostError("the kernel refused a socket filter")
        self.rx_filter = program


ONE_PAIR = len(cbpf.reject_flows([(A, B)]))   # a socket filter's length for one flow


def edge(monkeypatch: pytest.MonkeyPatch, reason: str | None = None
         ) -> tuple[KernelFlows, FakeTc, dict[int, FakePort]]:
    """Ports 1 and 2 prepared on ifindexes 101 and 102."""
    monkeypatch.setattr("vnet.datapath.kernelflows.interface_index",
                        lambda _sock, name: 100 + int(name[1:]))
    log: list[tuple[object, ...]] = []
    tc = FakeTc(log, reason=reason)
    flows = KernelFlows(tc)
    ports = {n: FakePort(n, f"p{n}", log) for n in (1, 2)}
    for port in ports.values():
        flows.prepare(port)
    log.clear()
    return flows, tc, ports


def test_a_flow_is_redirected_before_its_frames_are_kept_out_of_the_ring(
        monkeypatch: pytest.MonkeyPatch) -> None:
    flows, tc, ports = edge(monkeypatch)
    _sw, off, flow = installed()
    flows.apply(off, Plan(install=(flow,)), ports, 0.1)
    assert tc.log == [("add", 101, flow.handle, 102), ("filter", 1, ONE_PAIR)]
    tc.log.clear()
    flows.apply(off, off.disallow(2), ports, 0.2)
    assert tc.log == [("filter", 1, None), ("delete", 101, flow.handle)]


def test_the_socket_filter_of_a_port_losing_and_gaining_flows_leaves_out_the_new_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    flows, tc, ports = edge(monkeypatch)
    sw, off, old = installed()
    flows.apply(off, Plan(install=(old,)), ports, 0.1)
    sw.fdb.flush_port(2)
    learned_pair(sw, 0.3)                               # B again on 2: generation moved
    steady(sw, off, 2, A, B, 3, 0.3)                    # and a flow B -> A on port 2
    plan = off.plan(0.3)
    assert plan.install and not plan.remove             # A -> B still holds: kept
    tc.log.clear()
    flows.apply(off, plan, ports, 0.3)
    assert tc.log == [("add", 102, plan.install[0].handle, 101), ("filter", 2, ONE_PAIR)]


def test_a_flow_the_kernel_refuses_stays_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    flows, tc, ports = edge(monkeypatch)
    tc.refuse.add("add")
    sw, off, flow = installed()
    flows.apply(off, Plan(install=(flow,)), ports, 0.1)
    assert not off.flows and ports[1].rx_filter is None
    steady(sw, off, 1, B, A, 3, 0.2)
    assert not off.plan(0.2).install                    # not tried again at once


def test_a_socket_that_cannot_be_filtered_loses_its_flows_unfiltered_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    flows, tc, ports = edge(monkeypatch)
    ports[1].fail = True
    _sw, off, flow = installed()
    flows.apply(off, Plan(install=(flow,)), ports, 0.1)
    assert tc.log == [("add", 101, flow.handle, 102), ("filter", 1, ONE_PAIR),
                      ("filter", 1, None), ("delete", 101, flow.handle)]
    assert not off.flows


def test_counts_are_read_per_in_port_and_only_at_its_priority(
        monkeypatch: pytest.MonkeyPatch) -> None:
    flows, tc, _ports = edge(monkeypatch)
    _sw, off, flow = installed()
    tc.stats[101] = {(PRIO, flow.handle): Stats(5, 500), (PRIO + 1, flow.handle): Stats(9, 9)}
    counts = flows.counts(off)
    assert {k: (c.packets, c.octets) for k, c in counts.items()} == {(1, flow.handle): (5, 500)}


def test_a_kernel_without_the_parts_turns_kernel_flows_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    flows, tc, _ports = edge(monkeypatch, reason="the kernel has no cls_bpf")
    assert not flows.enabled and flows.reason == "the kernel has no cls_bpf"
    assert flows.ifindex == {}
    assert not flows.prepare(FakePort(3, "p3", tc.log)) and tc.log == []


def test_ports_are_reset_when_taken_and_cleaned_when_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vnet.datapath.kernelflows.interface_index", lambda _sock, _name: 7)
    log: list[tuple[object, ...]] = []
    flows = KernelFlows(FakeTc(log))
    assert flows.prepare(FakePort(1, "p1", log))
    assert log == [("probe", 7), ("reset", 7)]
    flows.close()
    assert log[2:] == [("remove", 7), ("close",)]
