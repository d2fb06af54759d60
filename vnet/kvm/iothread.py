"""Device threads: queue kicks (ioeventfds) and the TAP, served off the vCPU thread.

The guest's QueueNotify writes are caught in the kernel by KVM_IOEVENTFD and arrive here as
eventfd wake-ups; the vCPU never exits for them.  Frames from the TAP are moved into the
receive queue here too; when the guest has posted no receive buffer, the TAP is left alone
until it posts some (its RX kick), so a full queue never turns into a busy loop.

A device thread that fails (an exception that is not the guest's fault: a bug, a backend that
broke) marks its device failed and re-raises, so the runner's supervisor ends the VM with
``ExitStatus.DEVICE_FAILED``.  Test hook: with ``VNET_KVM_TEST_FAIL_DEVICE`` set to a thread's
name (``virtio-net-io``, ``virtio-blk-io``) that thread fails on its first queue kick; the
integration tests use it to check what a device failure does to the runner.
"""

from __future__ import annotations

import logging
import os
import select
import threading

from vnet.kvm.virtio.mmio import MmioTransport
from vnet.kvm.virtio.net import RX, TX, VirtioNet

log = logging.getLogger("vnet.kvm.io")
TEST_FAIL_DEVICE = "VNET_KVM_TEST_FAIL_DEVICE"


class InjectedDeviceFailure(RuntimeError):
    """Raised by the test hook (``VNET_KVM_TEST_FAIL_DEVICE``); never in normal use."""


class DeviceThread(threading.Thread):
    """Serves a virtio device's queue kicks off the vCPU thread: ``kicks`` maps each
    ioeventfd to the queue it notifies."""

    def __init__(self, name: str, transport: MmioTransport, kicks: dict[int, int]) -> None:
        super().__init__(name=name, daemon=True)
        self.transport = transport
        self.kicks = kicks
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll = select.epoll()
        self.fail_on_kick = os.environ.get(TEST_FAIL_DEVICE) == name

    def run(self) -> None:
        for fd in (*self.kicks, self.stop_fd):
            self.epoll.register(fd, select.EPOLLIN)
        self.watch()
        try:
            stopping = False
            while not stopping:  # kicks that arrived with the stop are still served
                for fd, _ in self.epoll.poll():
                    if fd == self.stop_fd:
                        stopping = True
                        continue
                    if fd in self.kicks:
                        os.eventfd_read(fd)
                        if self.fail_on_kick:
                            raise InjectedDeviceFailure(f"{TEST_FAIL_DEVICE}={self.name}")
                    self.serve(fd)
        except Exception:  # a bug here must not leave the guest hanging silently
            log.exception("the device thread %s failed", self.name)
            self.transport.fail("internal error in the device thread")
            raise
        finally:
            self.epoll.close()

    def watch(self) -> None:
        """Register what else wakes the thread (a backend's fd)."""

    def serve(self, fd: int) -> None:
        if self.transport.driver_ok:
            self.transport.notify(self.kicks[fd])

    def kick(self) -> None:
        """Ask ``run`` to return (from any thread)."""
        os.eventfd_write(self.stop_fd, 1)

    def stop(self) -> None:
        self.kick()
        if self.ident is not None:  # started as a thread of its own (not run by a supervisor)
            self.join(5)
        os.close(self.stop_fd)


class NetIoThread(DeviceThread):
    """virtio-net's thread: its kicks, and frames arriving on the TAP."""

    def __init__(self, net: VirtioNet, transport: MmioTransport, rx_kick: int,
                 tx_kick: int) -> None:
        super().__init__("virtio-net-io", transport, {rx_kick: RX, tx_kick: TX})
        self.net = net
        self.rx_kick = rx_kick
        self.tx_kick = tx_kick
        self.rx_delivered = threading.Event()  # the guest's wait port returns on this
        self.tap_watched = False

    def watch(self) -> None:
        self._watch_tap(True)

    def serve(self, fd: int) -> None:
        if fd == self.tx_kick and self.transport.driver_ok:
            self.transport.notify(TX)
        if fd in (self.rx_kick, self.net.tap_fd):
            self._receive()

    def _receive(self) -> None:
        if not self.transport.driver_ok:
            return
        before = self.net.stats["rx_frames"] + self.net.stats["rx_drops"]
        self.transport.notify(RX)
        if self.net.stats["rx_frames"] + self.net.stats["rx_drops"] != before:
            self.rx_delivered.set()
        self._watch_tap(self.net.pending_rx is None)  # no buffer: wait for the guest's kick

    def _watch_tap(self, on: bool) -> None:
        if on and not self.tap_watched:
            self.epoll.register(self.net.tap_fd, select.EPOLLIN)
        elif not on and self.tap_watched:
            self.epoll.unregister(self.net.tap_fd)
        self.tap_watched = on
