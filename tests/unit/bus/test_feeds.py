"""Feeds: snapshots in parts, delta order, gaps and resync requests; the advertiser's side."""

from __future__ import annotations

import pytest

from vnet.bus.advertise import Advertiser
from vnet.bus.errors import BusError
from vnet.bus.feeds import ApplyDelta, FeedTracker, ReplaceMacs
from vnet.bus.location import Advert
from vnet.bus.messages import MAX_ENTRIES, Cleared, Delta, MacEntry, Resync, SnapshotPart
from vnet.bus.topics import SnapshotTopic


def mac(i: int) -> str:
    return f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"


def entries(n: int) -> list[MacEntry]:
    return [MacEntry("office", mac(i), 0) for i in range(n)]


def parts(epoch: int, seq: int, n: int, size: int = 2) -> list[SnapshotPart]:
    chunks = [tuple(entries(n)[i:i + size]) for i in range(0, n, size)] or [()]
    return [SnapshotPart("h2", "lab1", epoch, seq, i, len(chunks), c)
            for i, c in enumerate(chunks)]


def delta(epoch: int, seq: int, *macs: int) -> Delta:
    return Delta("h2", "lab1", epoch, seq, tuple(MacEntry("office", mac(i), 0) for i in macs))


def test_a_snapshot_completes_with_its_last_part_in_any_order():
    feeds = FeedTracker("h1")
    p0, p1, p2 = parts(epoch=5, seq=3, n=5)
    assert feeds.snapshot_part(p2, now=0) is None
    assert feeds.snapshot_part(p0, now=0) is None
    done = feeds.snapshot_part(p1, now=0)
    assert done == ReplaceMacs("h2", "lab1", tuple(entries(5)))
    assert feeds.synced("h2", "lab1")


def test_parts_of_a_newer_snapshot_replace_a_half_assembled_one():
    feeds = FeedTracker("h1")
    old = parts(epoch=5, seq=3, n=4)
    new = parts(epoch=5, seq=4, n=3)
    assert feeds.snapshot_part(old[0], now=0) is None
    assert feeds.snapshot_part(new[0], now=0) is None
    with pytest.raises(BusError) as err:
        feeds.snapshot_part(old[1], now=0)        # the rest of the old one is stale now
    assert err.value.kind == "stale"
    assert feeds.snapshot_part(new[1], now=0) == ReplaceMacs("h2", "lab1", tuple(entries(3)))


def test_deltas_apply_in_order_ignore_repeats_and_a_gap_asks_for_a_snapshot():
    feeds = FeedTracker("h1")
    [p] = parts(epoch=5, seq=3, n=1)
    feeds.snapshot_part(p, now=0)
    assert feeds.delta(delta(5, 3, 9), now=0) is None              # already in the snapshot
    assert feeds.delta(delta(5, 4, 9), now=0) == ApplyDelta(
        "h2", "lab1", (MacEntry("office", mac(9), 0),), ())
    assert feeds.delta(delta(5, 4, 9), now=0) is None              # a repeat
    assert feeds.delta(delta(5, 6, 10), now=1) == Resync("h1", "h2", "lab1")   # 5 is missing
    assert not feeds.synced("h2", "lab1")
    assert feeds.delta(delta(5, 7, 11), now=2) is None             # waiting for the snapshot
    assert feeds.due_resyncs(now=5.9) == []
    assert feeds.due_resyncs(now=6) == [Resync("h1", "h2", "lab1")]   # asked again
    [p] = parts(epoch=5, seq=7, n=1)
    assert isinstance(feeds.snapshot_part(p, now=7), ReplaceMacs)
    assert feeds.due_resyncs(now=100) == []
    assert isinstance(feeds.delta(delta(5, 8, 12), now=8), ApplyDelta)


def test_a_new_epoch_waits_for_its_snapshot_and_older_epochs_are_stale():
    feeds = FeedTracker("h1", retry=3)
    [p] = parts(epoch=5, seq=3, n=1)
    feeds.snapshot_part(p, now=0)
    assert feeds.delta(delta(6, 1, 1), now=10) is None
    assert feeds.due_resyncs(now=12) == []
    assert feeds.due_resyncs(now=13) == [Resync("h1", "h2", "lab1")]
    for stale in (lambda: feeds.delta(delta(5, 4, 1), now=14),
                  lambda: feeds.snapshot_part(p, now=14)):
        with pytest.raises(BusError) as err:
            stale()
        assert err.value.kind == "stale"
    [p6] = parts(epoch=6, seq=1, n=1)
    assert isinstance(feeds.snapshot_part(p6, now=15), ReplaceMacs)


def test_a_delta_before_any_snapshot_waits_then_asks():
    feeds = FeedTracker("h1", retry=2)
    assert feeds.delta(delta(5, 9, 1), now=0) is None
    assert feeds.due_resyncs(now=2) == [Resync("h1", "h2", "lab1")]
    feeds.host_gone("h2")
    assert feeds.due_resyncs(now=10) == []


def test_advertiser_numbers_deltas_and_splits_big_ones():
    advertiser = Advertiser("h1", part_size=MAX_ENTRIES)
    adverts = [Advert("lab1", "office", mac(i), 0) for i in range(MAX_ENTRIES + 10)]
    adverts.append(Advert("lab1", "office", mac(0), None))       # learned, then withdrawn
    d1, d2 = advertiser.deltas(adverts, epoch=5)
    assert (d1.seq, d2.seq) == (1, 2)
    assert len(d1.set) + len(d1.withdraw) == MAX_ENTRIES
    assert d1.withdraw == (("office", mac(0)),)
    assert len(d2.set) == 10
    for d in (d1, d2):
        d.to_json()                                               # within the size limit
    [d3] = advertiser.deltas([Advert("lab2", "office", mac(1), 3)], epoch=5)
    assert (d3.lab, d3.seq) == ("lab2", 1)


def test_snapshot_policy_new_epoch_changes_coalesced_and_forced():
    advertiser = Advertiser("h1", min_interval=2)
    assert advertiser.snapshot_due("lab1", epoch=5, now=0)        # never published
    advertiser.snapshot("lab1", [], epoch=5, now=0)
    assert not advertiser.snapshot_due("lab1", epoch=5, now=10)   # nothing changed
    advertiser.deltas([Advert("lab1", "office", mac(1), 0)], epoch=5)
    assert not advertiser.snapshot_due("lab1", epoch=5, now=1)    # coalescing
    assert advertiser.snapshot_due("lab1", epoch=5, now=2)
    [part] = advertiser.snapshot("lab1", entries(1), epoch=5, now=2)
    assert isinstance(part, SnapshotPart) and part.seq == 1       # as of delta 1
    assert advertiser.snapshot_due("lab1", epoch=6, now=2)        # reconnected
    advertiser.snapshot("lab1", entries(1), epoch=6, now=2)
    advertiser.force("lab1")
    assert advertiser.snapshot_due("lab1", epoch=6, now=2)


def test_a_shrinking_snapshot_clears_the_parts_it_no_longer_uses():
    advertiser = Advertiser("h1", part_size=1000)
    first = advertiser.snapshot("lab1", entries(2500), epoch=5, now=0)
    assert [type(m).__name__ for m in first] == ["SnapshotPart"] * 3
    second = advertiser.snapshot("lab1", entries(10), epoch=5, now=1)
    assert second[1:] == [Cleared(SnapshotTopic("h1", "lab1", 1)),
                          Cleared(SnapshotTopic("h1", "lab1", 2))]


def test_parts_retained_from_an_earlier_run_are_cleared():
    advertiser = Advertiser("h1", part_size=2)
    [old3] = [p for p in parts(epoch=1, seq=0, n=8) if p.part == 3]
    old3 = SnapshotPart("h1", "lab1", 1, 0, 3, 4, old3.macs)
    assert advertiser.seen_own_part(old3) == []       # before our first snapshot: remembered
    out = advertiser.snapshot("lab1", entries(1), epoch=9, now=0)
    assert out[1:] == [Cleared(SnapshotTopic("h1", "lab1", i)) for i in (1, 2, 3)]
    assert advertiser.seen_own_part(old3) == [Cleared(SnapshotTopic("h1", "lab1", 3))]
    assert advertiser.withdraw_lab("lab1") == [Cleared(SnapshotTopic("h1", "lab1", 0))]
