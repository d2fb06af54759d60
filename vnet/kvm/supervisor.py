"""The runner's supervisory side: one trio nursery over everything a guest's life involves.

The top nursery holds the signal handler (SIGTERM/SIGINT: stop now, status 0), the console
socket, the control socket (``vnet/kvm/control.py``) and the boot loop.  Each boot runs in a
child nursery: one task per vCPU and per device thread, each waiting in ``trio.to_thread``
for a plain thread that sits in ``KVM_RUN`` or ``epoll``, plus a kicker.  When any of them
ends the boot (the guest powered off, a thread failed, a forced shutdown, a signal) the boot's
scope is cancelled; the kicker's cancellation kicks every thread out (``VcpuGate.stop``, the
device threads' stop eventfds), so the nursery closes only once every thread has returned and
the VM can be closed safely.  The first reason to end wins and becomes the exit status
(``ExitStatus``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from vnet import jsonlines
from vnet.errors import VnetError
from vnet.kvm.console import ConsoleHub, bind_unix
from vnet.kvm.control import (
    MAX_REQUEST,
    Action,
    ControlError,
    ExitStatus,
    RunControl,
    RunState,
    guest_status,
    parse_request,
)
from vnet.kvm.iothread import DeviceThread
from vnet.kvm.vcpugate import VcpuGate, install_kick_handler
from vnet.kvm.vm import KvmError, Vcpu

if TYPE_CHECKING:
    from vnet.kvm.runner import Machine

log = logging.getLogger("vnet.kvm.supervisor")
IDLE_TIMEOUT = 10.0    # a control client that sends no full request for this long is dropped
SEND_TIMEOUT = 5.0     # a control client that does not read its reply for this long is dropped
PAUSE_TIMEOUT = 10.0   # how long the vCPUs may take to leave KVM_RUN and park
MAX_CONTROL_CLIENTS = 8
REBOOT = -1            # a boot's status when the guest pulsed the reset line


@dataclass(frozen=True)
class Boot:
    """One boot, set up and ready to run: the machine and its vCPUs (the first is the BSP)."""

    machine: Machine
    vcpus: list[Vcpu]


class Supervisor:
    def __init__(self, name: str, hub: ConsoleHub | None = None,
                 console_path: Path | None = None, control_path: Path | None = None) -> None:
        self.name = name
        self.hub = hub
        self.console_path = console_path
        self.control_path = control_path
        self.control = RunControl()
        self.boot: Boot | None = None
        self.gate: VcpuGate | None = None
        self.boot_scope: trio.CancelScope | None = None
        self.boot_status: int | None = None
        self.boots = 0
        self.final: tuple[int, str] | None = None  # (exit status, why): the runner ends
        self.control_clients = 0
        self.nursery: trio.Nursery | None = None

    # ---- the top nursery --------------------------------------------------------------------

    async def run(self, prepare: Callable[[], Boot], on_reboot: str = "restart") -> int:
        install_kick_handler()
        listeners: list[tuple[Path, trio.socket.SocketType]] = []
        for path in (self.console_path if self.hub else None, self.control_path):
            if path is None:
                continue
            try:
                listeners.append((path, bind_unix(path)))
            except OSError as err:
                print(f"vnet-vm {self.name}: cannot listen on {path}: {_describe(err)}",
                      file=sys.stderr, flush=True)
                for _path, sock in listeners:
                    sock.close()
                return ExitStatus.SETUP_FAILED
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self._signals)
            for path, sock in listeners:
                serve = self._serve_control if path == self.control_path else self._serve_console
                nursery.start_soon(serve, path, sock)
            status = await self._boots(prepare, on_reboot)
            nursery.cancel_scope.cancel()
        return status

    async def run_one(self, boot: Boot) -> int:
        """Run one boot with no sockets and no signal handling; the caller closes it."""
        install_kick_handler()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            status = await self._run_boot(boot)
            nursery.cancel_scope.cancel()
        return self.final[0] if self.final else guest_status(status or 0)

    def end(self, status: int, why: str) -> None:
        """End the runner with ``status`` (the first reason given wins)."""
        if self.final is None:
            self.final = (status, why)
            if status != ExitStatus.OK:
                print(f"vnet-vm {self.name}: {why}", file=sys.stderr, flush=True)
        if self.boot_scope is not None:
            self.boot_scope.cancel()

    async def _signals(self, *, task_status: trio.TaskStatus[None]
                       = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                self.end(ExitStatus.OK, f"stopped by {signal.Signals(signum).name}")

    async def _boots(self, prepare: Callable[[], Boot], on_reboot: str) -> int:
        while self.final is None:
            try:
                boot = await trio.to_thread.run_sync(prepare)
            except (KvmError, VnetError, ValueError, OSError) as err:
                print(f"vnet-vm {self.name}: {err}", file=sys.stderr, flush=True)
                return ExitStatus.SETUP_FAILED
            try:
                if self.final is not None:
                    break
                status = await self._run_boot(boot)
            finally:
                boot.machine.close()
            if status is None or self.final is not None:
                break
            if status != REBOOT:
                return guest_status(status)
            if on_reboot == "exit":
                return ExitStatus.OK
        return self.final[0] if self.final else ExitStatus.SUPERVISOR_FAILED

    # ---- one boot ---------------------------------------------------------------------------

    async def _run_boot(self, boot: Boot) -> int | None:
        gate = VcpuGate()
        if self.control.state == RunState.SHUTTING_DOWN:
            boot.machine.shutdown_requested = True
        self.boots += 1
        self.boot_status = None
        async with trio.open_nursery() as nursery:
            self.boot, self.gate, self.boot_scope = boot, gate, nursery.cancel_scope
            nursery.start_soon(self._kicker, gate, boot.machine)
            for thread in boot.machine.threads:
                nursery.start_soon(self._device, thread)
            for vcpu in boot.vcpus:
                nursery.start_soon(self._vcpu, boot.machine, gate, vcpu)
        self.boot = self.gate = self.boot_scope = None
        return self.boot_status

    async def _kicker(self, gate: VcpuGate, machine: Machine) -> None:
        """Sleeps until the boot ends; then takes every thread out of KVM_RUN and epoll."""
        try:
            await trio.sleep_forever()
        finally:
            gate.stop()
            machine.wake()
            for thread in machine.threads:
                thread.kick()

    async def _vcpu(self, machine: Machine, gate: VcpuGate, vcpu: Vcpu) -> None:
        def body() -> str:
            gate.enter(vcpu)
            try:
                return vcpu.run_until(machine.on_io, machine.on_mmio, gate.interrupted)
            finally:
                gate.leave(vcpu)

        try:
            why = await trio.to_thread.run_sync(body)
        except (KvmError, OSError) as err:
            self.end(ExitStatus.VCPU_FAILED, f"vCPU {vcpu.index} failed: {_describe(err)}")
            return
        except Exception as err:  # a bug in an exit handler: the guest cannot go on
            log.exception("vCPU %d", vcpu.index)
            self.end(ExitStatus.VCPU_FAILED, f"vCPU {vcpu.index} failed: internal error: "
                     f"{type(err).__name__}: {err}")
            return
        if why != "kicked" and self.boot_status is None:  # the guest stopped itself
            self.boot_status = machine.status
            if self.boot_scope is not None:
                self.boot_scope.cancel()

    async def _device(self, thread: DeviceThread) -> None:
        try:
            await trio.to_thread.run_sync(thread.run)
        except Exception as err:
            self.end(ExitStatus.DEVICE_FAILED, f"device thread {thread.name} failed: "
                     f"{type(err).__name__}: {err}")

    # ---- the control socket -----------------------------------------------------------------

    async def _serve_console(self, path: Path, sock: trio.socket.SocketType) -> None:
        assert self.hub is not None
        await self.hub.serve(path, sock)

    async def _serve_control(self, path: Path, sock: trio.socket.SocketType) -> None:
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._control_client, stream)
        finally:  # no await here: the scope is cancelled
            path.unlink(missing_ok=True)
            sock.close()

    async def _control_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.control_clients >= MAX_CONTROL_CLIENTS:
                await _reply(stream, jsonlines.failed(
                    f"{MAX_CONTROL_CLIENTS} control clients are connected already; "
                    "try again when one has finished"))
                return
            self.control_clients += 1
            try:
                await self._converse(stream)
            finally:
                self.control_clients -= 1

    async def _converse(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        while True:
            closed = False
            with trio.move_on_after(IDLE_TIMEOUT) as idle:
                while b"\n" not in buffer and len(buffer) <= MAX_REQUEST:
                    try:
                        data = await stream.receive_some(4096)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    if not data:
                        closed = True
                        break
                    buffer += data
            if idle.cancelled_caught:
                await _reply(stream, jsonlines.failed(
                    f"no request within {IDLE_TIMEOUT:.0f} s; closing. Send one JSON object "
                    'per line, e.g. {"op": "status"}'))
                return
            line, newline, rest = bytes(buffer).partition(b"\n")
            if not newline and not closed:  # too long, and no end in sight: cannot resync
                await _reply(stream, jsonlines.failed(
                    f"a request line is at most {MAX_REQUEST} bytes; closing"))
                return
            buffer = bytearray(rest)
            if line.strip() and not await _reply(stream, await self.handle(line)):
                return
            if closed:
                return

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = parse_request(line)
            if request.op == "status":
                return jsonlines.ok(self.status())
            if self.gate is None:
                raise ControlError("the VM is between boots; try again in a moment")
            if request.op == "pause":
                self._apply(self.control.pause())
                parked = await trio.to_thread.run_sync(self.gate.wait_parked, PAUSE_TIMEOUT,
                                                       abandon_on_cancel=True)
                if not parked:
                    raise ControlError(f"the vCPUs did not stop within {PAUSE_TIMEOUT:.0f} s")
            elif request.op == "resume":
                self._apply(self.control.resume())
            elif request.op == "shutdown":
                self._apply(self.control.shutdown(trio.current_time(), request.deadline))
            return jsonlines.ok(self.status())
        except ControlError as err:
            return jsonlines.failed(str(err))

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if action == Action.PAUSE_VCPUS and self.gate is not None:
                self.gate.pause()
                if self.boot is not None:
                    self.boot.machine.wake()  # a vCPU waiting on port 0x502 parks at once
            elif action == Action.RESUME_VCPUS and self.gate is not None:
                self.gate.resume()
            elif action == Action.ASK_GUEST_TO_POWER_OFF:
                if self.boot is not None:
                    self.boot.machine.shutdown_requested = True
                assert self.nursery is not None and self.control.deadline_at is not None
                self.nursery.start_soon(self._force_off_at, self.control.deadline_at)
            elif action == Action.FORCE_OFF:
                self.end(ExitStatus.SHUTDOWN_FORCED, "the guest did not power off by the "
                         "shutdown deadline: forced off")

    async def _force_off_at(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        self._apply(self.control.tick(trio.current_time()))

    def status(self) -> dict[str, Any]:
        boot, gate = self.boot, self.gate
        return {
            "name": self.name, "pid": os.getpid(), "state": self.control.state.value,
            "boots": self.boots,
            "vcpus": [{"index": index, "state": state}
                      for index, state in (gate.states() if gate else {}).items()],
            "devices": boot.machine.device_status() if boot else [],
            "console_clients": self.hub.client_count if self.hub else 0,
            "shutdown_deadline_in": self.control.remaining(trio.current_time()),
        }


async def _reply(stream: trio.SocketStream, message: dict[str, Any]) -> bool:
    """Send one reply; False when the client is gone or does not read it in time."""
    with trio.move_on_after(SEND_TIMEOUT):
        try:
            await stream.send_all(jsonlines.encode(message))
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
    return False


def _describe(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)
