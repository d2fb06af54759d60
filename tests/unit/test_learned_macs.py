"""The learned half of a host's MAC claims: which switch entries count, the diff against what
is advertised, aging, and the bound against a MAC flood (vnet.daemon.learned)."""

from __future__ import annotations

from typing import Any

from vnet.daemon.learned import LearnedMacs, Sighting, local_sightings, next_poll
from vnet.daemon.naming import overlay_port_name, port_name, uplink_port_name

AGING = {"red": 10.0, "blue": 300.0}
VLANS = {10: "red", 20: "blue"}
M1, M2, M3 = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"


def row(mac: str, port: str, vlan: int = 10, age: float = 0.0, static: bool = False
        ) -> dict[str, Any]:
    return {"vlan": vlan, "mac": mac, "port": port, "age": age, "static": static}


def test_only_learned_entries_of_local_ports_in_overlay_networks_count():
    rows = [row(M1, port_name("n1", "eth0"), age=1.5),
            row(M2.upper(), uplink_port_name("eth9"), vlan=20),
            row(M3, overlay_port_name("red")),                 # a remote host's MAC
            row("02:aa:00:00:00:04", port_name("n1", "eth0"), static=True),
            row("02:aa:00:00:00:05", port_name("n1", "eth0"), vlan=30)]   # not spanning
    assert local_sightings(rows, VLANS, now=100.0) == {("red", M1): 98.5, ("blue", M2): 100.0}


def test_a_new_mac_is_learned_refreshed_when_seen_again_and_forgotten_when_gone():
    learned = LearnedMacs()
    update = learned.update({("red", M1): 5.0}, now=5.0, aging=AGING)
    assert update.learn == (Sighting("red", M1, 5.0),) and not update.forget
    assert not learned.update({("red", M1): 5.0}, now=6.0, aging=AGING).learn   # no news
    assert learned.update({("red", M1): 6.5}, now=7.0, aging=AGING).learn == (
        Sighting("red", M1, 6.5),)
    update = learned.update({}, now=8.0, aging=AGING)       # aged out of the switch
    assert update.forget == (("red", M1),) and not update.learn
    assert learned.sightings() == []


def test_an_entry_idle_for_its_networks_aging_is_withdrawn_even_if_the_switch_lists_it():
    learned = LearnedMacs()
    learned.update({("red", M1): 0.0, ("blue", M2): 0.0}, now=0.0, aging=AGING)
    update = learned.update({("red", M1): 0.0, ("blue", M2): 0.0}, now=10.0, aging=AGING)
    assert update.forget == (("red", M1),)           # red ages after 10 s, blue after 300
    assert learned.sightings() == [Sighting("blue", M2, 0.0)]


def test_the_topologys_own_macs_are_left_to_the_topology():
    learned = LearnedMacs()
    update = learned.update({("red", M1): 1.0, ("red", M2): 1.0}, now=1.0, aging=AGING,
                            topology_macs={("red", M1)})
    assert update.learn == (Sighting("red", M2, 1.0),)
    assert learned.update({}, now=2.0, aging=AGING, topology_macs={("red", M1)}).forget == (
        ("red", M2),)


def flood(count: int, now: float, network: str = "red") -> dict[tuple[str, str], float]:
    return {(network, f"02:ff:00:00:{i >> 8:02x}:{i & 0xff:02x}"): now for i in range(count)}


def test_a_flood_is_bounded_per_network_counted_and_the_advertised_keep_their_place():
    learned = LearnedMacs(limit=100, per_poll=1000)
    first = {("red", M1): 0.0}
    learned.update(first, now=0.0, aging=AGING)
    macs = {**first, **flood(5000, now=1.0)}
    update = learned.update(macs, now=1.0, aging=AGING)
    assert len(update.learn) == 99 and update.newly_left_out == ("red",)
    assert ("red", M1) in dict.fromkeys((s.network, s.mac) for s in learned.sightings())
    assert learned.counts()["red"] == {"advertised": 100, "left_out": 4901,
                                       "left_out_total": 4901}
    # the same flood again: nothing new handed on, nothing counted twice, not reported again
    update = learned.update(macs, now=1.5, aging=AGING)
    assert not update.learn and not update.forget and not update.newly_left_out
    assert learned.counts()["red"]["left_out_total"] == 4901
    # another network keeps its own room
    assert len(learned.update({**macs, ("blue", M2): 1.5}, now=1.5, aging=AGING).learn) == 1


def test_a_freed_place_goes_to_a_left_out_mac():
    learned = LearnedMacs(limit=2)
    learned.update({("red", M1): 0.0, ("red", M2): 0.0}, now=0.0, aging=AGING)
    learned.update({("red", M1): 0.0, ("red", M2): 0.0, ("red", M3): 0.5}, now=1.0,
                   aging=AGING)
    assert learned.counts()["red"] == {"advertised": 2, "left_out": 1, "left_out_total": 1}
    update = learned.update({("red", M2): 0.0, ("red", M3): 1.5}, now=2.0, aging=AGING)
    assert update.forget == (("red", M1),) and update.learn == (Sighting("red", M3, 1.5),)
    assert learned.counts()["red"] == {"advertised": 2, "left_out": 0, "left_out_total": 1}


def test_new_macs_beyond_the_per_poll_budget_wait_for_the_next_poll():
    learned = LearnedMacs(limit=1000, per_poll=300)
    macs = flood(700, now=1.0)
    sizes = []
    for poll in range(4):
        update = learned.update(macs, now=1.0 + poll, aging=AGING)
        sizes.append((len(update.learn), update.deferred))
    assert sizes == [(300, 400), (300, 100), (100, 0), (0, 0)]
    assert learned.counts()["red"]["left_out_total"] == 0


def test_a_big_table_is_read_less_often():
    assert next_poll(10.0, rows=100) == 11.0
    assert next_poll(10.0, rows=20480) == 20.0      # 2,048 entries a second at most
