"""The device thread: queue kicks (ioeventfds) and the TAP, served off the vCPU thread.

The guest's QueueNotify writes are caught in the kernel by KVM_IOEVENTFD and arrive here as
eventfd wake-ups; the vCPU never exits for them.  Frames from the TAP are moved into the
receive queue here too; when the guest has posted no receive buffer, the TAP is left alone
until it posts some (its RX kick), so a full queue never turns into a busy loop.
"""

from __future__ import annotations

import logging
import os
import select
import threading

from vnet.kvm.virtio.mmio import MmioTransport
from vnet.kvm.virtio.net import RX, TX, VirtioNet

log = logging.getLogger("vnet.kvm.io")


class NetIoThread(threading.Thread):
    def __init__(self, net: VirtioNet, transport: MmioTransport, rx_kick: int,
                 tx_kick: int) -> None:
        super().__init__(name="virtio-net-io", daemon=True)
        self.net = net
        self.transport = transport
        self.rx_kick = rx_kick
        self.tx_kick = tx_kick
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.rx_delivered = threading.Event()  # the guest's wait port returns on this
        self.epoll = select.epoll()
        self.tap_watched = False

    def run(self) -> None:
        for fd in (self.rx_kick, self.tx_kick, self.stop_fd):
            self.epoll.register(fd, select.EPOLLIN)
        self._watch_tap(True)
        try:
            while True:
                for fd, _ in self.epoll.poll():
                    if fd == self.stop_fd:
                        return
                    if fd in (self.rx_kick, self.tx_kick):
                        os.eventfd_read(fd)
                    if fd == self.tx_kick and self.transport.driver_ok:
                        self.transport.notify(TX)
                    if fd in (self.rx_kick, self.net.tap_fd):
                        self._receive()
        except Exception:  # a bug here must not leave the guest hanging silently
            log.exception("the device thread failed")
            self.transport.fail("internal error in the device thread")
        finally:
            self.epoll.close()

    def _receive(self) -> None:
        if not self.transport.driver_ok:
            return
        before = self.net.stats["rx_frames"] + self.net.stats["rx_dropped"]
        self.transport.notify(RX)
        if self.net.stats["rx_frames"] + self.net.stats["rx_dropped"] != before:
            self.rx_delivered.set()
        self._watch_tap(self.net.pending_rx is None)  # no buffer: wait for the guest's kick

    def _watch_tap(self, on: bool) -> None:
        if on and not self.tap_watched:
            self.epoll.register(self.net.tap_fd, select.EPOLLIN)
        elif not on and self.tap_watched:
            self.epoll.unregister(self.net.tap_fd)
        self.tap_watched = on

    def stop(self) -> None:
        os.eventfd_write(self.stop_fd, 1)
        self.join(5)
        os.close(self.stop_fd)
