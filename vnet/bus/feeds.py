"""Receiving other hosts' MAC feeds: snapshot assembly, delta sequencing, gap handling.

Each (host, lab) feed is a retained snapshot (in parts) as of delta ``seq`` of ``epoch``,
followed by deltas ``seq + 1``, ``seq + 2``, ... of the same epoch.  So:

* a snapshot completes when every part of the same (epoch, seq) has arrived; it replaces the
  host's claims in the lab (``ReplaceMacs``) and the feed is *synced* at its seq;
* a delta at ``seq + 1`` applies (``ApplyDelta``); at or below ``seq`` it is already in the
  snapshot and ignored; above ``seq + 1`` is a *gap*: the feed is unsynced and a
  ``Resync`` request is due at once;
* a delta of a newer epoch (the host reconnected) unsyncs the feed until the snapshot of that
  epoch arrives, which the host publishes first after connecting; if it has not come after
  ``retry`` seconds, a request is due;
* an older epoch than the feed's is ``stale`` (raises ``BusError``, changes nothing).

While unsynced, the host's last known claims stay in the location table: traffic keeps
flowing to where MACs most likely are, and the next snapshot corrects everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vnet.bus.errors import BusError
from vnet.bus.messages import Delta, MacEntry, Resync, SnapshotPart

DEFAULT_RETRY = 5.0


@dataclass(frozen=True)
class ReplaceMacs:
    host: str
    lab: str
    entries: tuple[MacEntry, ...]


@dataclass(frozen=True)
class ApplyDelta:
    host: str
    lab: str
    set: tuple[MacEntry, ...]
    withdraw: tuple[tuple[str, str], ...]


@dataclass
class _Feed:
    epoch: int = 0
    seq: int = 0
    synced: bool = False
    assembling: tuple[int, int, int] | None = None      # (epoch, seq, parts)
    parts: dict[int, SnapshotPart] = field(default_factory=dict)
    waiting_since: float | None = None
    requested_at: float | None = None


class FeedTracker:
    """The sequencing state of every other host's feed, one per (host, lab)."""

    def __init__(self, local_host: str, retry: float = DEFAULT_RETRY) -> None:
        self.local_host = local_host
        self.retry = retry
        self._feeds: dict[tuple[str, str], _Feed] = {}

    def synced(self, host: str, lab: str) -> bool:
        feed = self._feeds.get((host, lab))
        return feed is not None and feed.synced

    def snapshot_part(self, part: SnapshotPart, now: float) -> ReplaceMacs | None:
        """Take one part; the whole snapshot once its last part is in."""
        feed = self._feeds.setdefault((part.host, part.lab), _Feed())
        ident = (part.epoch, part.seq, part.parts)
        if part.epoch < feed.epoch or (part.epoch == feed.epoch and feed.synced
                                       and part.seq < feed.seq):
            raise BusError("stale", f"snapshot of {part.host}/{part.lab} at epoch {part.epoch} "
                                    f"seq {part.seq}, older than epoch {feed.epoch} seq "
                                    f"{feed.seq}; ignored")
        if feed.assembling is not None and ident[:2] < feed.assembling[:2]:
            raise BusError("stale", f"snapshot part of {part.host}/{part.lab} older than the "
                                    "snapshot being assembled; ignored")
        if feed.assembling != ident:
            feed.assembling, feed.parts = ident, {}
        feed.parts[part.part] = part
        if len(feed.parts) < part.parts:
            return None
        entries = tuple(e for i in range(part.parts) for e in feed.parts[i].macs)
        feed.epoch, feed.seq, feed.synced = part.epoch, part.seq, True
        feed.assembling, feed.parts = None, {}
        feed.waiting_since = feed.requested_at = None
        return ReplaceMacs(part.host, part.lab, entries)

    def delta(self, delta: Delta, now: float) -> ApplyDelta | Resync | None:
        """Apply, ignore (``None``), or ask for a snapshot (a ``Resync`` to publish)."""
        feed = self._feeds.setdefault((delta.host, delta.lab), _Feed())
        if delta.epoch < feed.epoch:
            raise BusError("stale", f"delta of {delta.host}/{delta.lab} at epoch {delta.epoch}, "
                                    f"older than epoch {feed.epoch}; ignored")
        if delta.epoch > feed.epoch or not feed.synced:
            if delta.epoch > feed.epoch:
                feed.epoch, feed.synced = delta.epoch, False
            if feed.waiting_since is None:
                feed.waiting_since = now
            return None
        if delta.seq <= feed.seq:
            return None
        if delta.seq > feed.seq + 1:
            feed.synced = False
            feed.waiting_since = feed.requested_at = now
            return Resync(self.local_host, delta.host, delta.lab)
        feed.seq = delta.seq
        return ApplyDelta(delta.host, delta.lab, delta.set, delta.withdraw)

    def due_resyncs(self, now: float) -> list[Resync]:
        """Requests to (re)send: feeds unsynced for ``retry`` seconds since they started
        waiting or since the last request."""
        out: list[Resync] = []
        for (host, lab), feed in sorted(self._feeds.items()):
            if feed.synced or feed.waiting_since is None:
                continue
            since = feed.requested_at if feed.requested_at is not None else feed.waiting_since
            if now - since >= self.retry:
                feed.requested_at = now
                out.append(Resync(self.local_host, host, lab))
        return out

    def host_gone(self, host: str) -> None:
        """``host`` went down: its feeds start afresh with its next epoch."""
        for key in [k for k in self._feeds if k[0] == host]:
            del self._feeds[key]

    def forget_lab(self, lab: str) -> None:
        for key in [k for k in self._feeds if k[1] == lab]:
            del self._feeds[key]
