"""The FDB's slot representation against a plain model of the rules, and its size at scale.

The FDB keeps entries in reused slots (parallel arrays) with a lazy aging queue; the model
is a dict of (vid, MAC) -> [port, seen, static] that expires exhaustively.  Whatever the
order of learning, moves, static entries, port flushes and expiry (slots freed and reused
across VLANs, at equal times too), lookups and the listed entries must agree.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.packet import mac_to_str
from vnet.switch import Fdb, FdbEntry, PortConfig, Switch, VlanOptions

AGING = 5.0
MACS = [bytes([2, 0, 0, 0, 0, i]) for i in range(1, 6)]
VIDS = (10, 20)


class Model:
    """The rules, without slots or queues."""

    def __init__(self) -> None:
        self.e: dict[tuple[int, bytes], list[Any]] = {}

    def learn(self, vid: int, mac: bytes, port: int, now: float) -> None:
        entry = self.e.get((vid, mac))
        if entry is None:
            self.e[(vid, mac)] = [port, now, False]
        elif entry[0] == port or entry[2]:
            entry[1] = now
        else:
            entry[0], entry[1] = port, now

    def lookup(self, vid: int, mac: bytes, now: float) -> int | None:
        entry = self.e.get((vid, mac))
        if entry is None or (not entry[2] and now - entry[1] > AGING):
            return None
        return int(entry[0])

    def expire(self, now: float) -> None:
        self.e = {k: v for k, v in self.e.items() if v[2] or now - v[1] <= AGING}

    def add_static(self, vid: int, mac: bytes, port: int) -> None:
        self.e[(vid, mac)] = [port, 0.0, True]

    def remove_static(self, vid: int, mac: bytes) -> None:
        if (vid, mac) in self.e and self.e[(vid, mac)][2]:
            del self.e[(vid, mac)]

    def flush_port(self, port: int) -> None:
        self.e = {k: v for k, v in self.e.items() if v[0] != port}

    def entries(self, now: float) -> list[FdbEntry]:
        return sorted((FdbEntry(vid, mac_to_str(mac), p, 0.0 if s else now - seen, s)
                       for (vid, mac), (p, seen, s) in self.e.items()
                       if s or now - seen <= AGING), key=lambda e: (e.vid, e.mac))


vid_mac = st.tuples(st.sampled_from(VIDS), st.sampled_from(MACS))
op = st.one_of(
    st.tuples(st.just("learn"), vid_mac, st.integers(1, 3), st.sampled_from([0.0, 0.0, 1.0, 3.0])),
    st.tuples(st.just("expire"), st.sampled_from([0.0, 1.0, 4.0, 6.0])),
    st.tuples(st.just("static"), vid_mac, st.integers(1, 3)),
    st.tuples(st.just("unstatic"), vid_mac),
    st.tuples(st.just("flush"), st.integers(1, 3)))


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=80))
def test_slots_and_lazy_aging_equal_the_model(ops: list[tuple[Any, ...]]) -> None:
    fdb, model = Fdb(), Model()
    for vid in VIDS:
        fdb.configure_vlan(vid, aging=AGING, limit=1000)
    now = 0.0
    for o in ops:
        if o[0] == "learn":
            (_, (vid, mac), port, step) = o
            now += step
            fdb.learn(vid, mac, port, now)
            model.learn(vid, mac, port, now)
        elif o[0] == "expire":
            now += o[1]
            fdb.expire(now)
            model.expire(now)
        elif o[0] == "static":
            fdb.add_static(o[1][0], o[1][1], o[2])
            model.add_static(o[1][0], o[1][1], o[2])
        elif o[0] == "unstatic":
            fdb.remove_static(*o[1])
            model.remove_static(*o[1])
        else:
            fdb.flush_port(o[1])
            model.flush_port(o[1])
        for vid in VIDS:
            for mac in MACS:
                assert fdb.lookup(vid, mac, now) == model.lookup(vid, mac, now), (o, vid, mac)
        assert fdb.entries(now) == model.entries(now), o
    assert len(fdb) == sum(1 for e in fdb.entries(now)) + sum(
        1 for k, v in model.e.items() if not v[2] and now - v[1] > AGING)


def test_expiry_removes_everything_once_aged_and_slots_are_reused() -> None:
    fdb = Fdb()
    fdb.configure_vlan(10, aging=AGING, limit=1000)
    for i, mac in enumerate(MACS):
        fdb.learn(10, mac, 1, float(i))
    assert fdb.expire(100.0) == len(MACS) and len(fdb) == 0
    slots = len(fdb.seen)
    for mac in MACS:
        fdb.learn(20, mac, 2, 101.0)
    assert len(fdb.seen) == slots, "freed slots were not reused"
    assert all(fdb.lookup(20, mac, 101.0) == 2 for mac in MACS)
    assert fdb.expire(101.0) == 0  # the old VLAN 10 records do not touch VLAN 20's entries


def test_a_sweep_of_100k_macs_costs_less_than_200_bytes_an_entry() -> None:
    """The goal of issue 15 (< 200 B per entry), measured as ``python -m vnet.bench.fdbmem``
    does: what tracemalloc sees allocated while the switch learns the sweep."""
    n = 100_000
    sw = Switch()
    sw.add_vlan(VlanOptions(10, mac_limit=n))
    sw.add_port(PortConfig(1, "a", "access", vlan=10))
    sw.add_port(PortConfig(2, "b", "access", vlan=10))
    b = bytes.fromhex("02000000000b")
    frames = [b + b"\x02\xc0" + i.to_bytes(4, "big") + b"\x08\x00" + bytes(46)
              for i in range(n)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for f in frames:
            sw.receive(1, f, None, 1.0)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(sw.fdb) == n
    assert used / n < 200, f"{used / n:.0f} B per entry"
