"""The MAC location table: snapshots, deltas, mobility, duplicates, hijack refusal, aging."""

from __future__ import annotations

from textwrap import dedent

from vnet.bus.location import (
    Advert,
    Changes,
    Duplicate,
    LocationTable,
    Refused,
    RemoteDelete,
    RemoteSet,
)
from vnet.bus.messages import MacEntry
from vnet.topology import parse_topology

TOPOLOGY = parse_topology(dedent("""
    name: lab1
    hosts: {h1: {address: 10.0.0.1}, h2: {address: 10.0.0.2}, h3: {address: 10.0.0.3}}
    bus: {broker: "mqtt://10.0.0.254"}
    networks: {office: {vlan: 10, mac_aging: 60}, lab: {vlan: 20}}
    nodes:
      c1: {kind: netns, host: h1, nics: [{name: eth0, network: office, mac: "02:00:00:00:01:01"}]}
      c2: {kind: netns, host: h2, nics: [{name: eth0, network: office, mac: "02:00:00:00:02:01"}]}
"""))
C1, C2 = "02:00:00:00:01:01", "02:00:00:00:02:01"
M, N = "02:aa:00:00:00:01", "02:aa:00:00:00:02"


def table() -> LocationTable:
    t = LocationTable("h1")
    assert not t.set_topology(TOPOLOGY)
    for host in ("h2", "h3"):
        assert not t.set_alive(host, True)
    return t


def test_snapshot_installs_and_a_smaller_snapshot_removes():
    t = table()
    changes = t.replace_host("h2", "lab1", [MacEntry("office", M), MacEntry("lab", N, 3)], now=-1)
    assert set(changes.fdb) == {RemoteSet("lab1", "office", M, "h2"),
                                RemoteSet("lab1", "lab", N, "h2")}
    assert t.remote_fdb("lab1") == {("office", M): "h2", ("lab", N): "h2"}
    changes = t.replace_host("h2", "lab1", [MacEntry("lab", N, 3)], now=-1)
    assert changes.fdb == (RemoteDelete("lab1", "office", M),)
    assert not t.replace_host("h2", "lab1", [MacEntry("lab", N, 3)], now=-1)   # same again: nothing


def test_a_move_wins_by_higher_sequence():
    t = table()
    t.replace_host("h2", "lab1", [MacEntry("office", M, 0)], now=-1)
    changes = t.apply_delta("h3", "lab1", [MacEntry("office", M, 1)], [], now=-1)
    assert changes.fdb == (RemoteSet("lab1", "office", M, "h3"),)
    # the old place's late withdraw changes nothing; a lower sequence does not win
    assert not t.apply_delta("h2", "lab1", [], [("office", M)], now=-1)
    assert not t.apply_delta("h2", "lab1", [MacEntry("office", M, 0)], [], now=-1)
    assert t.remote_fdb("lab1") == {("office", M): "h3"}


def test_same_sequence_on_two_hosts_is_a_duplicate_reported_once_and_not_flapped():
    t = table()
    t.replace_host("h2", "lab1", [MacEntry("office", M, 4)], now=-1)
    changes = t.apply_delta("h3", "lab1", [MacEntry("office", M, 4)], [], now=-1)
    assert changes == Changes(duplicates=(Duplicate("lab1", "office", M, ("h2", "h3"), 4),))
    assert t.remote_fdb("lab1") == {("office", M): "h2"}
    assert not t.replace_host("h3", "lab1", [MacEntry("office", M, 4)], now=-1)   # not again
    assert t.duplicates() == {("lab1", "office", M)}
    # resolved by a move
    changes = t.apply_delta("h3", "lab1", [MacEntry("office", M, 5)], [], now=-1)
    assert changes.fdb == (RemoteSet("lab1", "office", M, "h3"),)
    assert t.duplicates() == frozenset()


def test_local_learn_of_a_remote_mac_takes_the_next_sequence_and_removes_the_remote_entry():
    t = table()
    t.replace_host("h2", "lab1", [MacEntry("office", M, 3)], now=-1)
    changes = t.local_learn("lab1", "office", M, now=0)
    assert changes.adverts == (Advert("lab1", "office", M, 4),)
    assert changes.fdb == (RemoteDelete("lab1", "office", M),)
    assert t.local_claims("lab1") == (MacEntry("office", M, 4),)
    assert not t.local_learn("lab1", "office", M, now=1)   # a refresh


def test_a_remote_move_away_withdraws_the_local_claim():
    t = table()
    assert t.local_learn("lab1", "office", M, now=0).adverts == (Advert("lab1", "office", M, 0),)
    changes = t.apply_delta("h2", "lab1", [MacEntry("office", M, 1)], [], now=-1)
    assert changes.adverts == (Advert("lab1", "office", M, None),)
    assert changes.fdb == (RemoteSet("lab1", "office", M, "h2"),)
    assert t.local_claims("lab1") == ()


def test_a_mac_the_topology_places_elsewhere_is_refused_once():
    t = table()
    changes = t.replace_host("h2", "lab1", [MacEntry("office", C1, 9), MacEntry("office", M)],
                             now=-1)
    assert changes.refusals == (Refused("lab1", "office", C1, "h2", "h1"),)
    assert changes.fdb == (RemoteSet("lab1", "office", M, "h2"),)
    assert not t.replace_host("h2", "lab1", [MacEntry("office", C1, 9), MacEntry("office", M)],
                              now=-1)
    changes = t.apply_delta("h3", "lab1", [MacEntry("office", C2, 100)], [], now=-1)
    assert changes.refusals == (Refused("lab1", "office", C2, "h3", "h2"),)
    assert changes.fdb == ()
    # and the rightful owner is installed whatever its sequence
    assert t.apply_delta("h2", "lab1", [MacEntry("office", C2, 0)], [], now=-1).fdb == (
        RemoteSet("lab1", "office", C2, "h2"),)
    # the local switch seeing c2's MAC on a local port does not claim it either
    assert t.local_learn("lab1", "office", C2, now=0).refusals == (
        Refused("lab1", "office", C2, "h1", "h2"),)
    assert t.local_claims("lab1") == ()


def test_claims_count_only_while_their_host_is_alive():
    t = LocationTable("h1")
    assert not t.replace_host("h2", "lab1", [MacEntry("office", M)], now=-1)   # status not seen yet
    assert t.set_alive("h2", True).fdb == (RemoteSet("lab1", "office", M, "h2"),)
    assert not t.set_alive("h2", True)
    assert t.set_alive("h2", False).fdb == (RemoteDelete("lab1", "office", M),)


def test_a_topology_arriving_after_the_claims_refuses_them_then():
    t = LocationTable("h1")
    t.set_alive("h3", True)
    assert t.replace_host("h3", "lab1", [MacEntry("office", C2)], now=-1).fdb == (
        RemoteSet("lab1", "office", C2, "h3"),)
    changes = t.set_topology(TOPOLOGY)
    assert changes.refusals == (Refused("lab1", "office", C2, "h3", "h2"),)
    assert changes.fdb == (RemoteDelete("lab1", "office", C2),)


def test_a_lost_host_has_its_macs_withdrawn_and_the_runner_up_takes_over():
    t = table()
    t.replace_host("h2", "lab1", [MacEntry("office", M, 2), MacEntry("lab", N)], now=-1)
    t.replace_host("h3", "lab1", [MacEntry("office", M, 1)], now=-1)
    changes = t.remove_host("h2")
    assert set(changes.fdb) == {RemoteSet("lab1", "office", M, "h3"),
                                RemoteDelete("lab1", "lab", N)}
    assert t.claims("lab1", "office", M) == {"h3": 1}


def test_local_claims_age_out_by_the_networks_mac_aging():
    t = table()
    t.local_learn("lab1", "office", M, now=0)      # office: mac_aging 60
    t.local_learn("lab1", "lab", N, now=0)         # lab: the default 300
    t.local_learn("lab1", "office", M, now=30)     # refreshed
    assert not t.age_out(now=89)
    assert t.age_out(now=90).adverts == (Advert("lab1", "office", M, None),)
    assert t.age_out(now=300).adverts == (Advert("lab1", "lab", N, None),)
    assert t.local_forget("lab1", "lab", N) == Changes()


def test_a_mac_that_keeps_moving_back_here_is_dampened_as_a_duplicate():
    t = table()
    seq = 0
    reports: list[Duplicate] = []
    for i in range(10):
        seq += 1
        t.apply_delta("h2", "lab1", [MacEntry("office", M, seq)], [], now=i - 0.5)
        changes = t.local_learn("lab1", "office", M, now=float(i))
        reports.extend(changes.duplicates)
        if changes.adverts:
            seq = changes.adverts[0].seq or seq
    assert len(reports) == 1 and reports[0].hosts == ("h1", "h2")
    assert t.remote_fdb("lab1") == {("office", M): "h2"}   # it stays put, no flapping


def test_forget_lab():
    t = table()
    t.replace_host("h2", "lab1", [MacEntry("office", M)], now=-1)
    assert t.forget_lab("lab1").fdb == (RemoteDelete("lab1", "office", M),)
    assert t.remote_fdb("lab1") == {}


def test_a_local_entry_left_behind_by_a_move_does_not_take_the_mac_back():
    """A host that polls its switch keeps seeing a MAC that moved away until the entry ages
    out: only a sighting after the other host's claim arrived is a move back."""
    t = table()
    assert t.local_learn("lab1", "office", M, now=10, seen=9).adverts == (
        Advert("lab1", "office", M, 0),)
    changes = t.apply_delta("h2", "lab1", [MacEntry("office", M, 1)], [], now=12)   # moved
    assert changes.adverts == (Advert("lab1", "office", M, None),)
    assert changes.fdb == (RemoteSet("lab1", "office", M, "h2"),)
    for now in (13, 20, 40):                    # the stale entry, last seen at 11.5
        assert not t.local_learn("lab1", "office", M, now=now, seen=11.5)
    changes = t.local_learn("lab1", "office", M, now=41, seen=40.5)   # it is back here
    assert changes.adverts == (Advert("lab1", "office", M, 2),)
    assert changes.fdb == (RemoteDelete("lab1", "office", M),)


def test_a_stale_entry_does_not_claim_a_mac_another_host_holds_after_a_fresh_start():
    t = table()         # a new session: the other host's retained claim arrives at 5
    t.replace_host("h2", "lab1", [MacEntry("office", M, 3)], now=5)
    assert not t.local_learn("lab1", "office", M, now=6, seen=4)
    assert t.local_learn("lab1", "office", M, now=7, seen=6.5).adverts == (
        Advert("lab1", "office", M, 4),)


def test_a_sighting_older_than_the_networks_aging_is_not_one_and_aging_counts_from_it():
    t = table()                                 # office: mac_aging 60
    assert not t.local_learn("lab1", "office", M, now=100, seen=40)
    t.local_learn("lab1", "office", M, now=100, seen=50)
    assert not t.age_out(now=109)
    assert t.age_out(now=110).adverts == (Advert("lab1", "office", M, None),)


def test_a_learned_mac_the_topology_places_elsewhere_is_refused_whatever_its_time():
    t = table()
    changes = t.local_learn("lab1", "office", C2, now=10, seen=9.9)
    assert changes.refusals == (Refused("lab1", "office", C2, "h1", "h2"),)
    assert not changes.adverts and not t.local_claims("lab1")
    assert not t.local_learn("lab1", "office", C2, now=11, seen=10.9)   # reported once
