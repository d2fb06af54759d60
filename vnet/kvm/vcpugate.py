"""Stopping and parking vCPU threads that sit in ``KVM_RUN``.

A thread inside ``KVM_RUN`` runs guest code until an exit; to take it out at a time of our
choosing (pause, shutdown) we do what Firecracker and QEMU do: set ``immediate_exit`` in its
``kvm_run`` page and send the thread a signal (``KICK_SIGNAL``, whose handler does nothing).
The signal interrupts a ``KVM_RUN`` in progress; ``immediate_exit`` makes one that is about
to start return at once, so a kick between the check and the ioctl is not lost.  Either way
``KVM_RUN`` fails with EINTR and the vCPU loop asks ``interrupted`` what to do.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from vnet.kvm.vm import Vcpu

KICK_SIGNAL = signal.SIGUSR1


def install_kick_handler() -> None:
    """A handler that does nothing, so the kick interrupts a system call instead of killing
    the process (main thread only, before any vCPU runs)."""
    signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)


class VcpuGate:
    """Where the vCPU threads of one boot park (pause) or leave (stop) when kicked."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.request: str | None = None  # "pause" | "stop" | None
        self.threads: dict[int, tuple[Vcpu, int]] = {}  # vCPU index -> (vCPU, thread ident)
        self.parked: set[int] = set()

    def enter(self, vcpu: Vcpu) -> None:
        """Called on the vCPU's thread before it first enters KVM_RUN."""
        with self.condition:
            self.threads[vcpu.index] = (vcpu, threading.get_ident())
            stopping = self.request is not None
        if stopping:
            vcpu.run.immediate_exit = 1

    def leave(self, vcpu: Vcpu) -> None:
        with self.condition:
            self.threads.pop(vcpu.index, None)
            self.parked.discard(vcpu.index)
            self.condition.notify_all()

    def interrupted(self, vcpu: Vcpu) -> bool:
        """On the vCPU's thread after KVM_RUN returned EINTR: park while paused; False when
        the vCPU must stop."""
        vcpu.run.immediate_exit = 0  # cleared before reading the request: no kick is lost
        with self.condition:
            if self.request == "pause":
                self.parked.add(vcpu.index)
                self.condition.notify_all()
                while self.request == "pause":
                    self.condition.wait()
                self.parked.discard(vcpu.index)
            return self.request != "stop"

    def _kick_all(self) -> None:
        for vcpu, ident in self.threads.values():
            vcpu.run.immediate_exit = 1
            with contextlib.suppress(ProcessLookupError):  # the thread is leaving anyway
                signal.pthread_kill(ident, KICK_SIGNAL)

    def pause(self) -> None:
        with self.condition:
            if self.request is None:
                self.request = "pause"
            self._kick_all()

    def wait_parked(self, timeout: float) -> bool:
        """True once every running vCPU is parked (blocking: run it off the event loop)."""
        with self.condition:
            return self.condition.wait_for(
                lambda: self.request != "pause" or set(self.threads) <= self.parked, timeout)

    def resume(self) -> None:
        with self.condition:
            if self.request == "pause":
                self.request = None
                self.condition.notify_all()

    def stop(self) -> None:
        with self.condition:
            self.request = "stop"
            self.condition.notify_all()
            self._kick_all()

    def states(self) -> dict[int, str]:
        with self.condition:
            return {index: "paused" if index in self.parked else "running"
                    for index in sorted(self.threads)}
