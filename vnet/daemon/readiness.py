"""What vnetd tells systemd, and when: readiness, ``STATUS=`` lines, watchdog pings.

* ``READY=1`` once the datapath answers a ping and, with a bus configured, once the bus is
  connected, or after ``BUS_READY_WAIT`` seconds without it, whichever comes first.  The
  wait is bounded on purpose: the broker is another machine, and a service whose readiness
  waited on it would hold up every unit ordered after vnetd and, past ``TimeoutStartSec``,
  be killed and restarted in a loop while local labs could have run all along.  The bus
  keeps connecting in the background; until it does, the status line says
  ``bus not connected``, and ``vnet status`` says why.
* ``STATUS=`` says what vnetd is doing (``3 labs, 41 ports, bus connected``), with a note
  after a reload (refused, or settings that wait for a restart).  It is recomputed every
  ``STATUS_PERIOD`` seconds on the event loop and sent only when it changed.
* ``WATCHDOG=1`` is sent by a task on the event loop itself, every half ``WATCHDOG_USEC``:
  a loop that is wedged (a blocking call, a deadlock) stops pinging, and systemd restarts
  vnetd after ``WatchdogSec=``.  A thread would keep pinging through such a wedge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from vnet.aiotasks import cancel_and_wait
from vnet.daemon.resources import PortResource, Resource
from vnet.daemon.sdnotify import Notifier, status_message

log = logging.getLogger("vnet.daemon.readiness")

BUS_READY_WAIT = 15.0   # s: well inside systemd's default TimeoutStartSec (90 s)
STATUS_PERIOD = 1.0     # s between recomputations of the status line
BUS_POLL = 0.1          # s between looks at the bus while waiting for it at start


@dataclass(frozen=True)
class ServiceStatus:
    """What the status line shows; ``bus`` None: no bus configured."""

    labs: int = 0
    ports: int = 0
    bus: bool | None = None
    phase: str | None = None      # e.g. "starting": replaces the counts while set
    note: str | None = None       # e.g. the outcome of the last reload


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def status_line(status: ServiceStatus) -> str:
    """``3 labs, 41 ports, bus connected`` (and ``; NOTE``): one line for ``STATUS=``."""
    if status.phase is not None:
        line = status.phase
    else:
        parts = [_count(status.labs, "lab"), _count(status.ports, "port")]
        if status.bus is not None:
            parts.append("bus connected" if status.bus else "bus not connected")
        line = ", ".join(parts)
    return f"{line}; {status.note}" if status.note else line


def counts(labs: Iterable[Iterable[Resource]], bus: bool | None) -> ServiceStatus:
    """The counts of the status line from each lab's realised resources."""
    lab_list = [list(resources) for resources in labs]
    ports = sum(isinstance(r, PortResource) for resources in lab_list for r in resources)
    return ServiceStatus(labs=len(lab_list), ports=ports, bus=bus)


class ServiceLink:
    """The event loop's side of the notify protocol (see module docstring).

    ``observe`` gives the current counts (it runs on the loop, so keep it cheap)."""

    def __init__(self, notifier: Notifier, watchdog_period: float | None,
                 observe: Callable[[], ServiceStatus]) -> None:
        self.notifier = notifier
        self.watchdog_period = watchdog_period
        self.observe = observe
        self.phase: str | None = "starting"
        self.note: str | None = None
        self.sent: str | None = None
        self.pings = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the watchdog and status tasks (call on the running loop, before the slow
        parts of start-up, so that they are covered by the watchdog too)."""
        loop = asyncio.get_running_loop()
        if self.watchdog_period is not None:
            log.info("watchdog on: a ping every %.3g s", self.watchdog_period)
            self._tasks.append(loop.create_task(self._watchdog(self.watchdog_period)))
        self._tasks.append(loop.create_task(self._status_loop()))
        self.refresh()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self.notifier.close()

    async def _watchdog(self, period: float) -> None:
        while True:
            if self.notifier.send("WATCHDOG=1"):
                self.pings += 1
            await asyncio.sleep(period)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_PERIOD)
            try:
                self.refresh()
            except Exception:  # a record being rewritten, say: the next round will do
                log.debug("status line not recomputed", exc_info=True)

    def refresh(self) -> None:
        """Recompute the status line and send it if it changed."""
        status = replace(self.observe(), phase=self.phase, note=self.note)
        line = status_line(status)
        if line != self.sent:
            self.notifier.send(status_message(line))
            self.sent = line

    def set_phase(self, phase: str | None) -> None:
        self.phase = phase
        self.refresh()

    def set_note(self, note: str | None) -> None:
        self.note = note
        self.refresh()

    async def ready(self, datapath_answers: Callable[[], Awaitable[object]],
                    bus_connected: Callable[[], bool | None],
                    bus_wait: float = BUS_READY_WAIT) -> bool:
        """Send ``READY=1`` once the datapath answers and the bus (if any) is connected or
        ``bus_wait`` has passed; returns whether the bus was connected (True without one).
        A datapath that does not answer raises (its ``DatapathError``): vnetd is not ready."""
        await datapath_answers()
        connected = bus_connected()
        if connected is False:
            self.set_phase(f"waiting up to {bus_wait:g} s for the bus")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + bus_wait
            while bus_connected() is False and loop.time() < deadline:
                await asyncio.sleep(BUS_POLL)
            connected = bus_connected()
            if connected is False:
                log.warning("the bus is not connected after %g s: vnetd is ready for local "
                            "labs and keeps connecting in the background (vnet status shows "
                            "why)", bus_wait)
        self.phase = None
        self.refresh()
        self.notifier.send("READY=1")
        return connected is not False
