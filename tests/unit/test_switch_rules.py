"""The 802.1Q switching decision, rule by rule, without root: frames in, decisions out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.packet import insert_tag, mac_to_bytes, make_tci, split_outer_tag
from vnet.packet.vnethdr import VnetHdr, parse_vnet_hdr, shift_vnet_hdr
from vnet.switch import PortConfig, Switch, VlanOptions

BCAST = b"\xff" * 6
A, B, C = (mac_to_bytes(f"02:00:00:00:00:0{i}") for i in (1, 2, 3))
IPV4 = b"\x08\x00"
PAYLOAD = b"\x45" + bytes(40)


def frame(dst: bytes, src: bytes, ethertype: bytes = IPV4) -> bytes:
    return dst + src + ethertype + PAYLOAD


def five_port_switch(mac_limit: int = 4, cache_admit_every: int = 16) -> Switch:
    """Ports 1, 2 access VLAN 10; 3 access VLAN 20; 4 trunk {10, 20}; 5 trunk {20} native 10."""
    sw = Switch(cache_admit_every)
    sw.add_vlan(VlanOptions(10, mac_aging=5.0, mac_limit=mac_limit))
    sw.add_vlan(VlanOptions(20))
    sw.add_port(PortConfig(1, "a1", "access", vlan=10))
    sw.add_port(PortConfig(2, "a2", "access", vlan=10))
    sw.add_port(PortConfig(3, "b1", "access", vlan=20))
    sw.add_port(PortConfig(4, "t1", "trunk", allowed=frozenset({10, 20})))
    sw.add_port(PortConfig(5, "t2", "trunk", allowed=frozenset({20}), native=10))
    return sw


@pytest.fixture
def switch() -> Switch:
    return five_port_switch()


def test_broadcast_floods_its_vlan_only(switch: Switch) -> None:
    d = switch.receive(1, frame(BCAST, A), None, now=0.0)
    assert d.drop is None and d.vid == 10
    assert d.untagged == (2, 5) and d.tagged == (4,)
    assert d.tci == make_tci(10)


def test_unknown_unicast_floods_then_known_goes_to_one_port(switch: Switch) -> None:
    assert switch.receive(1, frame(B, A), None, 0.0).untagged == (2, 5)
    d = switch.receive(2, frame(A, B), None, 0.1)
    assert (d.untagged, d.tagged) == ((1,), ())
    d = switch.receive(1, frame(B, A), None, 0.2)
    assert (d.untagged, d.tagged) == ((2,), ())


def test_known_unicast_to_a_trunk_is_tagged_unless_native(switch: Switch) -> None:
    switch.receive(4, frame(BCAST, C), make_tci(10), 0.0)   # C learned on trunk 4 in VLAN 10
    d = switch.receive(1, frame(C, A), None, 0.1)
    assert (d.untagged, d.tagged, d.tci) == ((), (4,), make_tci(10))
    switch.receive(5, frame(BCAST, B), None, 0.0)           # B on trunk 5's native VLAN 10
    d = switch.receive(1, frame(B, A), None, 0.2)
    assert (d.untagged, d.tagged) == ((5,), ())


def test_learning_is_per_vlan(switch: Switch) -> None:
    switch.receive(1, frame(BCAST, A), None, 0.0)
    d = switch.receive(3, frame(A, C), None, 0.1)           # A unknown in VLAN 20
    assert d.untagged == () and d.tagged == (4, 5)


def test_hairpin_is_never_sent_back(switch: Switch) -> None:
    switch.receive(1, frame(BCAST, A), None, 0.0)
    switch.receive(1, frame(BCAST, B), None, 0.0)
    d = switch.receive(1, frame(B, A), None, 0.1)
    assert d.drop == "hairpin"


def test_access_port_rules(switch: Switch) -> None:
    assert switch.receive(1, frame(BCAST, A), make_tci(20), 0.0).drop == "tagged-on-access"
    assert switch.receive(1, frame(BCAST, A), make_tci(10), 0.0).drop == "tagged-on-access"
    # A priority tag (VID 0) counts as untagged, and its PCP is kept for trunks.
    d = switch.receive(1, frame(BCAST, A), make_tci(0, pcp=5), 0.0)
    assert d.drop is None and d.vid == 10 and d.tci == make_tci(10, pcp=5)
    # A priority tag hiding another tag (VLAN hopping), and in-band tags, are dropped.
    inner = insert_tag(frame(BCAST, A), make_tci(20))
    assert switch.receive(1, inner, make_tci(0), 0.0).drop == "tagged-on-access"
    assert switch.receive(1, inner, None, 0.0).drop == "tagged-on-access"
    assert switch.counters(1).drops["tagged-on-access"] == 4
    # An 802.1ad S-tag is no C-tag: dropped, and counted apart (tests/unit/test_vlan_tags.py).
    qinq = frame(BCAST, A, b"\x88\xa8")
    assert switch.receive(1, qinq, None, 0.0).drop == "s-tagged"


def test_trunk_rules(switch: Switch) -> None:
    assert switch.receive(4, frame(BCAST, C), make_tci(30), 0.0).drop == "vlan-not-allowed"
    assert switch.receive(4, frame(BCAST, C), None, 0.0).drop == "untagged-no-native"
    assert switch.receive(4, frame(BCAST, C), make_tci(0), 0.0).drop == "untagged-no-native"
    d = switch.receive(5, frame(BCAST, C), None, 0.0)            # native VLAN 10
    assert d.vid == 10 and d.untagged == (1, 2) and d.tagged == (4,)
    d = switch.receive(5, frame(BCAST, C), make_tci(10), 0.0)    # native, tagged: accepted
    assert d.vid == 10 and d.drop is None
    d = switch.receive(5, frame(BCAST, C), make_tci(20, pcp=3), 0.0)
    assert d.vid == 20 and d.untagged == (3,) and d.tagged == (4,)
    assert d.tci == make_tci(20, pcp=3)


@pytest.mark.parametrize("src", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"])
def test_bad_source_macs_are_dropped_and_not_learned(switch: Switch, src: str) -> None:
    assert switch.receive(1, frame(BCAST, mac_to_bytes(src)), None, 0.0).drop == "bad-src-mac"
    assert switch.fdb.entries(0.0) == []


def test_runts_are_dropped(switch: Switch) -> None:
    assert switch.receive(1, BCAST + A[:4], None, 0.0).drop == "runt"
    # Short but whole frames are fine: software interfaces do not pad (ARP is 42 bytes).
    assert switch.receive(1, BCAST + A + b"\x08\x06" + bytes(28), None, 0.0).drop is None


@pytest.mark.parametrize("last", [0x00, 0x01, 0x02, 0x0E, 0x0F])
def test_reserved_group_is_not_forwarded_nor_learned(switch: Switch, last: int) -> None:
    d = switch.receive(1, frame(b"\x01\x80\xc2\x00\x00" + bytes([last]), A), None, 0.0)
    assert d.drop == "reserved-group" and switch.fdb.entries(0.0) == []


def test_just_outside_the_reserved_group_floods(switch: Switch) -> None:
    assert switch.receive(1, frame(b"\x01\x80\xc2\x00\x00\x10", A), None, 0.0).drop is None


def test_aging_forgets_idle_stations(switch: Switch) -> None:
    switch.receive(1, frame(BCAST, A), None, 0.0)
    assert switch.receive(2, frame(A, B), None, 4.9).untagged == (1,)
    assert switch.receive(2, frame(A, B), None, 5.1).untagged == (1, 5)  # VLAN 10 ages at 5 s
    assert switch.fdb.expire(5.1) == 1
    assert [e.mac for e in switch.fdb.entries(5.1)] == ["02:00:00:00:00:02"]


def test_refreshed_entries_survive_expiry(switch: Switch) -> None:
    switch.receive(1, frame(BCAST, A), None, 0.0)
    switch.receive(1, frame(BCAST, A), None, 4.0)
    assert switch.fdb.expire(6.0) == 0
    assert switch.fdb.expire(9.5) == 1


def test_mac_move(switch: Switch) -> None:
    switch.receive(1, frame(BCAST, A), None, 0.0)
    switch.receive(2, frame(BCAST, A), None, 0.1)
    assert switch.receive(5, frame(A, C), None, 0.2).untagged == (2,)
    assert switch.counters(2).mac_moves == 1
    assert switch.fdb.learned_count(1, 10) == 0 and switch.fdb.learned_count(2, 10) == 1


def test_static_entries_never_move_or_age(switch: Switch) -> None:
    switch.fdb.add_static(10, "02:00:00:00:00:01", 1)
    switch.receive(2, frame(BCAST, A), None, 0.0)               # A appears on port 2
    assert switch.receive(5, frame(A, C), None, 100.0).untagged == (1,)
    switch.fdb.expire(1000.0)  # C (learned at 100 s) ages out; the static A does not
    (entry,) = [e for e in switch.fdb.entries(1000.0) if e.mac == "02:00:00:00:00:01"]
    assert entry.static and entry.port == 1
    switch.fdb.remove_static(10, "02:00:00:00:00:01")
    assert all(e.mac != "02:00:00:00:00:01" for e in switch.fdb.entries(1000.0))


def test_per_port_limit_holds_under_a_mac_flood(switch: Switch) -> None:
    switch.receive(2, frame(BCAST, B), None, 0.0)               # a victim learned first
    for i in range(10_000):
        d = switch.receive(1, frame(BCAST, bytes([2, 0x66, 0, 0, i >> 8, i & 0xFF])), None, 0.0)
        assert d.drop is None                                    # still forwarded
    assert switch.fdb.learned_count(1, 10) == 4                  # VLAN 10's mac_limit
    assert switch.counters(1).learn_limited == 10_000 - 4
    assert switch.receive(5, frame(B, C), None, 0.1).untagged == (2,)  # victim survives


def test_remove_port_flushes_its_entries_and_flood_sets(switch: Switch) -> None:
    switch.receive(2, frame(BCAST, B), None, 0.0)
    switch.remove_port(2)
    d = switch.receive(1, frame(B, A), None, 0.1)
    assert d.untagged == (5,) and d.tagged == (4,)
    assert switch.fdb.learned_count(2, 10) == 0


def test_counters(switch: Switch) -> None:
    f = frame(BCAST, A)
    switch.receive(1, f, None, 0.0)
    switch.receive(4, f, make_tci(30), 0.0)
    snap = switch.counters(1).snapshot()
    assert (snap["rx_frames"], snap["rx_bytes"]) == (1, len(f))
    assert switch.counters(2).tx_bytes == len(f)
    assert switch.counters(4).tx_bytes == len(f) + 4            # tagged on egress
    assert switch.counters(4).snapshot()["rx_bytes"] == len(f) + 4
    assert switch.counters(4).drops == {"vlan-not-allowed": 1}


def test_port_config_validation() -> None:
    with pytest.raises(ValueError, match="VLAN ID"):
        PortConfig(1, "x", "access", vlan=4095)
    with pytest.raises(ValueError, match="needs a VLAN"):
        PortConfig(1, "x", "access")
    with pytest.raises(ValueError, match="carries no VLAN"):
        PortConfig(1, "x", "trunk")
    with pytest.raises(ValueError, match="mac_limit"):
        VlanOptions(10, mac_limit=0)


def test_tags_and_vnet_headers() -> None:
    f = frame(BCAST, A)
    tagged = insert_tag(f, make_tci(10, pcp=2))
    assert tagged[12:16] == b"\x81\x00\x40\x0a"
    assert split_outer_tag(tagged) == (f, make_tci(10, pcp=2))
    assert split_outer_tag(f) == (f, None)
    plain = bytes(10)
    assert shift_vnet_hdr(plain, 4) is plain                      # nothing to move: no copy
    gso = VnetHdr(1, 1, 66, 1448, 34, 16).pack()
    assert parse_vnet_hdr(shift_vnet_hdr(gso, 4)) == VnetHdr(1, 1, 70, 1448, 38, 16)
    assert parse_vnet_hdr(shift_vnet_hdr(gso, -4)) == VnetHdr(1, 1, 62, 1448, 30, 16)


PORTS = st.sampled_from([1, 2, 3, 4, 5])
TCIS = st.one_of(st.none(), st.integers(0, 0xFFFF))
MACS = st.binary(min_size=6, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(PORTS, MACS, MACS, TCIS), min_size=1, max_size=40))
def test_properties_of_every_decision(frames: list[tuple[int, bytes, bytes, int | None]]) -> None:
    sw = Switch()
    sw.add_port(PortConfig(1, "a1", "access", vlan=10))
    sw.add_port(PortConfig(2, "a2", "access", vlan=10))
    sw.add_port(PortConfig(3, "b1", "access", vlan=20))
    sw.add_port(PortConfig(4, "t1", "trunk", allowed=frozenset({10, 20})))
    sw.add_port(PortConfig(5, "t2", "trunk", allowed=frozenset({20}), native=10))
    configs = {p.number: p for p in sw.ports()}
    for now, (port, dst, src, tci) in enumerate(frames):
        d = sw.receive(port, frame(dst, src), tci, float(now))
        outs = d.untagged + d.tagged
        assert port not in outs                                     # never back out
        assert len(set(outs)) == len(outs)
        if d.drop is None:
            assert all(d.vid in configs[o].members for o in outs)  # only VLAN members
            assert all(configs[o].mode == "trunk" for o in d.tagged)  # access never tagged
            assert all(not configs[o].tags(d.vid) for o in d.untagged)
        else:
            assert outs == ()


# ---- the decision cache: a hit returns exactly what the full decision would -------------------

FLOW_MACS = [A, B, C, BCAST, mac_to_bytes("01:00:5e:00:00:01"), mac_to_bytes("02:00:00:00:00:09")]
event = st.one_of(
    st.tuples(st.just("frame"), st.integers(1, 5), st.sampled_from(FLOW_MACS),
              st.sampled_from(FLOW_MACS[:3] + FLOW_MACS[5:]),
              st.sampled_from([None, make_tci(10), make_tci(20), make_tci(0, 3)]),
              st.sampled_from([IPV4, b"\x81\x00", b"\x88\xa8"]), st.floats(0, 7)),
    st.tuples(st.just("expire"), st.floats(0, 4)),
    st.tuples(st.just("static"), st.sampled_from(FLOW_MACS[:3]), st.integers(1, 5)))


def two_switches() -> tuple[Switch, Switch]:
    # remember every decision (the most hits to check); a limit of 2 makes limits bite
    return (five_port_switch(mac_limit=2, cache_admit_every=1),
            five_port_switch(mac_limit=2, cache_admit_every=1))


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=60))
def test_cached_decisions_equal_full_decisions(events: list[tuple[Any, ...]]) -> None:
    cached, reference = two_switches()
    now = 0.0
    for ev in events:
        if ev[0] == "frame":
            _, port, dst, src, tci, ethertype, step = ev
            now += step
            data = frame(dst, src, ethertype)
            got = cached.receive(port, data, tci, now)
            want = reference._decide(port, data, tci, now)  # the full decision, never cached
            assert (got.drop, got.vid, got.untagged, got.tagged, got.tci) == (
                want.drop, want.vid, want.untagged, want.tagged, want.tci), ev
        elif ev[0] == "expire":
            now += ev[1]
            assert cached.fdb.expire(now) == reference.fdb.expire(now)
        else:
            for sw in (cached, reference):
                sw.fdb.add_static(10, ev[1], ev[2])
    for port in range(1, 6):
        assert cached.counters(port).snapshot() == reference.counters(port).snapshot()
    assert cached.fdb.entries(now) == reference.fdb.entries(now)


def test_a_cached_flow_passes_no_double_tag_no_runt_and_not_to_an_aged_destination(
        switch: Switch) -> None:
    switch.cache_admit_every = 1
    switch.receive(2, frame(BCAST, B), None, 0.0)
    for t in (0.1, 0.2):  # the second is a cache hit
        assert switch.receive(1, frame(B, A), None, t).untagged == (2,)
    assert switch.receive(1, frame(B, A, b"\x81\x00"), None, 0.3).drop == "tagged-on-access"
    assert switch.receive(1, frame(B, A)[:13], None, 0.4).drop == "runt"
    # the destination ages out (VLAN 10: 5 s): the cached unicast decision is not used
    assert switch.receive(1, frame(B, A), None, 6.0).untagged == (2, 5)


def test_only_one_decision_in_n_is_remembered() -> None:
    sw = Switch(cache_admit_every=4)
    sw.add_port(PortConfig(1, "a1", "access", vlan=10))
    sw.add_port(PortConfig(2, "a2", "access", vlan=10))
    sw.receive(2, frame(BCAST, B), None, 0.0)
    for t in range(1, 4):
        sw.receive(1, frame(B, A), None, t / 10)
    assert len(sw._cache) == 1   # the 4th full decision, then hits
    for t in range(4, 40):
        sw.receive(1, frame(B, A), None, t / 10)
    assert len(sw._cache) == 1 and sw._misses == 4


def test_a_decision_says_whether_it_is_remembered(switch: Switch) -> None:
    switch.cache_admit_every = 2
    switch.receive(2, frame(BCAST, B), None, 0.0)   # miss 1: not remembered
    first = switch.receive(1, frame(B, A), None, 0.1)   # miss 2: remembered
    assert first.cached and switch.receive(1, frame(B, A), None, 0.2) is first
    assert not switch.receive(1, frame(C, A), None, 0.3).cached   # miss 3: not remembered
