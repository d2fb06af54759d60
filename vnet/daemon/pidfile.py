"""Processes that outlive vnetd: their pid files, and watching one that is not our child.

The datapath and the VM runners run in sessions of their own and survive vnetd (a restart
without loss, as libvirt's guests and ovs-vswitchd survive their daemons).  vnetd writes a
pid file for each (``STATE_DIR/datapath.pid``, ``runner-LAB-NODE.pid``): the pid, the
process's start time (``/proc/PID/stat``, so a reused pid is not taken for it) and what
else the next vnetd needs (the datapath's run number, for its counters).  A new vnetd finds
them there, checks each against ``/proc`` and its control socket, and adopts it.

An adopted process is not vnetd's child: it cannot be waited for, so ``Watched`` notices
its death through a pidfd (readable once the process has exited, ``os.pidfd_open``, Linux
5.3) and signals it through the same pidfd, which never reaches a process that reused the
pid.  ``Watched.adopt`` opens the pidfd first and only then checks the process is the one
recorded (its start time and command line): checked first, the pid could be another's by
the time the pidfd is opened.  Where there are no pidfds (an older kernel, a seccomp filter:
``ENOSYS``), it says so in the log once and polls ``/proc`` instead (``FALLBACK_POLL``), and
signals by pid after checking the start time again (a narrow window for a reused pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("vnet.pidfile")
FALLBACK_POLL = 0.1   # seconds between looks at /proc for a process watched without a pidfd
_said_no_pidfd = False


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start: int                 # clock ticks after boot (/proc/PID/stat field 22)
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


@dataclass(frozen=True)
class Stat:
    """What vnetd reads of ``/proc/PID/stat``."""
    state: str                 # field 3: R, S, ... Z (exited, not yet reaped)
    start: int                 # field 22: clock ticks after boot
    exit_code: int             # field 52: a dying process's wait status (0 while it runs)


def parse_stat(text: str) -> Stat | None:
    """``/proc/PID/stat``'s text (its command name, in parentheses, may hold anything:
    the fields are counted after the last ``)``); None if it is not such a line."""
    try:
        fields = text.rsplit(")", 1)[1].split()
        return Stat(fields[0], int(fields[19]), int(fields[49]) if len(fields) > 49 else 0)
    except (IndexError, ValueError):
        return None


def stat(pid: int) -> Stat | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot, or None if there is none."""
    found = stat(pid)
    return None if found is None else found.start


def exited(now: Stat | None, start: int) -> bool:
    """The process that started at ``start`` has exited, by its pid's ``/proc`` entry
    ``now``: gone, another's (the pid reused), or a zombie."""
    return now is None or now.start != start or now.state in ("Z", "X")


def wait_status(code: int) -> int:
    """A wait status (``exit_code``) as ``Popen.returncode`` has it: negative for a signal."""
    return -(code & 0x7F) if code & 0x7F else code >> 8


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


class PidfdError(enum.Enum):
    GONE = "gone"                  # no such process (any more)
    UNSUPPORTED = "unsupported"    # no pidfds here: watch by polling /proc
    OTHER = "other"                # out of fds and the like: the caller's error


def pidfd_error(err: OSError) -> PidfdError:
    """What a failed ``pidfd_open`` means.  ``EINVAL`` is a pid that is no process's (a
    thread's): not the recorded process either."""
    if err.errno in (errno.ESRCH, errno.EINVAL):
        return PidfdError.GONE
    if err.errno in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return PidfdError.UNSUPPORTED
    return PidfdError.OTHER


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; None where this kernel (or Python) has none (logged once);
    ``ProcessLookupError`` if the process is gone."""
    global _said_no_pidfd
    opener = getattr(os, "pidfd_open", None)
    err: OSError = OSError(errno.ENOSYS, "os.pidfd_open is missing")
    if opener is not None:
        try:
            return int(opener(pid))
        except OSError as raised:
            err = raised
    kind = pidfd_error(err)
    if kind is PidfdError.GONE:
        raise ProcessLookupError(pid)
    if kind is PidfdError.OTHER:
        raise err
    if not _said_no_pidfd:
        _said_no_pidfd = True
        log.warning("no pidfds here (pidfd_open: %s; Linux >= 5.3 has them): the death of a "
                    "process vnetd adopted is noticed by looking at /proc every %g s, and "
                    "it is signalled by pid", err.strerror or err, FALLBACK_POLL)
    return None


class Watched:
    """A process vnetd did not start (or no longer waits for): its pidfd, and its end."""

    def __init__(self, pid: int, start: int | None = None, pidfd: int | None = None) -> None:
        """``ProcessLookupError`` if it is gone already.  ``start``: its start time, for
        the watch without a pidfd (default: as now); ``pidfd``: one already open (taken
        over)."""
        self.pid = pid
        started = start_time(pid) if start is None else start
        if started is None:
            if pidfd is not None:
                os.close(pidfd)
            raise ProcessLookupError(pid)
        self.start = started
        self._pidfd: int | None = open_pidfd(pid) if pidfd is None else pidfd
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[None] = loop.create_future()
        self._poller: asyncio.Task[None] | None = None
        self.by_pidfd = self._pidfd is not None   # False: by polling /proc
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._on_exit)
        else:
            self._poller = loop.create_task(self._poll(), name=f"watch pid {pid}")

    @classmethod
    def adopt(cls, record: PidRecord, marker: str) -> Watched | None:
        """The recorded process, if it still runs (see ``running``), watched; None if it
        does not.  The pidfd is opened before the check, so it is the checked process's."""
        try:
            watched = cls(record.pid, record.start)
        except ProcessLookupError:
            return None
        if not running(record, marker):
            watched.close()
            return None
        return watched

    @classmethod
    def from_pidfd(cls, pid: int, pidfd: int) -> Watched:
        """Watch through ``pidfd`` (taken over), as the fork server sent it."""
        return cls(pid, pidfd=pidfd)

    @property
    def alive(self) -> bool:
        return not self._exited.done()

    def exit_status(self) -> int | None:
        """Its exit status while it is dying and not yet reaped (as ``returncode``), if
        its pid is still its own; None if that cannot be told."""
        found = stat(self.pid)
        if found is None or found.start != self.start or not found.exit_code:
            return None
        return wait_status(found.exit_code)

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(None)

    async def _poll(self) -> None:
        while not exited(stat(self.pid), self.start):
            await asyncio.sleep(FALLBACK_POLL)
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
        elif self._poller is not None and not exited(stat(self.pid), self.start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

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
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
