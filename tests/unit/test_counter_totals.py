"""Counters across datapath restarts (pure): never down while the port exists."""

from __future__ import annotations

from typing import Any

from vnet.daemon.counters import CounterTotals


def port(rx: int, drops: dict[str, int] | None = None, **more: Any) -> dict[str, Any]:
    return {"rx_frames": rx, "rx_bytes": rx * 100, "drops": drops or {}, "ifname": "vn1",
            "tx_errors": {}, "ring": {"rx_index": rx % 7, "rx_ready": 0, "rx_slots": 64},
            **more}


def test_a_new_run_continues_from_the_last_reading() -> None:
    totals = CounterTotals()
    totals.observe(1, {"lab": {"c1.eth0": port(431, {"no-vlan": 3})}})
    after = totals.observe(2, {"lab": {"c1.eth0": port(242, {"no-vlan": 1, "full": 2})}})
    c1 = after["lab"]["c1.eth0"]
    assert c1["rx_frames"] == 431 + 242 and c1["rx_bytes"] == (431 + 242) * 100
    assert c1["drops"] == {"no-vlan": 4, "full": 2}
    assert c1["ring"] == {"rx_index": 242 % 7, "rx_ready": 0, "rx_slots": 64}  # a gauge
    assert c1["ifname"] == "vn1"
    # and again, later in run 2 and in run 3
    later = totals.observe(2, {"lab": {"c1.eth0": port(300, {"no-vlan": 1, "full": 2})}})
    assert later["lab"]["c1.eth0"]["rx_frames"] == 731
    assert totals.observe(3, {"lab": {"c1.eth0": port(0)}})["lab"]["c1.eth0"][
        "rx_frames"] == 731


def test_never_down_whatever_the_readings() -> None:
    """Readings from runs 1..4 in any shape: each counter reported is at least the one
    reported before (a port re-created within a run reads lower, too)."""
    totals = CounterTotals()
    readings = [(1, 5), (1, 9), (2, 0), (2, 4), (2, 2), (3, 100), (3, 100), (4, 1), (4, 0)]
    reported = [totals.observe(run, {"b": {"p": port(rx)}})["b"]["p"]["rx_frames"]
                for run, rx in readings]
    assert reported == sorted(reported)
    assert reported[-1] == 9 + 4 + 2 + 100 + 1 + 0


def test_a_port_not_yet_replayed_keeps_its_baseline() -> None:
    totals = CounterTotals()
    totals.observe(1, {"lab": {"a": port(10), "b": port(20)}})
    # the new run has re-added a only: b is not forgotten, and shows as last seen
    during = totals.observe(2, {"lab": {"a": port(1)}})["lab"]
    assert (during["a"]["rx_frames"], during["b"]["rx_frames"]) == (11, 20)
    assert totals.observe(2, {"lab": {"a": port(1), "b": port(2)}})["lab"]["b"][
        "rx_frames"] == 22


def test_a_deleted_port_starts_again_from_zero() -> None:
    totals = CounterTotals()
    totals.observe(1, {"lab": {"a": port(10), "b": port(20)}})
    totals.observe(2, {"lab": {"a": port(1), "b": port(1)}})
    # b disappeared from a reading of the same run: deleted
    totals.observe(2, {"lab": {"a": port(2)}})
    assert totals.observe(2, {"lab": {"a": port(3), "b": port(5)}})["lab"]["b"][
        "rx_frames"] == 5
    # forget: deleted through vnetd
    totals.forget("lab", "a")
    assert totals.observe(3, {"lab": {"a": port(1), "b": port(1)}})["lab"]["a"][
        "rx_frames"] == 1
    totals.forget("lab")
    assert totals.observe(4, {"lab": {"a": port(1), "b": port(1)}})["lab"]["b"][
        "rx_frames"] == 1


def test_a_reading_of_one_bridge_leaves_the_others() -> None:
    totals = CounterTotals()
    totals.observe(1, {"one": {"a": port(10)}, "two": {"b": port(20)}})
    totals.observe(1, {"one": {"a": port(11)}}, bridges={"one"})
    assert totals.observe(2, {"two": {"b": port(1)}}, bridges={"two"})["two"]["b"][
        "rx_frames"] == 21


def test_the_last_totals_while_the_datapath_cannot_be_read() -> None:
    totals = CounterTotals()
    totals.observe(1, {"lab": {"a": port(10)}})
    totals.observe(2, {"lab": {"a": port(4)}})
    assert totals.last()["lab"]["a"]["rx_frames"] == 14
    assert totals.last()["lab"]["a"]["ifname"] == "vn1"
