"""Where each MAC lives: the claims of every host, resolved like EVPN type-2 routes.

Every host *claims* the MACs its switch learned on local ports, per (lab, network), with a
MAC-mobility sequence number (RFC 7432 §15).  Resolution, per MAC:

* only the local host's claims and those of *alive* hosts count (claims of a host whose
  status has not arrived yet are kept, and count once it is online);
* a claim for a MAC that the topology places on another host (a NIC of a node with
  ``host:``) is refused and reported once: no host can hijack another host's node's MAC;
* the highest sequence wins, so a move (a new claim at ``seq + 1``) wins over the old place;
* two hosts at the same highest sequence are a *duplicate*: reported once, and the entry
  already installed stays (the MAC does not flap between hosts);
* when another host wins with a higher sequence, the local claim is withdrawn (the MAC moved
  away: the datapath's local entry is replaced by the remote one).

The table returns ``Changes``: the remote FDB entries the datapath must add, replace or
remove, the duplicates and refusals to report, and the local adverts to publish as deltas.
A local learn of a MAC that another host claims takes that claim's sequence + 1, but only if
the local sighting is *newer than that claim's arrival*: a switch entry last refreshed before
another host claimed the MAC is what the MAC left behind when it moved, not a move back
(otherwise a host polling its switch would take back every MAC that moved away until its
entry aged out).  Only frames from local ports may be learned here; frames that came over the
overlay are the remote host's to advertise.  Time (``now``, ``seen``) is a monotonic clock
passed in, for local aging and arrival times.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from vnet.bus.messages import MAX_MOBILITY_SEQ, MacEntry
from vnet.topology.model import Topology

Key = tuple[str, str, str]   # (lab, network, mac)
DEFAULT_AGING = 300.0
MOVE_LIMIT, MOVE_WINDOW = 5, 180.0   # RFC 7432 §15.1: 5 moves in 180 s make a duplicate


@dataclass(frozen=True)
class RemoteSet:
    """Install or replace: frames for ``mac`` in ``network`` go to ``host`` over the overlay."""

    lab: str
    network: str
    mac: str
    host: str


@dataclass(frozen=True)
class RemoteDelete:
    """Remove the remote entry: ``mac`` is local now, or nowhere known (flood)."""

    lab: str
    network: str
    mac: str


@dataclass(frozen=True)
class Duplicate:
    """Several hosts claim ``mac`` at the same sequence: an operator must look."""

    lab: str
    network: str
    mac: str
    hosts: tuple[str, ...]
    seq: int


@dataclass(frozen=True)
class Refused:
    """``host`` claimed ``mac``, which the topology places on host ``owner``."""

    lab: str
    network: str
    mac: str
    host: str
    owner: str


@dataclass(frozen=True)
class Advert:
    """A change of the local host's own claims, to publish in a delta (``seq None``:
    withdrawn)."""

    lab: str
    network: str
    mac: str
    seq: int | None


FdbChange = RemoteSet | RemoteDelete


@dataclass(frozen=True)
class Changes:
    fdb: tuple[FdbChange, ...] = ()
    duplicates: tuple[Duplicate, ...] = ()
    refusals: tuple[Refused, ...] = ()
    adverts: tuple[Advert, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fdb or self.duplicates or self.refusals or self.adverts)


@dataclass
class _Collector:
    fdb: list[FdbChange] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    refusals: list[Refused] = field(default_factory=list)
    adverts: list[Advert] = field(default_factory=list)

    def changes(self) -> Changes:
        return Changes(tuple(self.fdb), tuple(self.duplicates), tuple(self.refusals),
                       tuple(self.adverts))


class LocationTable:
    """Every host's MAC claims, for the labs of one local host (see module docstring)."""

    def __init__(self, local_host: str) -> None:
        self.local_host = local_host
        self._claims: dict[Key, dict[str, int]] = {}
        self._arrived: dict[tuple[Key, str], float] = {}   # a remote claim at its sequence
        self._by_host: dict[tuple[str, str], set[tuple[str, str]]] = {}   # (host, lab)
        self._winner: dict[Key, str] = {}          # installed: local host or a remote one
        self._duplicates: set[Key] = set()
        self._refused: set[tuple[Key, str]] = set()
        self._pins: dict[str, dict[str, str]] = {}  # lab -> mac -> host the topology says
        self._aging: dict[tuple[str, str], float] = {}
        self._local_seen: dict[Key, float] = {}
        self._moves: dict[Key, list[float]] = {}   # when the MAC moved here from elsewhere
        self._dampened: set[Key] = set()
        self._alive: set[str] = set()

    # -- queries ----------------------------------------------------------------------------

    def remote_fdb(self, lab: str) -> dict[tuple[str, str], str]:
        """(network, mac) -> host for every remote entry of ``lab`` the datapath should hold."""
        return {(n, m): h for (lb, n, m), h in self._winner.items()
                if lb == lab and h != self.local_host}

    def local_claims(self, lab: str) -> tuple[MacEntry, ...]:
        """The local host's claims in ``lab``: the content of its snapshot."""
        keys = self._by_host.get((self.local_host, lab), set())
        return tuple(MacEntry(n, m, self._claims[(lab, n, m)][self.local_host])
                     for n, m in sorted(keys))

    def claims(self, lab: str, network: str, mac: str) -> dict[str, int]:
        return dict(self._claims.get((lab, network, mac), {}))

    def duplicates(self) -> frozenset[Key]:
        return frozenset(self._duplicates)

    # -- the topology -----------------------------------------------------------------------

    def set_topology(self, topology: Topology) -> Changes:
        """Pin the MACs of placed nodes to their hosts and re-resolve the lab's MACs."""
        lab = topology.name
        self._pins[lab] = {nic.mac.lower(): node.host for node in topology.nodes
                           if node.host is not None for nic in node.nics}
        for aging_key in [k for k in self._aging if k[0] == lab]:
            del self._aging[aging_key]
        for network in topology.networks:
            self._aging[(lab, network.name)] = network.mac_aging
        out = _Collector()
        for key in sorted(k for k in self._claims if k[0] == lab):
            self._resolve(key, out)
        return out.changes()

    def forget_lab(self, lab: str) -> Changes:
        """The lab is no longer desired here: drop its claims and entries."""
        self._pins.pop(lab, None)
        out = _Collector()
        for key in sorted(k for k in self._claims if k[0] == lab):
            for host in list(self._claims[key]):
                self._drop_claim(key, host)
            self._resolve(key, out)
        return Changes(fdb=tuple(out.fdb))

    # -- remote hosts -----------------------------------------------------------------------

    def replace_host(self, host: str, lab: str, entries: Iterable[MacEntry], *,
                     now: float) -> Changes:
        """A complete snapshot of ``host``'s claims in ``lab``, arrived at ``now``."""
        new = {e.key: e.seq for e in entries}
        old = self._by_host.get((host, lab), set())
        touched = set(old) | set(new)
        for network, mac in old - set(new):
            self._drop_claim((lab, network, mac), host)
        for (network, mac), seq in new.items():
            self._put_claim((lab, network, mac), host, seq, now)
        out = _Collector()
        for network, mac in sorted(touched):
            self._resolve((lab, network, mac), out)
        return out.changes()

    def apply_delta(self, host: str, lab: str, sets: Iterable[MacEntry],
                    withdraw: Iterable[tuple[str, str]], *, now: float) -> Changes:
        touched: set[tuple[str, str]] = set()
        for network, mac in withdraw:
            self._drop_claim((lab, network, mac), host)
            touched.add((network, mac))
        for entry in sets:
            self._put_claim((lab, *entry.key), host, entry.seq, now)
            touched.add(entry.key)
        out = _Collector()
        for network, mac in sorted(touched):
            self._resolve((lab, network, mac), out)
        return out.changes()

    def set_alive(self, host: str, alive: bool) -> Changes:
        """``host`` came up (its claims count) or went down (they stop counting)."""
        if alive == (host in self._alive) or host == self.local_host:
            return Changes()
        if alive:
            self._alive.add(host)
        else:
            self._alive.discard(host)
        out = _Collector()
        for (h, lab), keys in sorted(self._by_host.items()):
            if h == host:
                for network, mac in sorted(keys):
                    self._resolve((lab, network, mac), out)
        return out.changes()

    def remove_host(self, host: str) -> Changes:
        """``host`` went offline or was lost: withdraw everything it claimed."""
        self._alive.discard(host)
        touched: set[Key] = set()
        for (h, lab), keys in list(self._by_host.items()):
            if h == host:
                for network, mac in list(keys):
                    self._drop_claim((lab, network, mac), host)
                    touched.add((lab, network, mac))
        out = _Collector()
        for key in sorted(touched):
            self._resolve(key, out)
        return out.changes()

    # -- the local host ---------------------------------------------------------------------

    def local_learn(self, lab: str, network: str, mac: str, now: float,
                    seen: float | None = None) -> Changes:
        """The local switch learned (or refreshed) ``mac`` on a local port, last ``seen``
        then (default ``now``: the MACs of this host's NICs are always here)."""
        mac = mac.lower()
        key = (lab, network, mac)
        seen = now if seen is None else min(seen, now)
        if now - seen >= self._aging.get((lab, network), DEFAULT_AGING):
            return Changes()            # aged out already: not a sighting
        claims = self._claims.get(key, {})
        if self.local_host in claims:
            self._local_seen[key] = max(self._local_seen.get(key, seen), seen)
            return Changes()
        owner = self._pins.get(lab, {}).get(mac)
        if owner is not None and owner != self.local_host:
            return self._refuse_local(key, owner)
        if any(self._arrived.get((key, h), -math.inf) >= seen for h in claims
               if owner is None or h == owner):
            return Changes()            # seen before another host claimed it: it moved there
        others = [s for h, s in claims.items() if h != self.local_host]
        seq = min(max(others) + 1, MAX_MOBILITY_SEQ) if others else 0
        if others:
            moves = [t for t in self._moves.get(key, []) if now - t < MOVE_WINDOW] + [now]
            self._moves[key] = moves
            if len(moves) > MOVE_LIMIT:
                return self._dampen(key, claims, seq)
        self._dampened.discard(key)
        self._put_claim(key, self.local_host, seq)
        self._local_seen[key] = seen
        out = _Collector(adverts=[Advert(lab, network, mac, seq)])
        self._resolve(key, out)
        return out.changes()

    def local_forget(self, lab: str, network: str, mac: str) -> Changes:
        """The local switch no longer has ``mac`` (port removed, entry flushed)."""
        key = (lab, network, mac.lower())
        if self.local_host not in self._claims.get(key, {}):
            return Changes()
        self._drop_claim(key, self.local_host)
        out = _Collector(adverts=[Advert(lab, key[1], key[2], None)])
        self._resolve(key, out)
        return out.changes()

    def age_out(self, now: float) -> Changes:
        """Withdraw local claims not refreshed within their network's ``mac_aging`` (and
        forget moves older than the dampening window)."""
        for key in [k for k, times in self._moves.items() if now - times[-1] >= MOVE_WINDOW]:
            del self._moves[key]
        out = _Collector()
        for key, seen in sorted(self._local_seen.items()):
            if now - seen >= self._aging.get((key[0], key[1]), DEFAULT_AGING):
                self._drop_claim(key, self.local_host)
                out.adverts.append(Advert(*key, None))
                self._resolve(key, out)
        return out.changes()

    # -- internals --------------------------------------------------------------------------

    def _put_claim(self, key: Key, host: str, seq: int, now: float | None = None) -> None:
        claims = self._claims.setdefault(key, {})
        if now is not None and claims.get(host) != seq:
            self._arrived[(key, host)] = now
        claims[host] = seq
        self._by_host.setdefault((host, key[0]), set()).add((key[1], key[2]))

    def _drop_claim(self, key: Key, host: str) -> None:
        claims = self._claims.get(key)
        if claims is not None and claims.pop(host, None) is not None and not claims:
            del self._claims[key]
        keys = self._by_host.get((host, key[0]))
        if keys is not None:
            keys.discard((key[1], key[2]))
            if not keys:
                del self._by_host[(host, key[0])]
        self._refused.discard((key, host))
        self._arrived.pop((key, host), None)
        if host == self.local_host:
            self._local_seen.pop(key, None)

    def _refuse_local(self, key: Key, owner: str) -> Changes:
        if (key, self.local_host) in self._refused:
            return Changes()
        self._refused.add((key, self.local_host))
        return Changes(refusals=(Refused(*key, self.local_host, owner),))

    def _dampen(self, key: Key, claims: dict[str, int], seq: int) -> Changes:
        """The MAC keeps moving here and away: a duplicate (two places at once), so stop
        claiming it rather than flap (RFC 7432 §15.1)."""
        if key in self._dampened:
            return Changes()
        self._dampened.add(key)
        hosts = tuple(sorted({*claims, self.local_host}))
        return Changes(duplicates=(Duplicate(*key, hosts, seq),))

    def _resolve(self, key: Key, out: _Collector) -> None:
        """Recompute the winner of ``key`` and record what changed."""
        lab, network, mac = key
        owner = self._pins.get(lab, {}).get(mac)
        eligible: dict[str, int] = {}
        for host, seq in sorted(self._claims.get(key, {}).items()):
            if owner is None or host == owner:
                if host == self.local_host or host in self._alive:
                    eligible[host] = seq
            elif (key, host) not in self._refused:
                self._refused.add((key, host))
                out.refusals.append(Refused(lab, network, mac, host, owner))
        before = self._winner.get(key)
        winner: str | None = None
        if eligible:
            top = max(eligible.values())
            tops = tuple(sorted(h for h, s in eligible.items() if s == top))
            if len(tops) == 1:
                winner = tops[0]
                self._duplicates.discard(key)
            else:
                winner = before if before in tops else None
                if key not in self._duplicates:
                    self._duplicates.add(key)
                    out.duplicates.append(Duplicate(lab, network, mac, tops, top))
            local_seq = eligible.get(self.local_host)
            if (winner is not None and winner != self.local_host and local_seq is not None
                    and local_seq < eligible[winner]):
                self._drop_claim(key, self.local_host)        # it moved away from us
                out.adverts.append(Advert(lab, network, mac, None))
        else:
            self._duplicates.discard(key)
        if winner is None:
            self._winner.pop(key, None)
        else:
            self._winner[key] = winner
        remote_before = before if before != self.local_host else None
        remote_after = winner if winner != self.local_host else None
        if remote_after != remote_before:
            if remote_after is None:
                out.fdb.append(RemoteDelete(lab, network, mac))
            else:
                out.fdb.append(RemoteSet(lab, network, mac, remote_after))
