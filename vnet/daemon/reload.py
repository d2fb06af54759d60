"""What a reload (``systemctl reload vnetd``, SIGHUP) can change while vnetd runs.

The config file is read again (under the same command-line flags, which still win); a file
that does not check is refused and the running configuration stays.  Of a good file's
changes, only those in ``LIVE`` take effect at once; every other one waits for a restart and
is reported as such, because changing it under a running vnetd would strand what it built:

* ``log_level``: live.
* ``access``: live: the roles are checked on each request, so a reload changes who may do
  what from the next request on (connections already open included).
* ``socket``, ``state_dir``, ``netns``, ``host``: where vnetd listens, keeps its records,
  runs, and which part of multi-host labs it realises: restart.
* ``netns_prefix``: restart; it names the namespaces of nodes created after it, never those
  of nodes already up.
* ``datapath.*``: read when the datapath process starts: restart.
* ``bus.*``: the broker, user name, TLS files, keep-alive, topic root of the one bus
  session: restart.  The password *file's content* is read at every connection, so
  rotating the password needs neither a reload nor a restart.
* ``metrics``: restart (the endpoint is opened at start).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnet.daemon.config import Broker, DaemonConfig, Endpoint

LIVE = frozenset({"log_level", "access"})
NOT_COMPARED = frozenset({"source"})  # where the file is, not a setting


@dataclass(frozen=True)
class Change:
    key: str        # dotted: "bus.broker"
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.key}: {self.old} -> {self.new}"


@dataclass(frozen=True)
class ReloadPlan:
    live: tuple[Change, ...]          # applied now
    needs_restart: tuple[Change, ...]  # reported; the running value stays

    def summary(self) -> str:
        """One line for the status and the log."""
        if not self.live and not self.needs_restart:
            return "reloaded: no change"
        parts = []
        if self.live:
            parts.append("applied " + ", ".join(str(c) for c in self.live))
        if self.needs_restart:
            parts.append("needs a restart (systemctl restart vnetd) for "
                         + ", ".join(c.key for c in self.needs_restart))
        return "reloaded: " + "; ".join(parts)


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, Broker):
        return value.url
    if isinstance(value, Path | Endpoint):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf setting of a config (dataclasses nested), by dotted key, as text; a section
    that is absent (None) is one leaf."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type | Broker | Endpoint):
        return {prefix: _shown(value)}
    flat: dict[str, str] = {}
    for item in dataclasses.fields(value):
        if not prefix and item.name in NOT_COMPARED:
            continue
        key = f"{prefix}.{item.name}" if prefix else item.name
        flat.update(flatten(getattr(value, item.name), key))
    return flat


def _is_live(key: str) -> bool:
    return any(key == live or key.startswith(live + ".") for live in LIVE)


def reload_plan(running: DaemonConfig, reread: DaemonConfig) -> ReloadPlan:
    """The changes from the running config to the one just read, split by what a reload
    can apply."""
    old, new = flatten(running), flatten(reread)
    changes: dict[str, Change] = {}
    for key in sorted(old.keys() | new.keys()):
        section = key.split(".")[0]
        if key in old and key in new:
            if old[key] != new[key]:
                changes[key] = Change(key, old[key], new[key])
        elif key not in new and section in new:   # a section removed: one change for it
            changes[section] = Change(section, "(set)", new[section])
        elif key not in old and section in old:   # a section given
            changes[section] = Change(section, old[section], "(set)")
    ordered = sorted(changes.values(), key=lambda c: c.key)
    return ReloadPlan(live=tuple(c for c in ordered if _is_live(c.key)),
                      needs_restart=tuple(c for c in ordered if not _is_live(c.key)))


def apply_live(running: DaemonConfig, reread: DaemonConfig) -> DaemonConfig:
    """The running config after a reload: the live settings from ``reread``, the rest kept."""
    return dataclasses.replace(running, **{key: getattr(reread, key) for key in LIVE})


def refusal(problems: list[str], limit: int = 1) -> str:
    """The status note for a refused file: its first problem(s), and how many more."""
    shown = "; ".join(problems[:limit])
    more = len(problems) - limit
    tail = f" (and {more} more: see the log)" if more > 0 else ""
    return f"reload refused, running on the previous config: {shown}{tail}"
