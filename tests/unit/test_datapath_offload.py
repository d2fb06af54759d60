"""Kernel flows' policy (vnet.datapath.offload) and the rule it rests on
(``Switch.unicast_egress``), without root: a kernel flow only ever repeats the decision the
full switch would take now."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_switch_rules import BCAST, A, B, C, five_port_switch, frame
from vnet.datapath.offload import ETH_HEADER, FlowCount, KernelFlow, Offload, OffloadSettings
from vnet.packet import mac_to_bytes, make_tci
from vnet.switch import DEFAULT_MAC_LIMIT, Switch


def switch() -> Switch:
    """test_switch_rules' five ports (1, 2 access VLAN 10, whose MACs age in 5 s; ...), every
    decision cached."""
    return five_port_switch(mac_limit=DEFAULT_MAC_LIMIT, cache_admit_every=1)


def offload(sw: Switch, threshold: int = 3, **settings: int) -> Offload:
    off = Offload(sw, OffloadSettings(threshold=threshold, revalidate_every=0.0, **settings))
    for port in range(1, 6):
        off.allow(port)
    return off


def steady(sw: Switch, off: Offload, in_port: int, dst: bytes, src: bytes, frames: int,
           now: float) -> None:
    """``frames`` frames through the switch, each noted as the datapath's deliverer does."""
    for _ in range(frames):
        f = frame(dst, src)
        d = sw.receive(in_port, f, None, now)
        if d.drop is None and len(d.untagged) == 1 and not d.tagged:
            off.note(in_port, f)


def learned_pair(sw: Switch, now: float = 0.0) -> None:
    sw.receive(1, frame(BCAST, A), None, now)
    sw.receive(2, frame(BCAST, B), None, now)


def installed() -> tuple[Switch, Offload, KernelFlow]:
    """A and B learned on ports 1 and 2, and the flow A -> B offloaded at 0.1."""
    sw = switch()
    off = offload(sw)
    learned_pair(sw)
    steady(sw, off, 1, B, A, 3, 0.1)
    (flow,) = off.plan(0.1).install
    return sw, off, flow


def test_a_steady_unicast_flow_is_offloaded_at_its_threshold_once() -> None:
    sw = switch()
    off = offload(sw)
    learned_pair(sw)
    steady(sw, off, 1, B, A, 2, 0.1)
    assert not off.plan(0.1)
    steady(sw, off, 1, B, A, 5, 0.2)
    plan = off.plan(0.2)
    assert [(f.in_port, f.src, f.dst, f.vid, f.out_port) for f in plan.install] == [
        (1, A, B, 10, 2)]
    assert off.pairs(1) == [(A, B)] and off.on_port(1) == 1
    steady(sw, off, 1, B, A, 5, 0.3)
    assert not off.plan(0.3)          # installed already


def test_floods_tagged_egress_and_ineligible_ports_get_no_flow() -> None:
    sw = switch()
    off = offload(sw, threshold=1)
    sw.receive(1, frame(BCAST, A), None, 0.0)
    sw.receive(4, frame(BCAST, C), make_tci(10), 0.0)   # C behind trunk 4, tagged in VLAN 10
    off.note(1, frame(B, A))          # B unknown: the switch floods (noted here regardless)
    off.note(1, frame(C, A))          # to C the frame leaves tagged
    assert not off.plan(0.1).install
    sw.receive(2, frame(BCAST, B), None, 0.0)
    off.disallow(2)
    steady(sw, off, 1, B, A, 3, 0.2)
    assert not off.plan(0.2).install  # port 2 may not have flows (a mirror, say)


def test_a_mac_move_removes_the_flow_at_the_next_plan() -> None:
    sw, off, flow = installed()
    sw.receive(5, frame(BCAST, B), None, 0.2)    # B moved to port 5 (native VLAN 10)
    assert off.plan(0.2).remove == (flow,)
    assert off.pairs(1) == []


def test_an_aged_destination_removes_the_flow() -> None:
    sw, off, flow = installed()
    sw.fdb.expire(6.0)               # both aged (5 s), A refreshed by nothing
    assert off.plan(6.0).remove == (flow,)


def test_kernel_counts_refresh_the_source_count_on_ports_and_idle_flows_go() -> None:
    sw, off, flow = installed()
    rx_before, tx_before = sw.counters(1).rx_frames, sw.counters(2).tx_frames
    assert not off.account({(1, flow.handle): FlowCount(10, 1000)}, 4.0)
    assert sw.counters(1).rx_frames == rx_before + 10
    assert sw.counters(2).tx_frames == tx_before + 10
    assert sw.fdb.lookup(10, A, 8.5) == 1      # refreshed at 4.0: still known at 8.5
    assert not off.account({(1, flow.handle): FlowCount(10, 1000)}, 13.9)
    assert off.account({(1, flow.handle): FlowCount(10, 1000)}, 14.0).remove == (flow,)


def test_kernel_bytes_get_the_ethernet_header_back() -> None:
    sw, off, flow = installed()
    before = sw.counters(1).rx_bytes
    off.account({(1, flow.handle): FlowCount(2, 100)}, 1.0)
    assert sw.counters(1).rx_bytes == before + 100 + 2 * ETH_HEADER


def test_a_refused_flow_waits_before_it_is_tried_again() -> None:
    sw, off, flow = installed()
    off.refused(flow, 0.1)
    steady(sw, off, 1, B, A, 3, 1.2)   # a new window
    assert not off.plan(1.2).install
    learned_pair(sw, 10.0)             # learned again (they aged meanwhile)
    steady(sw, off, 1, B, A, 3, 10.2)
    assert off.plan(10.2).install


def test_disallow_and_clear_hand_back_the_flows_through_the_port() -> None:
    sw = switch()
    off = offload(sw)
    learned_pair(sw)
    steady(sw, off, 1, B, A, 3, 0.1)
    steady(sw, off, 2, A, B, 3, 0.1)
    plan = off.plan(0.1)
    assert len(plan.install) == 2
    assert len(off.disallow(2).remove) == 2      # one in, one out of port 2
    assert not off.clear()


Event = tuple[int, bytes, bytes, int | None, float]
MACS = st.sampled_from([A, B, C, BCAST, mac_to_bytes("01:80:c2:00:00:00")])
EVENT = st.tuples(st.integers(1, 5), MACS, MACS, st.sampled_from([None, 10, 20, 30]),
                  st.floats(0, 2))


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENT, max_size=30), st.booleans(), st.integers(1, 5), MACS, MACS)
def test_unicast_egress_is_the_full_decision(events: list[Event], expire: bool, in_port: int,
                                             src: bytes, dst: bytes) -> None:
    """Whatever the tables hold: ``unicast_egress`` names (vid, out) exactly when the full
    decision of an untagged frame would send it untagged to that one port and only refresh
    its source, and it changes nothing."""
    sw = switch()
    now = 0.0
    for port, s, d, vid, step in events:
        now += step
        sw.receive(port, frame(d, s), None if vid is None else make_tci(vid), now)
    if expire:
        sw.fdb.expire(now)
    before = sw.fdb.state()
    egress = sw.unicast_egress(in_port, src, dst, now)
    assert sw.fdb.state() == before
    generation = sw.fdb.generation
    decision = sw.receive(in_port, frame(dst, src), None, now)
    simple = (decision.drop is None and len(decision.untagged) == 1 and not decision.tagged
              and not dst[0] & 1 and sw.fdb.generation == generation)
    if egress is not None:
        assert simple and egress == (decision.vid, decision.untagged[0])
    elif simple and sw.fdb.lookup(decision.vid, dst, now) == decision.untagged[0]:
        # a known destination, one untagged way out, nothing learned: it must be offloadable
        raise AssertionError(f"unicast_egress refused {decision}")


def test_an_in_port_gets_no_more_flows_than_its_socket_filter_holds() -> None:
    sw = switch()
    off = offload(sw, threshold=1, max_per_port=1)
    learned_pair(sw)
    sw.receive(5, frame(BCAST, C), None, 0.0)   # C behind trunk 5, untagged: native VLAN 10
    steady(sw, off, 1, B, A, 1, 0.1)
    steady(sw, off, 1, C, A, 1, 0.1)
    steady(sw, off, 2, A, B, 1, 0.1)
    plan = off.plan(0.1)
    assert sorted((f.in_port, f.dst) for f in plan.install) == [(1, B), (2, A)]
    assert off.pairs(1, leave_out={(1, B + A)}) == []


def test_a_sweep_of_new_flows_is_counted_only_up_to_the_candidates_bound() -> None:
    sw = switch()
    off = offload(sw, threshold=2, max_candidates=1)
    learned_pair(sw)
    sw.receive(5, frame(BCAST, C), None, 0.0)       # C behind trunk 5, in VLAN 10
    steady(sw, off, 1, C, A, 1, 0.1)               # the window's one candidate
    steady(sw, off, 1, B, A, 5, 0.1)               # not counted: the bound is reached
    assert [f.dst for f in off.plan(0.1).install] == []
    steady(sw, off, 1, B, A, 2, 1.2)               # a new window
    assert [f.dst for f in off.plan(1.2).install] == [B]
