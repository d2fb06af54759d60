"""vnetd's VM runners: one process per VM node, supervised with ``vmlifecycle``'s table.

A runner outlives vnetd (a restart without loss, as libvirt's guests outlive libvirtd): it
runs in a session of its own, its pid is kept in ``STATE_DIR/runner-LAB-NODE.pid``, and the
next vnetd adopts it (``VmSupervisor.adopt``: the recorded process still runs and answers on
its control socket) instead of starting it again.  An adopted runner is not that vnetd's
child: its end is seen through a pidfd (as soon as vnetd's own child's would be: both are
told when the process has exited), and its exit status is unknown (counted as a
failure by the restart policy).  Its console goes to ``STATE_DIR/console-LAB-NODE.log``,
which is kept after the VM stops.

Each runner also has a control socket (``STATE_DIR/control-LAB-NODE.sock``, see
``vnet/kvm/control.py``).  vnetd asks it for status every ``POLL_INTERVAL`` in the
background and shows the last answer (per-device counters, console clients) in ``vnet
status``; a runner that does not answer within ``POLL_TIMEOUT`` is shown as not answering,
and ``vnet status`` never waits for a runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.daemon import pidfile
from vnet.daemon.resources import VmNodeResource
from vnet.daemon.runnerparent import ForkedRunner, RunnerParent
from vnet.daemon.vmlifecycle import VmEvent, VmLifecycle, VmState

log = logging.getLogger("vnet.vms")
STOP_TIMEOUT = 5.0
POWER_OFF_DEADLINE = 10.0   # s a guest has to power off when asked (`vnet vm stop`); at the
                            # deadline its runner turns it off (as libvirt's shutdown, then
                            # destroy)
POLL_INTERVAL = 2.0
POLL_TIMEOUT = 1.0


async def ask_runner(path: Path, request: dict[str, Any],
                     timeout: float = POLL_TIMEOUT) -> dict[str, Any]:
    """One request to a runner's control socket; ``ProtocolError`` or ``TimeoutError`` or
    ``OSError`` when it does not answer properly within ``timeout``."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(jsonlines.encode(request))
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    if not line:
        raise jsonlines.ProtocolError("the runner closed its control socket without a reply")
    reply = jsonlines.decode(line)
    if not reply.get("ok"):
        raise jsonlines.ProtocolError(str(reply.get("error")))
    result = reply.get("result")
    if not isinstance(result, dict):
        raise jsonlines.ProtocolError("the runner's status is not an object")
    return result


def runner_unreachable(err: BaseException, timeout: float = POLL_TIMEOUT) -> str:
    """Why a runner's control socket gave no status, for ``vnet status``."""
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(err, FileNotFoundError | ConnectionRefusedError):
        return "its control socket is not there (yet)"
    if isinstance(err, OSError):
        return f"cannot reach its control socket: {err.strerror or err}"
    return f"bad answer: {err}"


def runner_marker(record: pidfile.PidRecord, process: VmProcess) -> str:
    """What a runner's command line shows: its control socket's path, or, for one the fork
    server forked (it has the fork server's command line), the fork server's socket."""
    marker = record.get("marker")
    return marker if isinstance(marker, str) else str(process.control_socket)


class VmProcess:
    def __init__(self, vm: VmNodeResource, state_dir: Path,
                 parent: RunnerParent | None = None) -> None:
        self.vm = vm
        self.parent = parent   # the warm parent that forks runners; None: exec each
        self.console = state_dir / f"console-{vm.lab}-{vm.node}.log"
        self.console_socket = state_dir / f"console-{vm.lab}-{vm.node}.sock"
        self.control_socket = state_dir / f"control-{vm.lab}-{vm.node}.sock"
        self.pid_file = state_dir / f"runner-{vm.lab}-{vm.node}.pid"
        self.adopted: pidfile.Watched | None = None   # a runner an earlier vnetd started
        self.runner: dict[str, Any] = {"answering": False, "why": "not asked yet"}
        self._poll: asyncio.Task[None] | None = None
        self.lifecycle = VmLifecycle(vm.restart)  # type: ignore[arg-type]
        self.process: asyncio.subprocess.Process | ForkedRunner | None = None
        self._watch: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vnet.kvm.runner", *self.arguments()]

    def arguments(self) -> list[str]:
        command = ["--name", self.vm.node,
                   "--memory", str(self.vm.memory), "--vcpus", str(self.vm.vcpus),
                   "--kernel", self.vm.kernel,
                   "--cmdline", self.vm.cmdline, "--console-log", str(self.console),
                   "--console-socket", str(self.console_socket),
                   "--control-socket", str(self.control_socket)]
        if self.vm.initrd is not None:
            command += ["--initrd", self.vm.initrd]
        if self.vm.disk is not None:
            command += ["--disk", self.vm.disk + (",ro" if self.vm.disk_readonly else "")]
        for tap in self.vm.taps:
            command += ["--nic", f"tap={tap.ifname},mac={tap.mac}"
                        + (f",ip={tap.ip}" if tap.ip else "")
                        + (f",gw={tap.gateway}" if tap.gateway else "")
                        + (f",mtu={tap.mtu}" if tap.mtu else "")]
        return command

    async def start(self) -> None:
        self.lifecycle.handle(VmEvent.START, time.monotonic())
        await self._spawn()

    async def _spawn(self) -> None:
        # The log is there from the start (the runner appends to it): a `vnet console` or a
        # down right after the up finds it even if the runner has not begun to write.
        self.console.touch()
        errors = self.console.with_suffix(".err")
        forked = None
        if self.parent is not None:
            forked = await self.parent.spawn(self.arguments(), errors)
        if forked is not None:
            self.process = forked
        else:
            with open(errors, "ab") as stderr:
                self.process = await asyncio.create_subprocess_exec(
                    *self.command(), stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        self.adopted = None
        self.lifecycle.handle(VmEvent.SPAWNED, time.monotonic())
        if forked is not None and self.parent is not None:
            pidfile.write(self.pid_file, self.process.pid, marker=self.parent.marker)
        else:
            pidfile.write(self.pid_file, self.process.pid)
        log.info("VM %s/%s: runner %s, pid %d", self.vm.lab, self.vm.node,
                 "forked" if forked else "started", self.process.pid)
        self._watch = asyncio.create_task(self._watch_process(self.process))
        if self._poll is None or self._poll.done():
            self._poll = asyncio.create_task(self._poll_runner())

    def adopt(self, watched: pidfile.Watched) -> None:
        """Supervise the runner an earlier vnetd started (``pidfile.Watched.adopt``)."""
        pid = watched.pid
        self.adopted, self.process = watched, None
        now = time.monotonic()
        self.lifecycle.handle(VmEvent.START, now)
        self.lifecycle.handle(VmEvent.SPAWNED, now)
        log.info("VM %s/%s: adopted its running runner, pid %d", self.vm.lab, self.vm.node,
                 pid)
        self._watch = asyncio.create_task(self._watch_adopted(watched))
        if self._poll is None or self._poll.done():
            self._poll = asyncio.create_task(self._poll_runner())

    @property
    def pid(self) -> int | None:
        """The running runner's pid (started or adopted), or None."""
        if self.adopted is not None:
            return self.adopted.pid if self.adopted.alive else None
        if self.process is not None and self.process.returncode is None:
            return self.process.pid
        return None

    async def _watch_adopted(self, watched: pidfile.Watched) -> None:
        await watched.wait()
        await self._exited(None)

    async def _poll_runner(self) -> None:
        """Keep ``self.runner`` fresh from the control socket while a runner exists."""
        while True:
            if self.pid is None:
                self.runner = {"answering": False, "why": "no runner"}
            else:
                try:
                    status = await ask_runner(self.control_socket, {"op": "status"})
                    self.runner = {"answering": True, "at": time.monotonic(), **status}
                except (OSError, TimeoutError, jsonlines.ProtocolError) as err:
                    self.runner = {"answering": False, "why": runner_unreachable(err)}
            await asyncio.sleep(POLL_INTERVAL)

    async def _watch_process(self,
                             process: asyncio.subprocess.Process | ForkedRunner) -> None:
        await self._exited(await process.wait())

    async def _exited(self, status: int | None) -> None:
        """The runner ended (``status`` None: an adopted one, whose status is unknown)."""
        self.pid_file.unlink(missing_ok=True)
        event = VmEvent.EXITED_OK if status == 0 else VmEvent.EXITED_FAIL
        how = "exit status unknown (adopted)" if status is None else f"exit status {status}"
        state = self.lifecycle.handle(event, time.monotonic(), how)
        log.warning("VM %s/%s: runner exited, %s; now %s", self.vm.lab, self.vm.node, how,
                    state.value)
        if state == VmState.RESTARTING and self.lifecycle.restart_at is not None:
            await asyncio.sleep(max(0.0, self.lifecycle.restart_at - time.monotonic()))
            if self.lifecycle.state == VmState.RESTARTING:
                self.lifecycle.handle(VmEvent.RESTART_DUE, time.monotonic())
                await self._spawn()

    async def stop(self, power_off: bool = False) -> None:
        """Stop the runner: at once (SIGTERM, then SIGKILL), or with ``power_off`` first
        by asking the guest to power off through the runner's control socket and waiting
        for the runner to end (it forces the guest off at the deadline it was given)."""
        if self.lifecycle.state in (VmState.STOPPED,):
            return
        self.lifecycle.handle(VmEvent.STOP, time.monotonic())
        process = self.process
        if power_off and await self._ask_to_power_off():
            await self._runner_ended(POWER_OFF_DEADLINE + STOP_TIMEOUT)
        if self.adopted is not None:
            if self.adopted.alive:
                await self.adopted.stop(STOP_TIMEOUT)
        elif process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.pid_file.unlink(missing_ok=True)
        for task in (self._watch, self._poll):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._poll = None
        self.runner = {"answering": False, "why": "no runner"}
        if self.lifecycle.state == VmState.STOPPING:
            self.lifecycle.handle(VmEvent.EXITED_OK, time.monotonic(), "stopped")
        self.console_socket.unlink(missing_ok=True)  # a killed runner could not remove it
        self.control_socket.unlink(missing_ok=True)

    async def _ask_to_power_off(self) -> bool:
        """Ask the guest to power off; False if the runner does not take the request (it
        is then stopped at once)."""
        try:
            await ask_runner(self.control_socket, {"op": "shutdown",
                                                   "deadline": POWER_OFF_DEADLINE})
        except (OSError, TimeoutError, jsonlines.ProtocolError) as err:
            log.warning("VM %s/%s: its runner did not take the request to power off (%s); "
                        "stopping it now", self.vm.lab, self.vm.node, err)
            return False
        log.info("VM %s/%s: asked the guest to power off (forced off in %g s)", self.vm.lab,
                 self.vm.node, POWER_OFF_DEADLINE)
        return True

    async def _runner_ended(self, timeout: float) -> None:
        """Wait until the runner (started or adopted) has exited, at most ``timeout``."""
        if self.adopted is not None:
            await self.adopted.wait(timeout)
        elif self.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), timeout)

    def release(self) -> None:
        """vnetd leaves and the runner stays, for the next vnetd to adopt."""
        for task in (self._watch, self._poll):
            if task is not None:
                task.cancel()
        if self.adopted is not None:
            self.adopted.close()

    def status(self) -> dict[str, object]:
        return {"state": self.lifecycle.state.value, "pid": self.pid,
                "adopted": self.adopted is not None,
                "restarts": len(self.lifecycle.restarts), "last_exit": self.lifecycle.last_exit,
                "console": str(self.console), "console_socket": str(self.console_socket),
                "control_socket": str(self.control_socket), "runner": self.runner_status()}

    def runner_status(self) -> dict[str, Any]:
        """The runner's last answer on its control socket (its age in seconds), or why
        there is none."""
        runner = dict(self.runner)
        at = runner.pop("at", None)
        if at is not None:
            runner["age"] = round(time.monotonic() - at, 1)
        return runner


class VmSupervisor:
    def __init__(self, state_dir: Path, fork: bool = True) -> None:
        self.state_dir = state_dir
        self.vms: dict[tuple[str, str], VmProcess] = {}
        self.parent = RunnerParent(state_dir) if fork else None
        self.stopping = 0   # runners being stopped right now

    def warm_up(self) -> None:
        """Start the runners' fork server now, in the background, if it is not running."""
        if self.parent is not None:
            self.parent.warm_up()

    def get(self, lab: str, node: str) -> VmProcess | None:
        return self.vms.get((lab, node))

    def status(self, lab: str, node: str) -> dict[str, object]:
        """Its runner's state, pid, restarts and console (``stopped`` if it never ran)."""
        process = self.get(lab, node)
        return process.status() if process else {"state": "stopped"}

    async def start(self, vm: VmNodeResource) -> None:
        process = self.vms.get((vm.lab, vm.node))
        if process is None or process.vm != vm:
            if process is not None:
                await process.stop()
            process = self.vms[(vm.lab, vm.node)] = VmProcess(vm, self.state_dir, self.parent)
        if process.lifecycle.state in (VmState.STOPPED, VmState.CRASHED, VmState.FAILED):
            await process.start()

    async def stop(self, vm: VmNodeResource) -> None:
        process = self.vms.pop((vm.lab, vm.node), None)
        if process is not None:
            self.stopping += 1
            try:
                await process.stop()
            finally:
                self.stopping -= 1
        if not self.vms and not self.stopping and self.parent is not None:
            # No VM left: its ~17 MiB back (the next VM starts it again).  Not while a
            # runner still stops: the fork server reaps it and says how it ended.
            await self.parent.stop()

    def found(self, vm: VmNodeResource) -> bool:
        """A runner an earlier vnetd started for ``vm`` still runs (by its pid file)."""
        process = VmProcess(vm, self.state_dir)
        record = pidfile.read(process.pid_file)
        return record is not None and pidfile.running(record, runner_marker(record, process))

    async def adopt(self, vm: VmNodeResource) -> bool:
        """Supervise the runner an earlier vnetd left for ``vm``, if it still runs and
        answers on its control socket (a runner that does not answer is stopped: the
        caller starts a new one)."""
        process = VmProcess(vm, self.state_dir, self.parent)
        record = pidfile.read(process.pid_file)
        watched = (None if record is None
                   else pidfile.Watched.adopt(record, runner_marker(record, process)))
        if record is None or watched is None:
            process.pid_file.unlink(missing_ok=True)
            return False
        process.adopt(watched)
        try:
            status = await ask_runner(process.control_socket, {"op": "status"})
        except (OSError, TimeoutError, jsonlines.ProtocolError) as err:
            log.warning("VM %s/%s: its runner (pid %d) does not answer (%s); starting a new "
                        "one", vm.lab, vm.node, record.pid, runner_unreachable(err))
            await process.stop()
            return False
        process.runner = {"answering": True, "at": time.monotonic(), **status}
        self.vms[(vm.lab, vm.node)] = process
        return True

    async def stop_pid(self, vm: VmNodeResource) -> None:
        """A runner left running that should not be (its user stopped the VM while no
        vnetd ran, or vnetd died while stopping it): stopped."""
        if await self.adopt(vm):
            await self.stop(vm)

    async def release_all(self) -> None:
        """vnetd leaves; every runner stays, for the next vnetd."""
        for process in self.vms.values():
            process.release()
        self.vms.clear()
        if self.parent is not None:
            await self.parent.stop()

    async def stop_all(self) -> None:
        for process in list(self.vms.values()):
            await process.stop()
        self.vms.clear()
        if self.parent is not None:
            await self.parent.stop()
