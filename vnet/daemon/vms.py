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
from vnet.daemon.vmlifecycle import VmEvent, VmLifecycle, VmState

log = logging.getLogger("vnet.vms")
STOP_TIMEOUT = 5.0
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


class VmProcess:
    def __init__(self, vm: VmNodeResource, state_dir: Path) -> None:
        self.vm = vm
        self.console = state_dir / f"console-{vm.lab}-{vm.node}.log"
        self.console_socket = state_dir / f"console-{vm.lab}-{vm.node}.sock"
        self.control_socket = state_dir / f"control-{vm.lab}-{vm.node}.sock"
        self.pid_file = state_dir / f"runner-{vm.lab}-{vm.node}.pid"
        self.adopted: pidfile.Watched | None = None   # a runner an earlier vnetd started
        self.runner: dict[str, Any] = {"answering": False, "why": "not asked yet"}
        self._poll: asyncio.Task[None] | None = None
        self.lifecycle = VmLifecycle(vm.restart)  # type: ignore[arg-type]
        self.process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "vnet.kvm.runner", "--name", self.vm.node,
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
        with open(self.console.with_suffix(".err"), "ab") as errors:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=errors, start_new_session=True)
        self.adopted = None
        self.lifecycle.handle(VmEvent.SPAWNED, time.monotonic())
        pidfile.write(self.pid_file, self.process.pid)
        log.info("VM %s/%s: runner started, pid %d", self.vm.lab, self.vm.node,
                 self.process.pid)
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

    async def _watch_process(self, process: asyncio.subprocess.Process) -> None:
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

    async def stop(self) -> None:
        if self.lifecycle.state in (VmState.STOPPED,):
            return
        self.lifecycle.handle(VmEvent.STOP, time.monotonic())
        process = self.process
        if self.adopted is not None:
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
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.vms: dict[tuple[str, str], VmProcess] = {}

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
            process = self.vms[(vm.lab, vm.node)] = VmProcess(vm, self.state_dir)
        if process.lifecycle.state in (VmState.STOPPED, VmState.CRASHED, VmState.FAILED):
            await process.start()

    async def stop(self, vm: VmNodeResource) -> None:
        process = self.vms.pop((vm.lab, vm.node), None)
        if process is not None:
            await process.stop()

    def found(self, vm: VmNodeResource) -> bool:
        """A runner an earlier vnetd started for ``vm`` still runs (by its pid file)."""
        process = VmProcess(vm, self.state_dir)
        record = pidfile.read(process.pid_file)
        return record is not None and pidfile.running(record, str(process.control_socket))

    async def adopt(self, vm: VmNodeResource) -> bool:
        """Supervise the runner an earlier vnetd left for ``vm``, if it still runs and
        answers on its control socket (a runner that does not answer is stopped: the
        caller starts a new one)."""
        process = VmProcess(vm, self.state_dir)
        record = pidfile.read(process.pid_file)
        watched = (None if record is None
                   else pidfile.Watched.adopt(record, str(process.control_socket)))
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

    def release_all(self) -> None:
        """vnetd leaves; every runner stays, for the next vnetd."""
        for process in self.vms.values():
            process.release()
        self.vms.clear()

    async def stop_all(self) -> None:
        for process in list(self.vms.values()):
            await process.stop()
        self.vms.clear()
