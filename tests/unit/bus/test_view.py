"""The whole pure core: converging from retained state, loss, gaps, resyncs; and a fuzz test
that garbled or hostile messages raise only BusError and change nothing."""

from __future__ import annotations

import copy
from textwrap import dedent
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.bus.errors import BusError
from vnet.bus.liveness import WILL_GRACE
from vnet.bus.location import RemoteDelete, RemoteSet
from vnet.bus.messages import (
    Cleared,
    Delta,
    DesiredLab,
    LabDeleted,
    MacEntry,
    Message,
    Resync,
    SnapshotPart,
    State,
    Status,
    decode,
    topic_of,
)
from vnet.bus.topics import DesiredTopic, SnapshotTopic, StatusTopic, TopicTree
from vnet.bus.view import BusView, Effects
from vnet.topology import parse_topology

TREE = TopicTree()
TOPOLOGY = parse_topology(dedent("""
    name: lab1
    hosts: {h1: {address: 10.0.0.1}, h2: {address: 10.0.0.2}, h3: {address: 10.0.0.3}}
    bus: {broker: "mqtt://10.0.0.254"}
    networks: {office: {vlan: 10}}
    nodes:
      c1: {kind: netns, host: h1, nics: [{name: eth0, network: office, mac: "02:00:00:00:01:01"}]}
      c2: {kind: netns, host: h2, nics: [{name: eth0, network: office, mac: "02:00:00:00:02:01"}]}
"""))
DESIRED = DesiredLab("lab1", 1, TOPOLOGY)
C1, C2, M = "02:00:00:00:01:01", "02:00:00:00:02:01", "02:aa:00:00:00:01"


def snap(host: str, epoch: int, seq: int, *macs: str, part: int = 0, parts: int = 1
         ) -> SnapshotPart:
    return SnapshotPart(host, "lab1", epoch, seq, part, parts,
                        tuple(MacEntry("office", m, 0) for m in macs))


def state(view: BusView) -> Any:
    """Everything the view holds, as plain comparable data (a deep copy)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return type(value)(plain(v) for v in value) if not isinstance(value, set | frozenset) \
                else value.copy()
        if hasattr(value, "__dict__") and not hasattr(value, "__dataclass_fields__"):
            return {"<type>": type(value).__name__, **plain(vars(value))}
        return copy.deepcopy(value)
    return plain(view)


def fdb(effects: Effects) -> list[Any]:
    return [c for changes in effects.changes for c in changes.fdb]


def test_a_host_converges_from_retained_state_alone_in_any_order():
    view = BusView("h1")
    # mosquitto sends retained messages in its own order: MACs may come before the status
    assert fdb(view.receive(snap("h2", 7, 0, C2, M), now=0)) == []
    assert fdb(view.receive(DESIRED, now=0)) == []
    effects = view.receive(Status("h2", "online", 7, 30), now=0)
    assert set(fdb(effects)) == {RemoteSet("lab1", "office", C2, "h2"),
                                 RemoteSet("lab1", "office", M, "h2")}
    assert [t.after for t in effects.transitions] == ["online"]
    assert view.location.remote_fdb("lab1") == {("office", C2): "h2", ("office", M): "h2"}


def test_a_lost_host_is_withdrawn_and_its_late_old_will_is_stale():
    view = BusView("h1", will_grace=0.5)
    view.receive(Status("h2", "online", 7, 30), now=0)
    view.receive(snap("h2", 7, 0, M), now=0)
    assert not view.receive(Status("h2", "lost", 7, 30), now=1)   # the Will's grace
    assert view.next_timer(now=1) == 1.5
    effects = view.tick(now=1.5)
    assert fdb(effects) == [RemoteDelete("lab1", "office", M)]
    view.receive(Status("h2", "online", 8, 30), now=2)
    before = state(view)
    with pytest.raises(BusError, match="stale"):
        view.receive(Status("h2", "lost", 7, 30), now=3)
    with pytest.raises(BusError, match="stale"):
        view.receive(snap("h2", 7, 0, M), now=3)       # MACs of the old incarnation
    assert state(view) == before


def test_silence_expires_a_host_on_tick():
    view = BusView("h1")
    view.receive(Status("h2", "online", 7, 10), now=0)
    view.receive(snap("h2", 7, 0, M), now=0)
    assert view.next_timer(now=9.5) == 10
    assert not view.tick(now=9.9).changes
    effects = view.tick(now=10)
    assert fdb(effects) == [RemoteDelete("lab1", "office", M)]
    assert [t.after for t in effects.transitions] == ["expired"]


def test_an_expired_host_that_refreshes_in_the_same_epoch_comes_back_at_once():
    view = BusView("h1")
    view.receive(Status("h2", "online", 7, 10), now=0)
    view.receive(snap("h2", 7, 0, M), now=0)
    assert fdb(view.tick(now=10)) == [RemoteDelete("lab1", "office", M)]
    effects = view.receive(Status("h2", "online", 7, 10), now=11)   # the partition healed
    assert fdb(effects) == [RemoteSet("lab1", "office", M, "h2")]
    assert view.feeds.synced("h2", "lab1")                          # deltas continue
    # a lost host, by contrast, starts afresh: its next epoch brings a new snapshot
    view.receive(Status("h2", "lost", 7, 10), now=12)
    view.tick(now=12 + WILL_GRACE)
    assert not view.feeds.synced("h2", "lab1")
    assert view.location.claims("lab1", "office", M) == {}


def test_a_broker_outage_withdraws_nothing():
    """The broker's shutdown sends the Wills, cuts us off; its restart sends them retained."""
    view = BusView("h1", will_grace=0.5)
    view.connected(epoch=2, now=0)
    view.receive(Status("h2", "online", 7, 10), now=0)
    view.receive(snap("h2", 7, 0, M), now=0)
    view.receive(Status("h2", "lost", 7, 10), now=5)
    view.disconnected()
    assert not any(view.tick(now=t).changes for t in (5.5, 10, 20, 40))
    view.connected(epoch=3, now=40)
    assert not view.receive(Status("h2", "lost", 7, 10), now=40, retained=True)
    assert view.location.remote_fdb("lab1") == {("office", M): "h2"}
    assert fdb(view.tick(now=50)) == [RemoteDelete("lab1", "office", M)]   # never came back


def test_a_gap_asks_the_peer_and_the_peer_answers_with_a_snapshot():
    h1, h2 = BusView("h1"), BusView("h2")
    h2.connected(epoch=7, now=0)
    learned = h2.local_learn("lab1", "office", M, now=0)
    [delta] = learned.publish
    assert isinstance(delta, Delta) and delta.seq == 1
    h1.receive(Status("h2", "online", 7, 30), now=0)
    h1.receive(snap("h2", 7, 0), now=0)
    lost = h2.local_learn("lab1", "office", C2, now=1).publish   # h1 never sees this one
    assert [type(m) for m in lost] == [Delta]
    effects = h2.local_learn("lab1", "office", "02:aa:00:00:00:02", now=2)
    [request] = h1.receive(effects.publish[0], now=2).publish
    assert request == Resync("h1", "h2", "lab1")
    answer = h2.receive(request, now=2).publish
    assert [type(m) for m in answer] == [SnapshotPart]
    h1.receive(answer[0], now=2)
    assert set(h1.location.remote_fdb("lab1")) == {
        ("office", M), ("office", C2), ("office", "02:aa:00:00:00:02")}


def test_connect_publishes_snapshots_first_and_clears_parts_of_an_earlier_run():
    view = BusView("h1")
    view.local_learn("lab1", "office", M, now=0)          # learned before connecting
    [part] = view.connected(epoch=9, now=0).publish
    assert isinstance(part, SnapshotPart) and part.epoch == 9 and part.macs[0].mac == M
    old = snap("h1", 3, 0, part=4, parts=5)
    assert view.receive(old, now=0).publish == [Cleared(SnapshotTopic("h1", "lab1", 4))]
    assert not view.receive(Status("h1", "online", 9, 30), now=0)   # our own echo


def test_hijack_is_refused_and_removing_the_lab_withdraws_everything():
    view = BusView("h1")
    view.receive(DESIRED, now=0)
    view.receive(Status("h3", "online", 5, 30), now=0)
    effects = view.receive(snap("h3", 5, 0, C1, M), now=0)
    [changes] = effects.changes
    assert [(r.mac, r.host, r.owner) for r in changes.refusals] == [(C1, "h3", "h1")]
    assert fdb(effects) == [RemoteSet("lab1", "office", M, "h3")]
    view.local_learn("lab1", "office", "02:aa:00:00:00:09", now=0)
    effects = view.receive(Cleared(DesiredTopic("lab1")), now=1)
    assert effects.desired == {"lab1": None}
    assert fdb(effects) == [RemoteDelete("lab1", "office", M)]
    assert Cleared(SnapshotTopic("h1", "lab1", 0)) in effects.publish


def test_older_desired_generation_is_stale():
    view = BusView("h1")
    view.receive(DesiredLab("lab1", 5, TOPOLOGY), now=0)
    with pytest.raises(BusError, match="stale"):
        view.receive(DesiredLab("lab1", 4, TOPOLOGY), now=0)
    assert not view.receive(DesiredLab("lab1", 5, TOPOLOGY), now=0)


def test_a_tombstone_removes_the_lab_and_keeps_its_generation():
    view = BusView("h1")
    view.receive(DesiredLab("lab1", 3, TOPOLOGY), now=0)
    view.local_learn("lab1", "office", C1, now=0)
    effects = view.receive(LabDeleted("lab1", 4), now=1)
    assert effects.desired == {"lab1": LabDeleted("lab1", 4)}
    assert Cleared(SnapshotTopic("h1", "lab1", 0)) in effects.publish
    assert view.generation("lab1") == 4 and "lab1" not in view.desired
    assert not view.receive(LabDeleted("lab1", 4), now=2)          # the same tombstone again
    for old in (DesiredLab("lab1", 3, TOPOLOGY), LabDeleted("lab1", 2)):
        with pytest.raises(BusError, match="stale"):
            view.receive(old, now=2)
    assert view.receive(DesiredLab("lab1", 5, TOPOLOGY), now=3).desired == {
        "lab1": DesiredLab("lab1", 5, TOPOLOGY)}
    with pytest.raises(BusError, match="stale"):
        view.receive(LabDeleted("lab1", 4), now=3)
    view.receive(Cleared(DesiredTopic("lab1")), now=4)        # an operator cleared the topic
    assert view.generation("lab1") == 0
    assert view.receive(DesiredLab("lab1", 1, TOPOLOGY), now=5).desired


def test_a_cleared_status_forgets_the_host():
    view = BusView("h1")
    view.receive(Status("h2", "online", 7, 30), now=0)
    view.receive(snap("h2", 7, 0, M), now=0)
    effects = view.receive(Cleared(StatusTopic("h2")), now=1)
    assert fdb(effects) == [RemoteDelete("lab1", "office", M)]


# -- fuzz: hostile sequences ----------------------------------------------------------------

hosts = st.sampled_from(["h1", "h2", "h3"])
epochs = st.integers(1, 4)
macs = st.sampled_from([C1, C2, M, "02:aa:00:00:00:02"])
entries = st.lists(st.builds(MacEntry, st.just("office"), macs, st.integers(0, 3)),
                   max_size=3, unique_by=lambda e: e.key)
states: st.SearchStrategy[State] = st.sampled_from(["online", "offline", "lost"])
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Status, hosts, states, epochs, st.just(10.0)),
    st.builds(lambda h, e, s, p, n, m: SnapshotPart(h, "lab1", e, s, min(p, n - 1), n,
                                                    tuple(m)),
              hosts, epochs, st.integers(0, 4), st.integers(0, 2), st.integers(1, 3), entries),
    st.builds(lambda h, e, s, m: Delta(h, "lab1", e, s, tuple(m)),
              hosts, epochs, st.integers(1, 5), entries),
    st.builds(Resync, hosts, hosts, st.just("lab1")).filter(lambda r: r.host != r.peer),
    st.builds(DesiredLab, st.just("lab1"), st.integers(1, 3), st.just(TOPOLOGY)),
    st.builds(LabDeleted, st.just("lab1"), st.integers(1, 3)),
    st.sampled_from([Cleared(DesiredTopic("lab1")), Cleared(StatusTopic("h2")),
                     Cleared(SnapshotTopic("h3", "lab1", 0))]),
)
events = st.one_of(
    st.tuples(st.just("message"), messages, st.none()),
    st.tuples(st.just("garbled"), messages, st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("tick"), st.none(), st.none()),
    st.tuples(st.just("learn"), macs, st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=40))
def test_hostile_sequences_raise_only_bus_errors_and_refusals_change_nothing(sequence):
    view = BusView("h1")
    view.connected(epoch=2, now=0)
    now = 0.0
    for kind, item, noise in sequence:
        now += 1.5
        if kind == "tick":
            view.tick(now)
            continue
        if kind == "learn":
            assert isinstance(item, str)
            view.local_learn("lab1", "office", item, now)
            continue
        assert not isinstance(item, str | None)
        message: Message | BusError = item
        if kind == "garbled" and not isinstance(item, Cleared):
            assert noise is not None
            raw = bytearray(item.to_json())
            raw[noise[0] % len(raw)] = noise[-1]
            message = decode(TREE, topic_of(TREE, item), bytes(raw))
        if isinstance(message, BusError):
            continue
        before = state(view)
        try:
            view.receive(message, now)
        except BusError:
            assert state(view) == before


def test_the_state_fingerprint_sees_changes_in_every_table():
    view = BusView("h1")
    for message in (DESIRED, Status("h2", "online", 7, 30), snap("h2", 7, 0, M, part=0, parts=2),
                    snap("h2", 7, 0, C2, part=1, parts=2)):
        before = state(view)
        view.receive(message, now=0)
        assert state(view) != before, message
    before = state(view)
    view.local_learn("lab1", "office", "02:aa:00:00:00:05", now=0)
    assert state(view) != before
