"""Port counters that survive datapath restarts: vnetd adds what earlier runs counted.

A datapath keeps its counters in memory, so a new one starts them at zero.  vnetd reads them
(at every ``vnet status`` and every ``POLL`` seconds, ``vnet.daemon.supervisor``) and keeps
the last reading of each port; when a reading comes from a new datapath run, or a counter of
the same run went down (the port was re-created inside the datapath), the last reading is
added to the port's baseline, and every reading is reported as baseline plus raw.  So a
reported counter never goes down (as a Prometheus counter must not) for as long as the port
exists; deleting the port (``forget``) starts it again from zero, as a new series.

The baselines and last readings are saved in the state directory (``snapshot``, every
reading and at vnetd's stop) and read by the next vnetd (``restore``): one that adopts the
running datapath goes on with the same run, one that starts a new datapath adds the last
readings to the baselines as after any restart.

What is lost: what the old datapath counted between vnetd's last reading and its death (at
most ``POLL`` seconds of traffic).  Frames that it had not yet taken from the kernel when it
died were never counted anywhere.

A counter is any integer or mapping of integers (``drops`` by reason) in a port's stats;
``GAUGES`` name the values that are not counters (a ring's fill level) and pass through.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

GAUGES = frozenset({"ring", "mirrors"})   # mirrors: the captures of the port now
POLL = 1.0   # seconds between vnetd's readings

Leaves = dict[tuple[str, str], int]   # (counter, reason or "") -> value
Stats = Mapping[str, Mapping[str, Mapping[str, Any]]]   # bridge -> port -> its stats


@dataclass(frozen=True)
class _Reading:
    run: int
    leaves: Leaves
    stats: Mapping[str, Any]


def _leaves(stats: Mapping[str, Any]) -> Leaves:
    leaves: Leaves = {}
    for name, value in stats.items():
        if name in GAUGES or isinstance(value, bool):
            continue
        if isinstance(value, int):
            leaves[(name, "")] = value
        elif isinstance(value, Mapping):
            for reason, count in value.items():
                if isinstance(count, int) and not isinstance(count, bool):
                    leaves[(name, str(reason))] = count
    return leaves


def _with_baseline(stats: Mapping[str, Any], base: Leaves) -> dict[str, Any]:
    merged = {name: (dict(value) if isinstance(value, Mapping) else value)
              for name, value in stats.items()}
    for (name, reason), earlier in base.items():
        if reason:
            if name in GAUGES or not isinstance(merged.get(name, {}), dict):
                continue
            counts = merged.setdefault(name, {})
            counts[reason] = counts.get(reason, 0) + earlier
        else:
            value = merged.get(name, 0)
            if isinstance(value, int):
                merged[name] = value + earlier
    return merged


class CounterTotals:
    """Per (bridge, port): the baseline of earlier runs and the last reading."""

    def __init__(self) -> None:
        self._base: dict[tuple[str, str], Leaves] = {}
        self._last: dict[tuple[str, str], _Reading] = {}

    def observe(self, run: int, stats: Stats, bridges: Collection[str] | None = None
                ) -> dict[str, dict[str, dict[str, Any]]]:
        """``stats`` as datapath run number ``run`` reported them (of ``bridges``, or of
        every bridge): the same with every counter made total.  A port that this run had
        reported before and no longer does was deleted, and is forgotten; one that only
        earlier runs reported is not re-created yet, and shows as last seen."""
        totals: dict[str, dict[str, dict[str, Any]]] = {}
        seen: set[tuple[str, str]] = set()
        for bridge, ports in stats.items():
            totals[bridge] = {}
            for port, port_stats in ports.items():
                key = (bridge, port)
                seen.add(key)
                leaves = _leaves(port_stats)
                last = self._last.get(key)
                if last is not None and (last.run != run or any(
                        leaves.get(k, 0) < v for k, v in last.leaves.items())):
                    base = self._base.setdefault(key, {})
                    for k, v in last.leaves.items():
                        base[k] = base.get(k, 0) + v
                self._last[key] = _Reading(run, leaves, port_stats)
                totals[bridge][port] = _with_baseline(port_stats, self._base.get(key, {}))
        for key, last in list(self._last.items()):
            if key in seen or (bridges is not None and key[0] not in bridges):
                continue
            if last.run == run:
                self.forget(*key)
            else:   # not yet re-created in this run (the replay is under way): as last seen
                totals.setdefault(key[0], {})[key[1]] = _with_baseline(
                    last.stats, self._base.get(key, {}))
        return totals

    def last(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The totals as last reported (for when the datapath cannot be read)."""
        totals: dict[str, dict[str, dict[str, Any]]] = {}
        for (bridge, port), reading in self._last.items():
            totals.setdefault(bridge, {})[port] = _with_baseline(
                reading.stats, self._base.get((bridge, port), {}))
        return totals

    def snapshot(self) -> dict[str, Any]:
        """The baselines and last readings, as JSON (for the next vnetd: ``restore``)."""
        return {"ports": [
            {"bridge": bridge, "port": port,
             "base": [[n, r, v] for (n, r), v in self._base.get((bridge, port), {}).items()],
             **({"run": last.run, "leaves": [[n, r, v] for (n, r), v in last.leaves.items()],
                 "stats": dict(last.stats)} if (last := self._last.get((bridge, port)))
                else {})}
            for bridge, port in sorted({*self._base, *self._last})]}

    def restore(self, data: Mapping[str, Any]) -> None:
        """What ``snapshot`` gave (``ValueError``/``TypeError``/``KeyError`` if it is not)."""
        base: dict[tuple[str, str], Leaves] = {}
        last: dict[tuple[str, str], _Reading] = {}
        for entry in data["ports"]:
            key = (str(entry["bridge"]), str(entry["port"]))
            if entry["base"]:
                base[key] = {(str(n), str(r)): int(v) for n, r, v in entry["base"]}
            if "run" in entry:
                last[key] = _Reading(int(entry["run"]),
                                     {(str(n), str(r)): int(v) for n, r, v in entry["leaves"]},
                                     dict(entry["stats"]))
        self._base, self._last = base, last

    def forget(self, bridge: str, port: str | None = None) -> None:
        """The port (or every port of the bridge) was deleted: its counters start again."""
        for key in [k for k in (*self._last, *self._base)
                    if k[0] == bridge and port in (None, k[1])]:
            self._last.pop(key, None)
            self._base.pop(key, None)
