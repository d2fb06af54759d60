"""Publishing the local host's MAC feed: numbered deltas, and batched retained snapshots.

Deltas carry the local claims' changes as they happen (sequence numbers 1, 2, ... per lab,
continuing across reconnects; receivers order them by epoch first).  The retained snapshot is
what a host that (re)connects converges from, so it is re-published:

* when the epoch changed (a new connection) — before any delta of that epoch;
* when another host asks (``Resync``), or deltas could not be sent (``force``);
* otherwise after changes, at most once per ``min_interval`` seconds (coalescing bursts).

A snapshot is split into parts of at most ``MAX_ENTRIES`` MACs (one retained topic each),
so a lab of 2,000 MACs is two retained messages, not 2,000: mosquitto's default
``max_queued_messages`` (1000) silently drops retained messages beyond it to a new
subscriber.  Parts left over from a larger earlier snapshot, or seen retained from an
earlier run of this host, are cleared with an empty retained payload.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vnet.bus.location import Advert
from vnet.bus.messages import MAX_ENTRIES, Cleared, Delta, MacEntry, SnapshotPart
from vnet.bus.topics import MAX_PART, SnapshotTopic

DEFAULT_MIN_INTERVAL = 2.0


@dataclass
class _Lab:
    seq: int = 0                    # the last delta sequence number used
    snapshot_epoch: int = 0         # epoch of the last published snapshot
    snapshot_seq: int = -1
    snapshot_at: float | None = None
    known_parts: int = 0            # parts that may be retained on the broker
    forced: bool = False


class Advertiser:
    """The local host's feed state per lab."""

    def __init__(self, host: str, min_interval: float = DEFAULT_MIN_INTERVAL,
                 part_size: int = MAX_ENTRIES) -> None:
        if not 1 <= part_size <= MAX_ENTRIES:
            raise ValueError(f"part_size must be 1..{MAX_ENTRIES}")
        self.host = host
        self.min_interval = min_interval
        self.part_size = part_size
        self._labs: dict[str, _Lab] = {}

    def deltas(self, adverts: Iterable[Advert], epoch: int) -> list[Delta]:
        """The deltas that publish ``adverts``, numbered, at most ``part_size`` each."""
        by_lab: dict[str, list[Advert]] = {}
        for advert in adverts:
            by_lab.setdefault(advert.lab, []).append(advert)
        out: list[Delta] = []
        for lab, items in sorted(by_lab.items()):
            state = self._labs.setdefault(lab, _Lab())
            latest = {(a.network, a.mac): a for a in items}     # the last change of a MAC wins
            changes = list(latest.values())
            for start in range(0, len(changes), self.part_size):
                chunk = changes[start:start + self.part_size]
                state.seq += 1
                out.append(Delta(self.host, lab, epoch, state.seq,
                                 tuple(MacEntry(a.network, a.mac, a.seq) for a in chunk
                                       if a.seq is not None),
                                 tuple((a.network, a.mac) for a in chunk if a.seq is None)))
        return out

    def force(self, lab: str) -> None:
        """Publish the next snapshot of ``lab`` without waiting (a resync request, or
        deltas that could not be sent)."""
        self._labs.setdefault(lab, _Lab()).forced = True

    def snapshot_due(self, lab: str, epoch: int, now: float) -> bool:
        state = self._labs.setdefault(lab, _Lab())
        if state.forced or state.snapshot_epoch != epoch or state.snapshot_at is None:
            return True
        return state.seq != state.snapshot_seq and now - state.snapshot_at >= self.min_interval

    def snapshot(self, lab: str, entries: Sequence[MacEntry], epoch: int, now: float
                 ) -> list[SnapshotPart | Cleared]:
        """The retained messages of a snapshot of ``entries`` as of the last delta: its parts,
        then clears for parts that a larger earlier snapshot left behind."""
        state = self._labs.setdefault(lab, _Lab())
        chunks = [tuple(entries[i:i + self.part_size])
                  for i in range(0, len(entries), self.part_size)] or [()]
        if len(chunks) > MAX_PART + 1:
            raise ValueError(f"lab {lab}: {len(entries)} MACs need more than {MAX_PART + 1} "
                             "snapshot parts")
        out: list[SnapshotPart | Cleared] = [
            SnapshotPart(self.host, lab, epoch, state.seq, i, len(chunks), chunk)
            for i, chunk in enumerate(chunks)]
        out.extend(Cleared(SnapshotTopic(self.host, lab, i))
                   for i in range(len(chunks), state.known_parts))
        state.known_parts = len(chunks)
        state.snapshot_epoch, state.snapshot_seq, state.snapshot_at = epoch, state.seq, now
        state.forced = False
        return out

    def seen_own_part(self, part: SnapshotPart) -> list[Cleared]:
        """A retained part of our own came back (perhaps from an earlier run of this host):
        clear it now if the current snapshot has fewer parts, or remember it for the next."""
        state = self._labs.get(part.lab)
        if state is None or state.snapshot_at is None:
            state = self._labs.setdefault(part.lab, _Lab())
            state.known_parts = max(state.known_parts, part.part + 1)
            return []
        if part.part >= state.known_parts:
            return [Cleared(SnapshotTopic(self.host, part.lab, part.part))]
        return []

    def withdraw_lab(self, lab: str) -> list[Cleared]:
        """The lab is gone from this host: clear every part it may have retained."""
        state = self._labs.pop(lab, None)
        parts = max(state.known_parts, 1) if state is not None else 1
        return [Cleared(SnapshotTopic(self.host, lab, i)) for i in range(parts)]
