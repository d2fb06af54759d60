"""The forwarding database: per-VLAN MAC learning with aging, moves, static entries, limits.

Aging is lazy and amortised: a lookup ignores an entry older than its VLAN's aging time, and
``expire(now)`` walks a per-VLAN queue of learn times from the oldest, so each call costs in
proportion to what actually expired, not to the table's size (1 M entries stay cheap).
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

from vnet.packet.ethernet import mac_to_bytes, mac_to_str
from vnet.switch.ports import DEFAULT_MAC_AGING, DEFAULT_MAC_LIMIT

FREE = -1  # the port of a slot that holds no entry


class FdbEntry(NamedTuple):
    vid: int
    mac: str
    port: int
    age: float
    static: bool


class MacEntry(NamedTuple):
    """A snapshot of a MAC's entry in a VLAN: where it was seen, when, whether static."""

    port: int
    seen: float
    static: bool


class _Vlan:
    """A VLAN's MACs (MAC -> slot) and its aging queue: (slot, time) records in learn order,
    in two arrays read from ``head``; a record counts only while its time is the slot's
    ``queued`` time (a slot freed and reused leaves its old record stale)."""

    __slots__ = ("aging", "head", "limit", "macs", "qslot", "qtime")

    def __init__(self, aging: float, limit: int) -> None:
        self.aging = aging
        self.limit = limit
        self.macs: dict[bytes, int] = {}
        self.qslot = array("i")
        self.qtime = array("d")
        self.head = 0


class LearnResult:
    """What ``learn`` did, for the port's counters (constants, so nothing is allocated)."""

    REFRESHED, LEARNED, MOVED, LIMITED = range(4)


class Fdb:
    """Entries live in slots: a VLAN's dict maps a MAC to its slot, and the slot's port, last
    sighting, time queued for aging, static flag and MAC are parallel arrays (no object per
    entry: about 130 B an entry at 1 M, see ``python -m vnet.bench.fdbmem``).  A slot number
    stays the entry's while ``generation`` is unchanged (freeing one bumps it), so a cached
    decision may keep slots and refresh ``seen[slot]`` directly."""

    def __init__(self) -> None:
        self._vlans: dict[int, _Vlan] = {}
        self._learned: dict[tuple[int, int], int] = {}  # (port, vid) -> learned entries
        # Bumped by every change but a refresh (an entry learned, moved, forgotten, expired,
        # made static): a decision taken under an older generation may be stale.
        self.generation = 0
        self.port = array("i")
        self.seen = array("d")
        self.queued = array("d")
        self.static = bytearray()
        self._keys: list[bytes | None] = []
        self._free = array("i")

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

    # ---- slots --------------------------------------------------------------------------

    def _alloc(self, mac: bytes, port: int, now: float, static: bool) -> int:
        free = self._free
        if free:
            slot = free.pop()
            self.port[slot], self.seen[slot], self.queued[slot] = port, now, now
            self.static[slot] = static
            self._keys[slot] = mac
            return slot
        self.port.append(port)
        self.seen.append(now)
        self.queued.append(now)
        self.static.append(static)
        self._keys.append(mac)
        return len(self._keys) - 1

    def _release(self, vlan: _Vlan, mac: bytes, slot: int) -> None:
        del vlan.macs[mac]
        self.port[slot] = FREE
        self._keys[slot] = None
        self._free.append(slot)

    # ---- learning and lookups -------------------------------------------------------------

    def learn(self, vid: int, mac: bytes, port: int, now: float) -> int:
        """Note that ``mac`` was seen on ``port`` in ``vid``; returns a ``LearnResult``."""
        vlan = self._vlans.get(vid) or self._vlan(vid)
        slot = vlan.macs.get(mac)
        if slot is None:  # a new source: the path of a sweep, kept short
            key = (port, vid)
            count = self._learned.get(key, 0)
            if count >= vlan.limit:
                return LearnResult.LIMITED
            self._learned[key] = count + 1
            self.generation += 1
            vlan.macs[mac] = slot = self._alloc(mac, port, now, False)
            vlan.qslot.append(slot)
            vlan.qtime.append(now)
            return LearnResult.LEARNED
        result = self._learn_outcome(vlan.limit, slot, vid, port)
        if result == LearnResult.REFRESHED:
            self.seen[slot] = now
            return result
        self._learned[(self.port[slot], vid)] -= 1
        self.generation += 1
        if result == LearnResult.LIMITED:
            self._release(vlan, mac, slot)  # forgotten: better flooded than sent to its old port
        else:
            self._learned[(port, vid)] = self._learned.get((port, vid), 0) + 1
            self.port[slot], self.seen[slot] = port, now
        return result

    def would_learn(self, vid: int, mac: bytes, port: int) -> tuple[int, int | None]:
        """What ``learn`` would do, changing nothing: its ``LearnResult`` and the port the
        MAC's entry would then point to (None: it would have none).  For ``explain``."""
        vlan = self._vlans.get(vid)
        slot = vlan.macs.get(mac) if vlan is not None else None
        limit = vlan.limit if vlan is not None else DEFAULT_MAC_LIMIT
        result = self._learn_outcome(limit, slot, vid, port)
        if result == LearnResult.LIMITED:
            return result, None
        if result == LearnResult.REFRESHED and slot is not None:
            return result, self.port[slot]  # a static entry elsewhere stays where it is
        return result, port

    def _learn_outcome(self, limit: int, slot: int | None, vid: int, port: int) -> int:
        """The one rule of learning: refresh an entry on this port (or a static one), move
        one from another port, learn a new one, unless the port has learned ``limit``."""
        if slot is not None and (self.port[slot] == port or self.static[slot]):
            return LearnResult.REFRESHED
        if self._learned.get((port, vid), 0) >= limit:
            return LearnResult.LIMITED
        return LearnResult.MOVED if slot is not None else LearnResult.LEARNED

    def slot(self, vid: int, mac: bytes) -> int | None:
        """The entry's slot (aged or not), for a caller that keeps it to refresh ``seen`` or
        to re-check its age later without another lookup (valid while ``generation`` is)."""
        vlan = self._vlans.get(vid)
        return vlan.macs.get(mac) if vlan is not None else None

    def entry(self, vid: int, mac: bytes) -> MacEntry | None:
        """A snapshot of the entry (aged or not)."""
        slot = self.slot(vid, mac)
        if slot is None:
            return None
        return MacEntry(self.port[slot], self.seen[slot], bool(self.static[slot]))

    def aging(self, vid: int) -> float:
        return self._vlan(vid).aging

    def lookup(self, vid: int, mac: bytes, now: float) -> int | None:
        vlan = self._vlans.get(vid)
        if vlan is None:
            return None
        slot = vlan.macs.get(mac)
        if slot is None or (now - self.seen[slot] > vlan.aging and not self.static[slot]):
            return None
        return self.port[slot]

    def expire(self, now: float) -> int:
        """Remove entries idle for longer than their VLAN's aging time; returns how many."""
        removed = 0
        port, seen, queued, static, keys = (self.port, self.seen, self.queued, self.static,
                                            self._keys)
        for vid, vlan in self._vlans.items():
            qslot, qtime, cutoff = vlan.qslot, vlan.qtime, now - vlan.aging
            head, end = vlan.head, len(qslot)
            while head < end and qtime[head] < cutoff:
                slot, t = qslot[head], qtime[head]
                head += 1
                if (port[slot] == FREE or static[slot] or queued[slot] != t
                        or vlan.macs.get(keys[slot]) != slot):  # type: ignore[arg-type]
                    continue  # gone, static, or a stale record of a slot reused since
                last = seen[slot]
                if last < cutoff:
                    self.generation += 1
                    mac = keys[slot]
                    assert mac is not None
                    self._learned[(port[slot], vid)] -= 1
                    self._release(vlan, mac, slot)
                    removed += 1
                else:  # refreshed since: look again one aging time after its last sighting
                    queued[slot] = last
                    qslot.append(slot)
                    qtime.append(last)
                    end += 1
            if head > 4096 and head * 2 > len(qslot):  # drop what was read
                del qslot[:head], qtime[:head]
                head = 0
            vlan.head = head
        return removed

    def add_static(self, vid: int, mac: str | bytes, port: int) -> None:
        key = mac_to_bytes(mac) if isinstance(mac, str) else mac
        vlan = self._vlan(vid)
        self.generation += 1
        slot = vlan.macs.get(key)
        if slot is None:
            vlan.macs[key] = self._alloc(key, port, 0.0, True)
            return
        if not self.static[slot]:
            self._learned[(self.port[slot], vid)] -= 1
        self.port[slot], self.seen[slot], self.static[slot] = port, 0.0, True

    def remove_static(self, vid: int, mac: str | bytes) -> None:
        key = mac_to_bytes(mac) if isinstance(mac, str) else mac
        vlan = self._vlans.get(vid)
        slot = vlan.macs.get(key) if vlan is not None else None
        if vlan is not None and slot is not None and self.static[slot]:
            self.generation += 1
            self._release(vlan, key, slot)

    def flush_port(self, port: int) -> None:
        """Forget everything on ``port`` (it went away or changed its VLANs)."""
        self.generation += 1
        ports = self.port
        for vid, vlan in self._vlans.items():
            for mac, slot in [(m, s) for m, s in vlan.macs.items() if ports[s] == port]:
                self._release(vlan, mac, slot)
            self._learned.pop((port, vid), None)

    def learned_count(self, port: int, vid: int) -> int:
        return self._learned.get((port, vid), 0)

    def entries(self, now: float) -> list[FdbEntry]:
        result = []
        port, seen, static = self.port, self.seen, self.static
        for vid, vlan in sorted(self._vlans.items()):
            for mac, slot in vlan.macs.items():
                if static[slot] or now - seen[slot] <= vlan.aging:
                    result.append(FdbEntry(vid, mac_to_str(mac), port[slot],
                                           0.0 if static[slot] else now - seen[slot],
                                           bool(static[slot])))
        return sorted(result, key=lambda e: (e.vid, e.mac))

    def state(self) -> tuple[object, ...]:
        """Everything that decides what the table does, comparable (for tests that check a
        read-only operation changed nothing)."""
        return (self.generation, dict(self._learned),
                {(vid, mac): (self.port[s], self.seen[s], self.static[s])
                 for vid, v in self._vlans.items() for mac, s in v.macs.items()},
                [(v.head, list(v.qslot), list(v.qtime)) for v in self._vlans.values()],
                bytes(self.queued), list(self._free))

    def __len__(self) -> int:
        return sum(len(v.macs) for v in self._vlans.values())
