"""The peer table: which hosts are alive, from their status messages, Wills and leases.

Each host's retained ``status`` says ``online``/``offline``/``lost`` with an epoch (see
``epoch.py``); ``online`` also carries a lease: a peer that hears no refresh within it marks
the host ``expired`` (lost by silence).  The lease is what survives a stale retained ``online``
(after the broker and the host died together, mosquitto 2.0.11 restores it, and no Will will
ever come) and a wedged host whose TCP connection stays up.

Rules, as one table (like h11's state machine: an event the table does not allow raises and
changes nothing):

* an event with an older epoch than the one known is ``stale`` and ignored (raises);
* an event with a newer epoch, or about an unknown host, starts a new incarnation in the
  state it says;
* within one epoch, ``TRANSITIONS`` says what may follow what.

Two rules keep a broker outage from looking like every host dying (mosquitto publishes every
connected client's Will when it shuts down, and with persistence keeps them retained):

* a Will of a host known alive takes effect ``will_grace`` seconds after it arrived, unless
  our own connection drops first (``cut_off``): then the broker was going away, and the
  Will says nothing about the host;
* a Will of a host known alive that comes as a retained message (after our own reconnect:
  we did not see it happen) is left to the lease, which restarts at our reconnect; and
  while we are cut off no lease runs out (we hear nobody; that says nothing about them).

``now`` is a monotonic time passed in by the caller; leases are measured on the receiver's
clock (from when a status arrived), never from the sender's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from vnet.bus.errors import BusError
from vnet.bus.messages import LabRealised, Status

PeerState = Literal["online", "offline", "lost", "expired"]
Event = Literal["online", "offline", "lost", "expire"]

TRANSITIONS: Mapping[tuple[PeerState, Event], PeerState] = {
    ("online", "online"): "online",      # a refresh
    ("online", "offline"): "offline",    # a clean stop
    ("online", "lost"): "lost",          # its Will
    ("online", "expire"): "expired",     # silence beyond the lease
    ("offline", "offline"): "offline",   # the same retained status again
    ("lost", "lost"): "lost",
    ("expired", "online"): "online",     # it was only slow (or we were cut off)
    ("expired", "offline"): "offline",
    ("expired", "lost"): "lost",
    ("expired", "expire"): "expired",
}
# Not allowed within one epoch: offline/lost -> online (a connection that ended cannot come
# back: a reconnect takes a new epoch), offline <-> lost (a connection ends once).

ALIVE: frozenset[PeerState] = frozenset({"online"})
WILL_GRACE = 1.0   # s: the broker's shutdown sends the Wills, then closes our connection


@dataclass(frozen=True)
class Peer:
    """What is known about one other host."""

    host: str
    state: PeerState
    epoch: int
    deadline: float | None = None          # online: expires if no refresh by then
    lease: float = 30.0
    address: str | None = None
    labs: Mapping[str, LabRealised] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.state in ALIVE

    def __hash__(self) -> int:
        return hash((self.host, self.state, self.epoch, self.deadline))


@dataclass(frozen=True)
class Transition:
    """A peer's change, for the caller to act on (withdraw a lost host's MACs, ...)."""

    host: str
    before: PeerState | None
    after: PeerState | None
    epoch: int

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def went_down(self) -> bool:
        """It was alive and is not any more: withdraw its MACs, stop flooding to it."""
        return self.before in ALIVE and self.after not in ALIVE

    @property
    def came_up(self) -> bool:
        return self.before not in ALIVE and self.after in ALIVE


class PeerTable:
    """The other hosts' liveness; messages about ``local_host`` itself are not peers."""

    def __init__(self, local_host: str, *, will_grace: float = WILL_GRACE) -> None:
        self.local_host = local_host
        self.will_grace = will_grace
        self._peers: dict[str, Peer] = {}
        self._wills: dict[str, tuple[Status, float]] = {}   # host -> its Will, when it counts
        self._cut_off = False

    def __iter__(self) -> Iterator[Peer]:
        return iter(sorted(self._peers.values(), key=lambda p: p.host))

    def get(self, host: str) -> Peer | None:
        return self._peers.get(host)

    def alive(self) -> frozenset[str]:
        return frozenset(p.host for p in self._peers.values() if p.alive)

    def observe(self, status: Status, now: float, *, retained: bool = False
                ) -> Transition | None:
        """Apply a received status (or Will); ``None`` for the local host's own messages and
        for a Will held back (see the module docstring).  ``retained``: the broker sent it
        because we subscribed, not as it happened.

        Raises ``BusError`` (``stale`` or ``illegal-transition``) and changes nothing when the
        table refuses the event."""
        if status.host == self.local_host:
            return None
        known = self._peers.get(status.host)
        state = _next_state(known, status.state, status.epoch, status.host)
        if (status.state == "lost" and known is not None and known.alive
                and status.epoch >= known.epoch):
            if retained:
                return None                  # old news: the lease (from our reconnect) decides
            if self.will_grace > 0:
                self._wills[status.host] = (status, now + self.will_grace)
                return None
        self._wills.pop(status.host, None)
        return self._apply(known, status, state, now)

    def _apply(self, known: Peer | None, status: Status, state: PeerState, now: float
               ) -> Transition:
        deadline = now + status.lease if state == "online" else None
        self._peers[status.host] = Peer(status.host, state, status.epoch, deadline,
                                        status.lease, status.address, dict(status.labs))
        return Transition(status.host, known.state if known else None, state, status.epoch)

    def forget(self, host: str) -> Transition | None:
        """The host's retained status was cleared (an operator removed the host)."""
        self._wills.pop(host, None)
        known = self._peers.pop(host, None)
        if known is None:
            return None
        return Transition(host, known.state, None, known.epoch)

    def expire(self, now: float) -> list[Transition]:
        """Apply the Wills whose grace is over; mark ``expired`` every online peer whose lease
        ran out by ``now`` (none while we are cut off from the broker)."""
        out: list[Transition] = []
        for host, (will, due) in sorted(self._wills.items()):
            if due <= now:
                del self._wills[host]
                known = self._peers.get(host)
                try:
                    state = _next_state(known, will.state, will.epoch, host)
                except BusError:
                    continue                 # overtaken (it cannot be, but never raise here)
                out.append(self._apply(known, will, state, now))
        if self._cut_off:
            return out
        for peer in list(self._peers.values()):
            if peer.state == "online" and peer.deadline is not None and peer.deadline <= now:
                state = _next_state(peer, "expire", peer.epoch, peer.host)
                self._peers[peer.host] = replace(peer, state=state, deadline=None)
                out.append(Transition(peer.host, peer.state, state, peer.epoch))
        return out

    def cut_off(self) -> None:
        """Our connection to the broker dropped: the Wills held back are dropped with it (the
        broker sends every client's Will when it shuts down) and no lease runs out until we
        are back."""
        self._wills.clear()
        self._cut_off = True

    def restart_leases(self, now: float) -> None:
        """After our own reconnect: we could not hear refreshes while cut off, so every online
        peer's lease starts again from ``now`` (and retained statuses arrive anew)."""
        self._cut_off = False
        for peer in list(self._peers.values()):
            if peer.state == "online":
                self._peers[peer.host] = replace(peer, deadline=now + peer.lease)

    def next_deadline(self) -> float | None:
        """When ``expire`` next has something to do (for the caller's timer)."""
        deadlines = [due for _, due in self._wills.values()]
        if not self._cut_off:                # while cut off no lease runs out
            deadlines += [p.deadline for p in self._peers.values() if p.deadline is not None]
        return min(deadlines) if deadlines else None


def _next_state(known: Peer | None, event: Event, epoch: int, host: str) -> PeerState:
    if known is None or epoch > known.epoch:
        if event == "expire":
            raise BusError("illegal-transition", f"host {host!r}: nothing to expire")
        return event
    if epoch < known.epoch:
        raise BusError("stale", f"host {host!r}: {event} of epoch {epoch} is older than the "
                                f"known epoch {known.epoch}; ignored")
    state = TRANSITIONS.get((known.state, event))
    if state is None:
        raise BusError("illegal-transition", f"host {host!r} epoch {epoch}: {event} cannot "
                                             f"follow {known.state} in the same epoch")
    return state
