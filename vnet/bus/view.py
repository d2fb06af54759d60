"""One host's whole view of the bus: every received message in, what to do out (pure).

``BusView`` composes the peer table, the feed tracker, the location table and the
advertiser, so that the daemon's loop is only::

    for each validated message:   effects = view.receive(message, now)
    on a local learn / flush:     effects = view.local_learn(...) / view.local_forget(...)
    on a timer (view.next_timer): effects = view.tick(now)
    after each (re)connect:       effects = view.connected(epoch, now)
    when the connection drops:    view.disconnected()

and then applies ``effects``: publish ``effects.publish`` (deltas, snapshots, resync
requests, clears), hand ``effects.changes.fdb`` to the datapath, report duplicates and
refusals, realise ``effects.desired``.  ``receive`` raises ``BusError`` (``stale``,
``illegal-transition``) and then has changed nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vnet.bus.advertise import Advertiser
from vnet.bus.errors import BusError
from vnet.bus.feeds import ApplyDelta, FeedTracker, ReplaceMacs
from vnet.bus.liveness import WILL_GRACE, PeerTable, Transition
from vnet.bus.location import Changes, LocationTable
from vnet.bus.messages import (
    Cleared,
    Delta,
    DesiredLab,
    LabDeleted,
    Message,
    Resync,
    SnapshotPart,
    Status,
)
from vnet.bus.topics import DesiredTopic, StatusTopic
from vnet.topology.model import Topology


@dataclass
class Effects:
    """What the daemon must do after one event; empty parts mean nothing to do."""

    changes: list[Changes] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    publish: list[Message] = field(default_factory=list)
    # per lab: its new desired state, its tombstone (vnet down), or None (cleared)
    desired: dict[str, DesiredLab | LabDeleted | None] = field(default_factory=dict)

    def add(self, changes: Changes) -> None:
        if changes:
            self.changes.append(changes)

    def __bool__(self) -> bool:
        return bool(self.changes or self.transitions or self.publish or self.desired)


class BusView:
    """Everything one host knows from the bus (see module docstring)."""

    def __init__(self, local_host: str, *, resync_retry: float = 5.0,
                 snapshot_interval: float = 2.0, will_grace: float = WILL_GRACE) -> None:
        self.local_host = local_host
        self.epoch = 0
        self.peers = PeerTable(local_host, will_grace=will_grace)
        self.feeds = FeedTracker(local_host, retry=resync_retry)
        self.location = LocationTable(local_host)
        self.advertiser = Advertiser(local_host, min_interval=snapshot_interval)
        self.desired: dict[str, DesiredLab] = {}
        self.deleted: dict[str, int] = {}    # lab -> generation of its tombstone
        self.local_labs: set[str] = set()   # labs this host advertises MACs in

    def topologies(self) -> list[Topology]:
        return [d.topology for _, d in sorted(self.desired.items())]

    def generation(self, lab: str) -> int:
        """The lab's newest generation known from its desired topic (0: none)."""
        known = self.desired.get(lab)
        return max(known.generation if known else 0, self.deleted.get(lab, 0))

    # -- the broker -------------------------------------------------------------------------

    def connected(self, epoch: int, now: float) -> Effects:
        """A (re)connection with a new epoch: snapshots first, then leases start again."""
        self.epoch = epoch
        self.peers.restart_leases(now)
        return self._snapshots(now)

    def disconnected(self) -> Effects:
        """Our connection dropped: Wills held back are void, leases wait (``liveness``)."""
        self.peers.cut_off()
        return Effects()

    def receive(self, message: Message, now: float, *, retained: bool = False) -> Effects:
        """``retained``: the broker sent it on our subscription, not as it happened."""
        match message:
            case DesiredLab():
                return self._desired(message)
            case LabDeleted():
                return self._tombstone(message)
            case Status():
                return self._status(message, now, retained)
            case SnapshotPart():
                return self._snapshot(message, now)
            case Delta():
                return self._delta(message, now)
            case Resync():
                return self._resync(message, now)
            case Cleared(topic=DesiredTopic(lab=lab)):
                self.deleted.pop(lab, None)       # cleared: generations start again
                return self._lab_removed(lab)
            case Cleared(topic=StatusTopic(host=host)):
                return self._down(self.peers.forget(host))
            case Cleared():
                return Effects()      # a snapshot part: the host's next snapshot says what holds

    def tick(self, now: float) -> Effects:
        effects = Effects()
        for transition in self.peers.expire(now):
            effects = _merge(effects, self._down(transition))
        effects.publish.extend(self.feeds.due_resyncs(now))
        aged = self.location.age_out(now)
        effects.add(aged)
        effects.publish.extend(self.advertiser.deltas(aged.adverts, self.epoch))
        return _merge(effects, self._snapshots(now))

    def next_timer(self, now: float) -> float:
        """When ``tick`` should run next (at the latest a second from now)."""
        deadline = self.peers.next_deadline()
        return min(now + 1.0, deadline) if deadline is not None else now + 1.0

    # -- the local switch -------------------------------------------------------------------

    def local_learn(self, lab: str, network: str, mac: str, now: float,
                    seen: float | None = None) -> Effects:
        """``mac`` is on a local port, last seen at ``seen`` (default ``now``)."""
        self.local_labs.add(lab)
        return self._local(self.location.local_learn(lab, network, mac, now, seen))

    def local_forget(self, lab: str, network: str, mac: str) -> Effects:
        return self._local(self.location.local_forget(lab, network, mac))

    def deltas_lost(self, labs: Iterable[str]) -> None:
        """Deltas could not be sent (cut off): the next tick re-publishes the snapshots."""
        for lab in labs:
            self.advertiser.force(lab)

    # -- internals --------------------------------------------------------------------------

    def _local(self, changes: Changes) -> Effects:
        effects = Effects()
        effects.add(changes)
        effects.publish.extend(self.advertiser.deltas(changes.adverts, self.epoch))
        return effects

    def _desired(self, message: DesiredLab) -> Effects:
        known = self.desired.get(message.lab)
        self._check_generation(message.lab, message.generation,
                               known.generation if known else self.deleted.get(message.lab))
        effects = Effects()
        if known == message:
            return effects
        self.desired[message.lab] = message
        self.deleted.pop(message.lab, None)
        effects.desired[message.lab] = message
        effects.add(self.location.set_topology(message.topology))
        return effects

    def _tombstone(self, message: LabDeleted) -> Effects:
        """``vnet down``: the lab goes away at a generation that a later up must exceed."""
        lab = message.lab
        known = self.desired.get(lab)
        self._check_generation(lab, message.generation,
                               known.generation if known else self.deleted.get(lab))
        if known is None and self.deleted.get(lab) == message.generation:
            return Effects()                      # the same tombstone again
        self.deleted[lab] = message.generation
        effects = self._lab_removed(lab)
        effects.desired[lab] = message
        return effects

    @staticmethod
    def _check_generation(lab: str, generation: int, known: int | None) -> None:
        if known is not None and generation < known:
            raise BusError("stale", f"lab {lab!r} generation {generation} is older than the "
                                    f"known {known}; ignored")

    def _lab_removed(self, lab: str) -> Effects:
        effects = Effects()
        if self.desired.pop(lab, None) is None:
            return effects
        effects.desired[lab] = None
        effects.add(self.location.forget_lab(lab))
        self.feeds.forget_lab(lab)
        if lab in self.local_labs:
            self.local_labs.discard(lab)
            effects.publish.extend(self.advertiser.withdraw_lab(lab))
        return effects

    def _status(self, message: Status, now: float, retained: bool) -> Effects:
        transition = self.peers.observe(message, now, retained=retained)
        if transition is None:
            return Effects()
        if transition.went_down:
            return self._down(transition)
        effects = Effects(transitions=[transition] if transition.changed else [])
        if transition.came_up:
            effects.add(self.location.set_alive(message.host, True))
        return effects

    def _down(self, transition: Transition | None) -> Effects:
        if transition is None:
            return Effects()
        effects = Effects(transitions=[transition])
        if transition.after == "expired":
            # silent, not gone: its claims stop counting but are kept with its feed, so a
            # refresh of the same epoch (a partition healed) restores them at once
            effects.add(self.location.set_alive(transition.host, False))
        elif transition.went_down or transition.after is None:
            effects.add(self.location.remove_host(transition.host))
            self.feeds.host_gone(transition.host)
        return effects

    def _snapshot(self, part: SnapshotPart, now: float) -> Effects:
        effects = Effects()
        if part.host == self.local_host:
            effects.publish.extend(self.advertiser.seen_own_part(part))
            return effects
        self._check_epoch(part.host, part.epoch)
        result = self.feeds.snapshot_part(part, now)
        if isinstance(result, ReplaceMacs):
            effects.add(self.location.replace_host(result.host, result.lab, result.entries,
                                                   now=now))
        return effects

    def _delta(self, delta: Delta, now: float) -> Effects:
        effects = Effects()
        if delta.host == self.local_host:
            return effects
        self._check_epoch(delta.host, delta.epoch)
        result = self.feeds.delta(delta, now)
        if isinstance(result, ApplyDelta):
            effects.add(self.location.apply_delta(result.host, result.lab, result.set,
                                                  result.withdraw, now=now))
        elif isinstance(result, Resync):
            effects.publish.append(result)
        return effects

    def _resync(self, request: Resync, now: float) -> Effects:
        if request.peer != self.local_host or request.lab not in self.local_labs:
            return Effects()
        self.advertiser.force(request.lab)
        return self._snapshots(now)

    def _check_epoch(self, host: str, epoch: int) -> None:
        peer = self.peers.get(host)
        if peer is not None and epoch < peer.epoch:
            raise BusError("stale", f"MACs of {host!r} at epoch {epoch}, older than its status "
                                    f"epoch {peer.epoch}; ignored")

    def _snapshots(self, now: float) -> Effects:
        effects = Effects()
        if self.epoch == 0:
            return effects          # not connected yet
        for lab in sorted(self.local_labs):
            if self.advertiser.snapshot_due(lab, self.epoch, now):
                effects.publish.extend(self.advertiser.snapshot(
                    lab, self.location.local_claims(lab), self.epoch, now))
        return effects


def _merge(a: Effects, b: Effects) -> Effects:
    a.changes.extend(b.changes)
    a.transitions.extend(b.transitions)
    a.publish.extend(b.publish)
    a.desired.update(b.desired)
    return a

