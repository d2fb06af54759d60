"""The forwarding database: per-VLAN MAC learning with aging, moves, static entries, limits.

Aging is lazy and amortised: a lookup ignores an entry older than its VLAN's aging time, and
``expire(now)`` walks a per-VLAN queue of learn times from the oldest, so each call costs in
proportion to what actually expired, not to the table's size (1 M entries stay cheap).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from vnet.packet.ethernet import mac_to_bytes, mac_to_str
from vnet.switch.ports import DEFAULT_MAC_AGING, DEFAULT_MAC_LIMIT


class FdbEntry(NamedTuple):
    vid: int
    mac: str
    port: int
    age: float
    static: bool


class MacEntry:
    """A MAC's live entry in a VLAN: where it was seen, when, whether static."""

    __slots__ = ("port", "seen", "static")

    def __init__(self, port: int, seen: float, static: bool) -> None:
        self.port = port
        self.seen = seen
        self.static = static


class _Vlan:
    __slots__ = ("aging", "limit", "macs", "queue")

    def __init__(self, aging: float, limit: int) -> None:
        self.aging = aging
        self.limit = limit
        self.macs: dict[bytes, MacEntry] = {}
        self.queue: deque[tuple[float, bytes]] = deque()  # (time learned or re-queued, mac)


class LearnResult:
    """What ``learn`` did, for the port's counters (constants, so nothing is allocated)."""

    REFRESHED, LEARNED, MOVED, LIMITED = range(4)


class Fdb:
    def __init__(self) -> None:
        self._vlans: dict[int, _Vlan] = {}
        self._learned: dict[tuple[int, int], int] = {}  # (port, vid) -> learned entries
        # Bumped by every change but a refresh (an entry learned, moved, forgotten, expired,
        # made static): a decision taken under an older generation may be stale.
        self.generation = 0

    def configure_vlan(self, vid: int, aging: float = DEFAULT_MAC_AGING,
                       limit: int = DEFAULT_MAC_LIMIT) -> None:
        self.generation += 1
        vlan = self._vlans.get(vid)
        if vlan is None:
            self._vlans[vid] = _Vlan(aging, limit)
        else:
            vlan.aging, vlan.limit = aging, limit

    def _vlan(self, vid: int) -> _Vlan:
        vlan = self._vlans.get(vid)
        if vlan is None:
            vlan = self._vlans[vid] = _Vlan(DEFAULT_MAC_AGING, DEFAULT_MAC_LIMIT)
        return vlan

    def learn(self, vid: int, mac: bytes, port: int, now: float) -> int:
        """Note that ``mac`` was seen on ``port`` in ``vid``; returns a ``LearnResult``."""
        vlan = self._vlan(vid)
        entry = vlan.macs.get(mac)
        result = self._learn_outcome(vlan.limit, entry, vid, port)
        if result == LearnResult.REFRESHED:
            assert entry is not None
            entry.seen = now
        elif result == LearnResult.LEARNED:
            self.generation += 1
            self._learned[(port, vid)] = self._learned.get((port, vid), 0) + 1
            vlan.macs[mac] = MacEntry(port, now, False)
            vlan.queue.append((now, mac))
        elif entry is not None:  # moved, or moved to a port that may learn no more
            self._learned[(entry.port, vid)] -= 1
            self.generation += 1
            if result == LearnResult.LIMITED:
                del vlan.macs[mac]  # forgotten: better flooded than sent to its old port
            else:
                self._learned[(port, vid)] = self._learned.get((port, vid), 0) + 1
                entry.port, entry.seen = port, now
        return result

    def would_learn(self, vid: int, mac: bytes, port: int) -> tuple[int, int | None]:
        """What ``learn`` would do, changing nothing: its ``LearnResult`` and the port the
        MAC's entry would then point to (None: it would have none).  For ``explain``."""
        vlan = self._vlans.get(vid)
        entry = vlan.macs.get(mac) if vlan is not None else None
        limit = vlan.limit if vlan is not None else DEFAULT_MAC_LIMIT
        result = self._learn_outcome(limit, entry, vid, port)
        if result == LearnResult.LIMITED:
            return result, None
        if result == LearnResult.REFRESHED and entry is not None:
            return result, entry.port  # a static entry elsewhere stays where it is
        return result, port

    def _learn_outcome(self, limit: int, entry: MacEntry | None, vid: int, port: int) -> int:
        """The one rule of learning: refresh an entry on this port (or a static one), move
        one from another port, learn a new one, unless the port has learned ``limit``."""
        if entry is not None and (entry.port == port or entry.static):
            return LearnResult.REFRESHED
        if self._learned.get((port, vid), 0) >= limit:
            return LearnResult.LIMITED
        return LearnResult.MOVED if entry is not None else LearnResult.LEARNED

    def entry(self, vid: int, mac: bytes) -> MacEntry | None:
        """The live entry object (aged or not), for a caller that keeps it to refresh or to
        re-check its age later without another lookup."""
        vlan = self._vlans.get(vid)
        return vlan.macs.get(mac) if vlan is not None else None

    def aging(self, vid: int) -> float:
        return self._vlan(vid).aging

    def lookup(self, vid: int, mac: bytes, now: float) -> int | None:
        vlan = self._vlans.get(vid)
        if vlan is None:
            return None
        entry = vlan.macs.get(mac)
        if entry is None or (not entry.static and now - entry.seen > vlan.aging):
            return None
        return entry.port

    def expire(self, now: float) -> int:
        """Remove entries idle for longer than their VLAN's aging time; returns how many."""
        removed = 0
        for vid, vlan in self._vlans.items():
            queue, macs, cutoff = vlan.queue, vlan.macs, now - vlan.aging
            while queue and queue[0][0] < cutoff:
                _, mac = queue.popleft()
                entry = macs.get(mac)
                if entry is None or entry.static:
                    continue
                if entry.seen < cutoff:
                    self.generation += 1
                    del macs[mac]
                    self._learned[(entry.port, vid)] -= 1
                    removed += 1
                else:  # refreshed since: look again one aging time after its last sighting
                    queue.append((entry.seen, mac))
        return removed

    def add_static(self, vid: int, mac: str | bytes, port: int) -> None:
        key = mac_to_bytes(mac) if isinstance(mac, str) else mac
        vlan = self._vlan(vid)
        self.generation += 1
        old = vlan.macs.get(key)
        if old is not None and not old.static:
            self._learned[(old.port, vid)] -= 1
        vlan.macs[key] = MacEntry(port, 0.0, True)

    def remove_static(self, vid: int, mac: str | bytes) -> None:
        key = mac_to_bytes(mac) if isinstance(mac, str) else mac
        vlan = self._vlans.get(vid)
        if vlan is not None and key in vlan.macs and vlan.macs[key].static:
            self.generation += 1
            del vlan.macs[key]

    def flush_port(self, port: int) -> None:
        """Forget everything on ``port`` (it went away or changed its VLANs)."""
        self.generation += 1
        for vid, vlan in self._vlans.items():
            for mac in [m for m, e in vlan.macs.items() if e.port == port]:
                del vlan.macs[mac]
            self._learned.pop((port, vid), None)

    def learned_count(self, port: int, vid: int) -> int:
        return self._learned.get((port, vid), 0)

    def entries(self, now: float) -> list[FdbEntry]:
        result = []
        for vid, vlan in sorted(self._vlans.items()):
            for mac, e in vlan.macs.items():
                if e.static or now - e.seen <= vlan.aging:
                    result.append(FdbEntry(vid, mac_to_str(mac), e.port,
                                           0.0 if e.static else now - e.seen, e.static))
        return sorted(result, key=lambda e: (e.vid, e.mac))

    def __len__(self) -> int:
        return sum(len(v.macs) for v in self._vlans.values())
