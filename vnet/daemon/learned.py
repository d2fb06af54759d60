"""The learned half of this host's MAC claims: what its switch learned on local ports (pure).

The MACs of this host's node NICs are known from the topology and always advertised.  A
bridged LAN behind an uplink, a NAT gateway, or a guest that changes its MAC brings MACs the
topology does not know: the datapath's switch learns them, and vnetd reads them from its
MAC table (the datapath's ``fdb`` op, every ``POLL_INTERVAL`` seconds) to advertise them on
the bus, and withdraws them when they age out of the table.

Only entries learned on *local* ports count: node NICs, uplinks, gateways.  Entries on a
vxlan port (``naming.is_overlay_port``) are MACs of other hosts that this switch learned
from the overlay: advertising them would make hosts claim each other's MACs.  Static
entries are not learned, and only networks of the lab's overlay here are advertised (a
network no other host shares, or a bridged network whose LAN this host reaches through its
own uplink outside the overlay, has nobody to tell).

A MAC flood on a local port must not become a bus storm, so ``LearnedMacs`` bounds what it
hands on: at most ``limit`` learned MACs per network (the ones already advertised keep their
place; the rest are *left out*, counted, and get a place when one frees), and at most
``per_poll`` new ones per lab in one poll (the others wait for the next); a table of more
than ``ROWS_PER_SECOND`` entries is read less often than every ``POLL_INTERVAL``.  Each advertised
MAC stays until it ages out of the switch, so the bound also bounds the churn: at most
``limit`` new MACs per network per ``mac_aging``, and ``per_poll`` per lab per poll.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vnet.daemon import naming

POLL_INTERVAL = 1.0      # s between two reads of the datapath's MAC table
# Entries of the datapath's table read per second at most, per lab: listing one costs the
# datapath's loop ~6.6 us (measured: 10,000 entries 66 ms, Intel Xeon, CPython 3.11), so a
# poll of a big table waits longer and the datapath spends at most ~15 ms a second on it.
ROWS_PER_SECOND = 2048
DEFAULT_LIMIT = 1024     # learned MACs advertised per (lab, network)
DEFAULT_PER_POLL = 256   # new learned MACs handed on per lab and poll

Key = tuple[str, str]    # (network, mac)


def next_poll(now: float, rows: int, interval: float = POLL_INTERVAL) -> float:
    """When to read a table of ``rows`` entries, read at ``now``, again."""
    return now + max(interval, rows / ROWS_PER_SECOND)


@dataclass(frozen=True)
class Sighting:
    """``mac`` is on a local port of ``network``, last seen at ``seen`` (monotonic s)."""

    network: str
    mac: str
    seen: float


def local_sightings(rows: Iterable[Mapping[str, Any]], vlans: Mapping[int, str],
                    now: float) -> dict[Key, float]:
    """(network, mac) -> when last seen, of the learned entries on local ports of the
    datapath's MAC table (``rows``, the ``fdb`` op's answer read at ``now``), in the
    networks ``vlans`` names (VLAN ID -> network)."""
    out: dict[Key, float] = {}
    for row in rows:
        network = vlans.get(int(row["vlan"]))
        if network is None or row["static"] or naming.is_overlay_port(str(row["port"])):
            continue
        key = (network, str(row["mac"]).lower())
        seen = now - float(row["age"])
        out[key] = max(out.get(key, seen), seen)
    return out


@dataclass(frozen=True)
class LearnedUpdate:
    """What to tell the location table after one poll."""

    learn: tuple[Sighting, ...] = ()     # new, or seen again since the last poll
    forget: tuple[Key, ...] = ()         # no longer on a local port (aged out, moved, gone)
    newly_left_out: tuple[str, ...] = ()  # networks that reached their bound in this poll
    deferred: int = 0                     # new MACs past the per-poll budget: next poll


@dataclass
class LearnedMacs:
    """The learned MACs one lab advertises (see module docstring)."""

    limit: int = DEFAULT_LIMIT
    per_poll: int = DEFAULT_PER_POLL
    advertised: dict[Key, float] = field(default_factory=dict)   # -> last seen
    left_out: dict[str, set[str]] = field(default_factory=dict)  # network -> MACs
    left_out_total: dict[str, int] = field(default_factory=dict)

    def sightings(self) -> list[Sighting]:
        """Every MAC advertised, as of its last sighting: for a new bus session."""
        return [Sighting(n, m, seen) for (n, m), seen in sorted(self.advertised.items())]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per network: advertised, left out now, left out ever."""
        networks = {n for n, _ in self.advertised} | set(self.left_out) | set(
            self.left_out_total)
        return {n: {"advertised": sum(1 for k in self.advertised if k[0] == n),
                    "left_out": len(self.left_out.get(n, ())),
                    "left_out_total": self.left_out_total.get(n, 0)}
                for n in sorted(networks)}

    def update(self, current: Mapping[Key, float], now: float, aging: Mapping[str, float],
               topology_macs: Collection[Key] = ()) -> LearnedUpdate:
        """Diff the switch's local MACs now (``current``: key -> last seen) against what is
        advertised: MACs gone or idle for their network's ``aging`` are forgotten, MACs
        seen again are refreshed, new ones take the free places.  The topology's own
        MACs (``topology_macs``) are advertised anyway and left to that."""
        live = {key: seen for key, seen in current.items()
                if key not in topology_macs and key[0] in aging
                and now - seen < aging[key[0]]}
        forget = tuple(sorted(k for k in self.advertised if k not in live))
        for key in forget:
            del self.advertised[key]
        learn = [Sighting(*key, seen) for key, seen in sorted(live.items())
                 if key in self.advertised and seen > self.advertised[key]]
        for sighting in learn:
            self.advertised[(sighting.network, sighting.mac)] = sighting.seen
        used: dict[str, int] = {}
        for network, _ in self.advertised:
            used[network] = used.get(network, 0) + 1
        left_out: dict[str, set[str]] = {}
        budget, deferred = self.per_poll, 0
        new = sorted((k for k in live if k not in self.advertised),
                     key=lambda k: (-live[k], k))        # the most recently seen first
        for network, mac in new:
            if used.get(network, 0) >= self.limit:
                left_out.setdefault(network, set()).add(mac)
            elif budget == 0:
                deferred += 1
            else:
                budget -= 1
                used[network] = used.get(network, 0) + 1
                self.advertised[(network, mac)] = live[(network, mac)]
                learn.append(Sighting(network, mac, live[(network, mac)]))
        newly = []
        for network, macs in sorted(left_out.items()):
            fresh = macs - self.left_out.get(network, set())
            if fresh:
                self.left_out_total[network] = self.left_out_total.get(network, 0) + len(fresh)
                if not self.left_out.get(network):
                    newly.append(network)
        self.left_out = left_out
        return LearnedUpdate(tuple(learn), forget, tuple(newly), deferred)
