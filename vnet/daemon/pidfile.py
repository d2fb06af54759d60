"""Processes that outlive vnetd: their pid files, and watching one that is not our child.

The datapath and the VM runners run in sessions of their own and survive vnetd (a restart
without loss, as libvirt's guests and ovs-vswitchd survive their daemons).  vnetd writes a
pid file for each (``STATE_DIR/datapath.pid``, ``runner-LAB-NODE.pid``): the pid, the
process's start time (``/proc/PID/stat``, so a reused pid is not taken for it) and what
else the next vnetd needs (the datapath's run number, for its counters).  A new vnetd finds
them there, checks each against ``/proc`` and its control socket, and adopts it.

An adopted process is not vnetd's child: it cannot be waited for, so ``Watched`` notices
its death through a pidfd (readable once the process has exited) and signals it through
the same pidfd, which never reaches a process that reused the pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start: int                 # clock ticks after boot (/proc/PID/stat field 22)
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot, or None if there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def write(path: Path, pid: int, **extra: Any) -> PidRecord | None:
    """Record ``pid`` (atomically); None if the process is already gone."""
    start = start_time(pid)
    if start is None:
        return None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": pid, "start": start, **extra}))
    tmp.replace(path)
    return PidRecord(pid, start, tuple(sorted(extra.items())))


def read(path: Path) -> PidRecord | None:
    """The record, or None if there is none or it is not one (a torn or foreign file)."""
    try:
        data = json.loads(path.read_text())
        pid, start = data.pop("pid"), data.pop("start")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(pid, int) or not isinstance(start, int) or pid <= 0:
        return None
    return PidRecord(pid, start, tuple(sorted(data.items())))


def running(record: PidRecord, marker: str) -> bool:
    """The recorded process still runs: the same pid, started at the same tick, and
    ``marker`` on its command line (the state dir's path of its control socket)."""
    if start_time(record.pid) != record.start:
        return False
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


class Watched:
    """A process vnetd did not start (or no longer waits for): its pidfd, and its end."""

    def __init__(self, pid: int, pidfd: int | None = None) -> None:
        """``ProcessLookupError`` if it is gone already (``pidfd``: one already open)."""
        self.pid = pid
        self._pidfd: int | None = os.pidfd_open(pid) if pidfd is None else pidfd
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self._pidfd, self._on_exit)

    @classmethod
    def from_pidfd(cls, pid: int, pidfd: int) -> Watched:
        """Watch through ``pidfd`` (taken over), as the fork server sent it."""
        return cls(pid, pidfd)

    @property
    def alive(self) -> bool:
        return not self._exited.done()

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(None)

    async def wait(self, timeout: float | None = None) -> bool:
        """Until it exits (True), or ``timeout`` passes (False)."""
        await asyncio.wait({self._exited}, timeout=timeout)
        return self._exited.done()

    def signal(self, number: int) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, number)

    async def stop(self, timeout: float) -> None:
        """SIGTERM, and SIGKILL if it is still there after ``timeout``."""
        self.signal(signal.SIGTERM)
        if not await self.wait(timeout):
            self.signal(signal.SIGKILL)
            await self.wait(10)

    def close(self) -> None:
        """Stop watching (vnetd leaves; the process stays)."""
        if self._pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
