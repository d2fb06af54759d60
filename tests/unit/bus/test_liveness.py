"""The peer table: epochs order incarnations, the transition table, leases; and epochs."""

from __future__ import annotations

import itertools

import pytest

from vnet.bus.epoch import EpochFile, next_epoch
from vnet.bus.errors import BusError
from vnet.bus.liveness import TRANSITIONS, WILL_GRACE, PeerTable
from vnet.bus.messages import LabRealised, State, Status


def status(state: State, epoch: int, host: str = "h2", lease: float = 10.0) -> Status:
    return Status(host, state, epoch, lease)


def test_online_then_will_is_lost_and_went_down_after_the_grace():
    peers = PeerTable("h1", will_grace=0.5)
    up = peers.observe(status("online", 5), now=0)
    assert up is not None and up.came_up and peers.alive() == {"h2"}
    assert peers.observe(status("lost", 5), now=1) is None     # held back for the grace
    assert peers.next_deadline() == 1.5
    assert peers.expire(now=1.4) == [] and peers.alive() == {"h2"}
    [down] = peers.expire(now=1.5)
    assert down.went_down and (down.before, down.after) == ("online", "lost")
    assert peers.alive() == frozenset()
    assert PeerTable("h1").will_grace == WILL_GRACE


def test_without_a_grace_a_will_counts_at_once():
    peers = PeerTable("h1", will_grace=0)
    peers.observe(status("online", 5), now=0)
    down = peers.observe(status("lost", 5), now=1)
    assert down is not None and down.went_down


def test_wills_then_our_own_disconnect_are_void_and_leases_wait_while_cut_off():
    """A broker that shuts down sends every client's Will, then closes the connections."""
    peers = PeerTable("h1", will_grace=0.5)
    peers.observe(status("online", 5, lease=10), now=0)
    peers.observe(status("online", 7, host="h3", lease=10), now=0)
    assert peers.observe(status("lost", 5), now=1) is None
    assert peers.observe(status("lost", 7, host="h3"), now=1) is None
    peers.cut_off()
    assert peers.next_deadline() is None            # no timer while cut off
    assert peers.expire(now=100) == []              # neither the Wills nor the leases
    assert peers.alive() == {"h2", "h3"}
    peers.restart_leases(now=100)                   # back: the retained Wills come again
    assert peers.observe(status("lost", 5), now=100, retained=True) is None
    assert peers.expire(now=109.9) == [] and peers.alive() == {"h2", "h3"}
    back = peers.observe(status("online", 6, lease=10), now=101)   # h2 reconnected
    assert back is not None and (back.after, back.epoch) == ("online", 6)
    [silent] = peers.expire(now=110)                # h3 never came back: its lease decides
    assert (silent.host, silent.after, silent.went_down) == ("h3", "expired", True)
    assert peers.alive() == {"h2"}


def test_a_held_will_gives_way_to_a_newer_epoch_and_to_forget():
    peers = PeerTable("h1", will_grace=0.5)
    peers.observe(status("online", 5), now=0)
    peers.observe(status("lost", 5), now=1)
    peers.observe(status("online", 6), now=1.1)     # a fast reconnect
    assert peers.expire(now=2) == [] and peers.alive() == {"h2"}
    peers.observe(status("lost", 6), now=3)
    assert peers.forget("h2") is not None
    assert peers.expire(now=4) == [] and peers.get("h2") is None


def test_a_will_of_a_host_not_alive_counts_at_once():
    peers = PeerTable("h1", will_grace=0.5)
    first = peers.observe(status("lost", 5), now=0)            # at start: retained
    assert first is not None and first.after == "lost"
    peers.observe(status("online", 6, lease=1), now=1)
    peers.expire(now=2)                                         # expired: not alive
    down = peers.observe(status("lost", 6), now=3)
    assert down is not None and (down.before, down.after) == ("expired", "lost")


def test_a_late_will_of_an_older_connection_is_ignored():
    """Fast reconnect: the broker publishes the old connection's Will after the new online."""
    peers = PeerTable("h1")
    peers.observe(status("online", 5), now=0)
    peers.observe(status("online", 6), now=1)
    with pytest.raises(BusError) as err:
        peers.observe(status("lost", 5), now=2)
    assert err.value.kind == "stale"
    peer = peers.get("h2")
    assert peer is not None and (peer.state, peer.epoch) == ("online", 6)


def test_a_stale_retained_online_expires_by_lease():
    """Broker restarted with the host's old retained online: no Will will come; silence does."""
    peers = PeerTable("h1")
    peers.observe(status("online", 5, lease=10), now=100)
    assert peers.next_deadline() == 110
    assert peers.expire(now=109.9) == []
    [gone] = peers.expire(now=110)
    assert (gone.before, gone.after, gone.went_down) == ("online", "expired", True)
    assert peers.alive() == frozenset()
    back = peers.observe(status("online", 5, lease=10), now=111)   # it was only slow
    assert back is not None and back.came_up


def test_refresh_moves_the_deadline_and_restart_leases_after_our_reconnect():
    peers = PeerTable("h1")
    peers.observe(status("online", 5, lease=10), now=0)
    refresh = peers.observe(status("online", 5, lease=10), now=8)
    assert refresh is not None and not refresh.changed
    assert peers.expire(now=12) == []
    peers.restart_leases(now=50)
    assert peers.expire(now=59) == []
    assert len(peers.expire(now=60)) == 1


def test_new_epoch_starts_a_new_incarnation_from_any_state():
    states: tuple[State, ...] = ("online", "offline", "lost")
    for before, after in itertools.product(states, repeat=2):
        peers = PeerTable("h1", will_grace=0)
        peers.observe(status(before, 5), now=0)
        t = peers.observe(status(after, 6), now=1)
        assert t is not None and t.after == after


@pytest.mark.parametrize("before, event", [
    ("offline", "online"), ("lost", "online"), ("offline", "lost"), ("lost", "offline")])
def test_illegal_within_an_epoch_raises_and_changes_nothing(before: State, event: State):
    peers = PeerTable("h1")
    peers.observe(status(before, 5), now=0)
    snapshot = list(peers)
    with pytest.raises(BusError) as err:
        peers.observe(status(event, 5), now=1)
    assert err.value.kind == "illegal-transition"
    assert "same epoch" in err.value.detail
    assert list(peers) == snapshot


def test_same_epoch_matrix():
    """Every (state, event) pair within one epoch: allowed ones and their outcome."""
    expected = {
        "online": {"online": "online", "offline": "offline", "lost": "lost",
                   "expire": "expired"},
        "offline": {"offline": "offline"},
        "lost": {"lost": "lost"},
        "expired": {"online": "online", "offline": "offline", "lost": "lost",
                    "expire": "expired"},
    }
    actual: dict[str, dict[str, str]] = {}
    for (state, event), after in TRANSITIONS.items():
        actual.setdefault(state, {})[event] = after
    assert actual == expected


def test_own_messages_are_not_peers_and_forget():
    peers = PeerTable("h1")
    assert peers.observe(status("online", 5, host="h1"), now=0) is None
    peers.observe(Status("h2", "online", 5, 10, "10.0.0.2", {"lab1": LabRealised(3)}), now=0)
    peer = peers.get("h2")
    assert peer is not None and peer.address == "10.0.0.2" and peer.labs["lab1"].generation == 3
    gone = peers.forget("h2")
    assert gone is not None and gone.went_down and peers.get("h2") is None
    assert peers.forget("h2") is None


def test_next_epoch_is_wall_clock_or_one_more_than_the_last():
    assert next_epoch(1_000, None) == 1_000
    assert next_epoch(1_000, 5_000) == 5_001        # the clock went backwards
    assert next_epoch(9_000, 5_000) == 9_000
    with pytest.raises(ValueError, match="epoch file"):
        next_epoch(2**63, None)


def test_epoch_file_never_reuses_an_epoch(tmp_path):
    epochs = EpochFile(tmp_path / "state" / "bus-epoch")
    assert epochs.last() is None
    first = epochs.advance(now_ns=1_000)
    second = epochs.advance(now_ns=1_000)          # same clock reading: still larger
    third = epochs.advance(now_ns=500)             # clock stepped back
    assert first < second < third
    assert EpochFile(epochs.path).last() == third
    epochs.path.write_text("garbage")
    assert epochs.advance(now_ns=7) == 7           # unreadable file: the clock decides
