"""vnetd's handle on its datapath process: spawn it, talk to it, restart it when it dies.

The datapath holds no state worth keeping: when it dies vnetd starts a new one and replays
every bridge and port from its lab records (``on_restart``), as Open vSwitch's
ovs-vswitchd rebuilds its datapath from the database.  Restart and replay hold the daemon's
lock, so they never interleave with an up or a down.

Supervision survives whatever the datapath does: one task watches it, and every failure
(a death, a start that fails, one during the replay) goes to the restart policy
(``vnet.daemon.restartpolicy``: at once, after a back-off, or give up), is logged, and shows
in ``health()`` (``vnet status``).  The task itself failing is a bug, and is not silent
either: its done-callback logs it and ``health()`` says so.

The datapath outlives vnetd: ``stop(keep_running=True)`` leaves it forwarding, and the next
vnetd's ``start`` adopts it (found by its pid file and control socket, checked to answer)
instead of starting a new one.  Its run number and the counters' baselines are kept in the
state directory, so counters stay monotonic across vnetd's restarts too.

A death is noticed through the process's lifeline (adopted, a new lifeline it was asked
for, and its pidfd), and a restart
wakes a warm spare (``datapathprocess``).  Requests share one connection
(``controlclient``), and counters are kept across runs (``counters``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vnet.daemon import pidfile
from vnet.daemon.controlclient import ControlClient
from vnet.daemon.counters import POLL, CounterTotals
from vnet.daemon.datapathprocess import AdoptedDatapath, Datapath, DatapathProcess, spawn_spare
from vnet.daemon.restartpolicy import Limits, Phase, RestartPolicy
from vnet.datapath import protocol
from vnet.errors import DatapathError, DatapathGone, VnetError

log = logging.getLogger("vnet.supervisor")

START_TIMEOUT = 10.0
ADOPT_TIMEOUT = 5.0   # an adopted datapath that does not answer a ping this soon is wedged
STOP_TIMEOUT = 5.0


class DatapathSupervisor:
    """``python`` runs the datapath: this interpreter, or another such as PyPy (the datapath
    needs only the standard library and vnet's own pure-Python modules).  ``spare``: keep a
    warm spare process for restarts (about 11 MB under CPython, 110 MB under PyPy)."""

    def __init__(self, control_path: Path, log_path: Path,
                 on_restart: Callable[[], Awaitable[None]], python: str = sys.executable,
                 lock: asyncio.Lock | None = None, limits: Limits | None = None,
                 spare: bool = True) -> None:
        self.control_path = control_path
        self.log_path = log_path
        self.python = python
        self.on_restart = on_restart
        self.lock = lock or asyncio.Lock()  # the daemon's: a restart is one change among others
        self.policy = RestartPolicy(limits or Limits())
        self.client = ControlClient(control_path)
        self.totals = CounterTotals()
        self.run = 0                        # which datapath process, counted from 1
        self.pid_path = control_path.with_name("datapath.pid")
        self.counters_path = control_path.with_name("counters.json")
        self.adopted = False                # the running datapath is an earlier vnetd's
        self._saved = ""                    # the counters as last saved
        self.child: Datapath | None = None
        self.standby: DatapathProcess | None = None  # a warm spare for the next restart
        self.spare = spare
        self.replay_error: str | None = None
        self.supervision_error: str | None = None
        self._supervision: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """The first datapath, at vnetd's start: the one an earlier vnetd left running,
        adopted, or a new one; ``DatapathError`` if none can start."""
        self.policy.start(_now())
        self._load_counters()
        child: Datapath | None = await self._adopt()
        if child is None:
            try:
                child = await self._spawn()
            except DatapathError:
                self.policy.stop()
                raise
        self.policy.started(_now())
        self._supervise(child)
        self._prepare_standby()
        self._poller = _watched(asyncio.create_task(self._poll_counters(),
                                                    name="datapath counter poller"),
                                self._task_failed)

    async def revive(self) -> None:
        """A deliberate start (any ``vnet up``; the caller holds the lock): if
        supervision gave up, or failed, a datapath is started again with a clean slate."""
        if self._stopping or (self._supervision is not None and not self._supervision.done()):
            return
        self.supervision_error = None
        if self.child is not None and self.child.alive:
            self._supervise(self.child)
            return
        log.info("starting the datapath again, as asked")
        self.policy.start(_now())
        child, why = await self._bring_up()
        self._supervise(child, why)

    async def stop(self, keep_running: bool = False) -> None:
        """vnetd leaves: the datapath too, or (``keep_running``) it goes on forwarding for
        the next vnetd to adopt (its counters are saved for that one)."""
        self._stopping = True
        for task in (self._supervision, self._poller):
            if task is not None:
                task.cancel()
        self.policy.stop()
        if keep_running and self.pid is not None:
            with contextlib.suppress(DatapathError):
                await self.stats()       # the latest counters, for the next vnetd
        self.client.close("vnetd is stopping")
        if self.standby is not None:
            self.standby.kill()
        child = self.child
        if child is None:
            return
        if keep_running and child.alive:
            self._save_counters()
            child.release()
            log.info("leaving the datapath (pid %d) running for the next vnetd", child.pid)
            return
        await child.terminate(STOP_TIMEOUT)
        self.pid_path.unlink(missing_ok=True)
        self.counters_path.unlink(missing_ok=True)

    async def _adopt(self) -> AdoptedDatapath | None:
        """The datapath an earlier vnetd left running, if it still runs and answers; one
        that runs but does not answer is killed (a new one must not share its ports)."""
        record = pidfile.read(self.pid_path)
        if record is None:
            return None
        self.run = max(self.run, int(record.get("run", 0) or 0))
        watched = pidfile.Watched.adopt(record, str(self.control_path))
        if watched is None:
            log.info("the datapath an earlier vnetd ran (pid %d) is gone; starting one",
                     record.pid)
            return None
        child = AdoptedDatapath(watched)
        try:
            await asyncio.wait_for(self.client.call(protocol.Ping()), ADOPT_TIMEOUT)
        except (DatapathError, TimeoutError) as err:
            log.warning("the running datapath (pid %d) does not answer (%s); killing it and "
                        "starting a new one", record.pid, err)
            self.client.close("the datapath does not answer")
            await child.terminate(1.0)
            return None
        self.child = child
        self.adopted = True
        why = await child.attach_lifeline(self.control_path, ADOPT_TIMEOUT)
        if why is not None:
            log.warning("the adopted datapath (pid %d) gave no lifeline (%s): its death is "
                        "heard through its pidfd alone, after its ports' sockets are closed",
                        child.pid, why)
        log.info("adopted the running datapath, pid %d (run %d)%s", child.pid, self.run,
                 ", with a lifeline to it" if why is None else "")
        return child

    def _load_counters(self) -> None:
        # none (a first start) or unreadable: the counters start again
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
            self.totals.restore(json.loads(self.counters_path.read_text()))

    def _save_counters(self) -> None:
        text = json.dumps(self.totals.snapshot())
        if text == self._saved:
            return
        tmp = self.counters_path.with_name(self.counters_path.name + ".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(self.counters_path)
            self._saved = text
        except OSError as err:
            log.warning("cannot save the counters in %s: %s", self.counters_path, err)

    # ---- talking to it --------------------------------------------------------------------

    async def call(self, request: protocol.Request) -> Any:
        """Send one request to the datapath; its result, or ``DatapathError``.  While none
        runs (restarting, failed) a deletion is done already: the next datapath is
        programmed from the lab records, which the deleting change updates."""
        deletes = isinstance(request, protocol.DelPort | protocol.DelBridge)
        if self.policy.phase in (Phase.RESTARTING, Phase.FAILED) and not deletes:
            raise DatapathGone(f"the datapath is not running: {self.health()['message']}")
        result = None
        if self.policy.phase not in (Phase.RESTARTING, Phase.FAILED):
            result = await self.client.call(request)
        if isinstance(request, protocol.DelPort):
            self.totals.forget(request.bridge, request.name)
        elif isinstance(request, protocol.DelBridge):
            self.totals.forget(request.bridge)
        return result

    async def stats(self, bridge: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """The ports' counters, of one bridge or all, totalled over the datapath's runs."""
        run = self.run
        raw = await self.call(protocol.GetStats(bridge))
        if run != self.run:
            raise DatapathError("the datapath restarted while its counters were read")
        return self.totals.observe(run, raw, None if bridge is None else {bridge})

    async def counters(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The counters as now, or as last read if the datapath cannot tell now."""
        return (await self.read_counters())[0]

    async def read_counters(self, timeout: float | None = None
                            ) -> tuple[dict[str, dict[str, dict[str, Any]]], bool]:
        """The counters, and whether they are as now (True) or as last read (False: the
        datapath did not answer, within ``timeout`` seconds if given)."""
        try:
            async with asyncio.timeout(timeout):
                return await self.stats(), True
        except (DatapathError, TimeoutError):
            return self.totals.last(), False

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and self.child.alive else None

    @property
    def restarts(self) -> int:
        return self.policy.restarts

    def health(self) -> dict[str, Any]:
        """What ``vnet status`` says of the datapath."""
        health = self.policy.health(_now())
        state, message = health.phase.value, health.message
        if self.supervision_error:
            state = "failed"
            message = (f"failed: vnetd's supervision of the datapath stopped "
                       f"({self.supervision_error}, a bug: see vnetd's log); any 'vnet up' "
                       f"starts it again")
        elif health.phase is Phase.RUNNING and self.replay_error:
            message += f"; replaying the lab records into it failed: {self.replay_error}"
        standby = self.standby.pid if self.standby is not None and self.standby.alive else None
        # how its death would be heard first: its lifeline (its own or, adopted, a new
        # one), or only its pidfd (an adopted datapath that gave none)
        lifeline = self.pid is not None and (not isinstance(self.child, AdoptedDatapath)
                                             or self.child.has_lifeline)
        return {"state": state, "pid": self.pid, "adopted": self.adopted,
                "lifeline": lifeline,
                "standby_pid": standby,
                "restarts": health.restarts,
                "attempt": health.attempt, "last_failure": health.last_failure,
                "retry_in": health.retry_in, "message": message}

    # ---- supervision ----------------------------------------------------------------------

    def _supervise(self, child: Datapath | None, why: str | None = None) -> None:
        self._supervision = _watched(asyncio.create_task(self._watch(child, why),
                                                         name="datapath supervisor"),
                                     self._task_failed)

    async def _watch(self, child: Datapath | None, why: str | None) -> None:
        """Wait for the datapath to die, restart it as the policy says; again, for ever
        (until vnetd stops or the policy gives up).  ``child`` None: its start failed."""
        while True:
            if child is not None:
                why = await child.died()
                log.error("the datapath (pid %d) %s", child.pid, why)
            if self._stopping:
                return
            delay = self.policy.failed(_now(), why or "unknown")
            if delay is None:
                log.error("the datapath %s", self.policy.health(_now()).message)
                return
            log.info("restarting the datapath %s (attempt %d) and replaying the lab records",
                     f"in {delay:.2f} s" if delay else "at once", self.policy.attempt)
            if delay:
                await asyncio.sleep(delay)
            # Under the daemon's lock: an up or down in progress finishes first, and none
            # starts until the new datapath holds every recorded bridge and port again.
            async with self.lock:
                if self._stopping:
                    return
                self.policy.restart_due(_now())
                child, why = await self._bring_up()

    async def _bring_up(self) -> tuple[Datapath | None, str | None]:
        """Start a datapath and replay the records into it (the lock is held): the child,
        or None and why it did not start.  A replay that fails is logged and shown, and the
        datapath stays (if it died during the replay, the watch sees that next)."""
        try:
            child = await self._spawn()
        except DatapathError as err:
            log.error("%s", err)
            return None, str(err)
        self.policy.started(_now())
        try:
            await self.on_restart()
            self.replay_error = None
        except VnetError as err:
            if child.alive:
                log.error("replaying the lab records into the new datapath failed: %s", err)
                self.replay_error = str(err)
        except Exception as err:
            log.exception("replaying the lab records into the new datapath failed")
            self.replay_error = f"internal error: {err!r}"
        if child.alive:
            self._prepare_standby()
        return child, None

    async def _spawn(self) -> DatapathProcess:
        """A running datapath: the warm spare woken, or a new process."""
        self.client.close("a new datapath is starting")
        self.control_path.unlink(missing_ok=True)
        child, self.standby = self.standby, None
        if child is None or not child.alive:
            child = await spawn_spare(self.python, self.control_path, self.log_path)
        self.run += 1
        self.child = child
        self.adopted = False
        try:
            child.wake()
            await child.ready(START_TIMEOUT, self.log_path)
            await self.client.call(protocol.Ping())
        except DatapathError as err:
            if await child.dead_within(1.0):   # it died after it said it listens: say how
                raise DatapathError(f"the datapath {await child.death()} at its start; see "
                                    f"{self.log_path}") from None
            child.kill()
            raise err from None
        pidfile.write(self.pid_path, child.pid, run=self.run)   # for the next vnetd
        log.info("datapath started, pid %d", child.pid)
        return child

    def _prepare_standby(self) -> None:
        """Start the warm spare for the next restart, in the background (the interpreter's
        start is most of a restart's time)."""
        if not self.spare or self._stopping or (self.standby is not None and
                                                 self.standby.alive):
            return

        async def prepare() -> None:
            try:
                spare = await spawn_spare(self.python, self.control_path, self.log_path)
            except DatapathError as err:
                log.warning("no warm spare datapath: %s", err)
                return
            if self._stopping:
                spare.kill()
                return
            self.standby = spare
            why = await spare.died()
            if self.standby is spare and not self._stopping:   # it died as a spare
                self.standby = None
                log.warning("the spare datapath (pid %d) %s; a restart will start a new "
                            "process", spare.pid, why)

        _watched(asyncio.create_task(prepare(), name="datapath spare"), self._task_failed)

    async def _poll_counters(self) -> None:
        """Read the counters every ``POLL`` seconds, so a death loses at most that much."""
        while True:
            await asyncio.sleep(POLL)
            if self.policy.phase is Phase.RUNNING:
                with contextlib.suppress(DatapathError):
                    await self.stats()
                    self._save_counters()   # what a vnetd killed -9 leaves its successor

    def _task_failed(self, task: asyncio.Task[None], err: BaseException) -> None:
        log.critical("%s failed (a bug): %r; the datapath is no longer supervised",
                     task.get_name(), err, exc_info=err)
        self.supervision_error = repr(err)


def _watched(task: asyncio.Task[None],
             on_failure: Callable[[asyncio.Task[None], BaseException], None]
             ) -> asyncio.Task[None]:
    """``task``, with ``on_failure`` called if it ends with an exception: a supervision task
    that fails must never be silent."""

    def ended(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and (err := done.exception()) is not None:
            on_failure(done, err)

    task.add_done_callback(ended)
    return task


def _now() -> float:
    return asyncio.get_running_loop().time()
