"""systemd's notify protocol (sd_notify), without libsystemd: datagrams to $NOTIFY_SOCKET.

What vnetd says (see ``vnet.daemon.readiness`` for when): ``READY=1``, ``STATUS=...``,
``WATCHDOG=1``, ``RELOADING=1`` with ``MONOTONIC_USEC=``, ``STOPPING=1``.  The pure parts
(the watchdog's ping period from the environment, the reload message) take their inputs as
arguments; ``Notifier`` is the thin edge that sends.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("vnet.daemon.sdnotify")

# What systemd hands the service; removed from vnetd's environment once read, so that the
# datapath and VM runners it starts do not inherit them (NotifyAccess=main ignores them anyway).
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass(frozen=True)
class NotifySettings:
    """What the environment says: where to send, and how often to ping (None: no watchdog)."""

    address: str | None
    watchdog_period: float | None


def watchdog_period(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled
    advises, so one late ping does not get the service killed.  None when the watchdog is off,
    the value is not a positive integer, or ``WATCHDOG_PID`` names another process (the
    variables were inherited from a parent)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2e6


def settings_from(environ: Mapping[str, str], pid: int) -> NotifySettings:
    return NotifySettings(environ.get("NOTIFY_SOCKET") or None, watchdog_period(environ, pid))


def reloading_message(monotonic_usec: int) -> str:
    """What starts a reload (systemd 253's Type=notify-reload wants the clock with it, so it
    can tell this reload from an earlier one; older systemd ignores the second line)."""
    return f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}"


def status_message(line: str) -> str:
    """``STATUS=`` holds one line: newlines in an error become ``; ``."""
    return "STATUS=" + "; ".join(part for part in line.splitlines() if part.strip())


class Notifier:
    """Sends to the socket systemd named; without one (not under systemd) sends nothing."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls) -> tuple[Notifier, float | None]:
        """The notifier and the watchdog period; the variables leave ``os.environ``."""
        settings = settings_from(os.environ, os.getpid())
        for name in SYSTEMD_VARIABLES:
            os.environ.pop(name, None)
        return cls(settings.address), settings.watchdog_period

    def send(self, message: str) -> bool:
        """True if the datagram went; a failure is logged once, never raised (systemd's
        bookkeeping must not stop vnetd)."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                address = self.address
                if address.startswith("@"):
                    address = "\0" + address[1:]
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.connect(address)
                self._sock = sock
            self._sock.sendall(message.encode())
        except OSError as err:
            self.close()
            if not self._warned:
                log.warning("cannot tell systemd %s through %s: %s", message.split("\n")[0],
                            self.address, err.strerror or err)
                self._warned = True
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def notify(message: str) -> bool:
    """One message through a fresh socket (for callers without a ``Notifier``)."""
    notifier = Notifier(os.environ.get("NOTIFY_SOCKET"))
    try:
        return notifier.send(message)
    finally:
        notifier.close()
