"""The virtio-mmio (version 2) transport: registers, feature negotiation, device status.

A device model (``VirtioDevice``) supplies its ID, features, config space and what to do on
a queue notification; the transport owns the register file and the lifecycle.  When the
device hits a guest error it enters the failed state: DEVICE_NEEDS_RESET set in the status,
the reason logged, every further notification ignored until the guest resets it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Protocol

from vnet.kvm.virtio.queue import QueueError, SplitQueue

log = logging.getLogger("vnet.kvm.virtio")

MAGIC = 0x74726976
VERSION = 2
VENDOR = 0x554D4551 ^ 0x1  # not QEMU's
F_VERSION_1 = 1 << 32
S_ACK, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, S_NEEDS_RESET, S_FAILED = 1, 2, 4, 8, 64, 128
QUEUE_MAX = 256
CONFIG = 0x100
QUEUE_NOTIFY = 0x050


class VirtioDevice(Protocol):
    device_id: int
    features: int
    num_queues: int

    def config(self) -> bytes: ...

    def negotiated(self, features: int) -> None: ...

    def notify(self, transport: MmioTransport, queue: int) -> None: ...


class QueueRegs:
    def __init__(self) -> None:
        self.num = 0
        self.ready = 0
        self.desc = self.driver = self.device = 0
        self.live: SplitQueue | None = None


class MmioTransport:
    def __init__(self, device: VirtioDevice, memory: memoryview, base: int,
                 interrupt: Callable[[], None] | None = None) -> None:
        self.device = device
        self.memory = memory
        self.base = base
        self.size = 0x200
        self.interrupt = interrupt  # signals the device's irqfd
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.queues = [QueueRegs() for _ in range(self.device.num_queues)]
        self.failure: str | None = None
        self.interrupt_status = 0

    def owns(self, address: int) -> bool:
        return self.base <= address < self.base + self.size

    @property
    def driver_ok(self) -> bool:
        return bool(self.status & S_DRIVER_OK) and self.failure is None

    def fail(self, reason: str) -> None:
        """The guest broke the rules: stop serving it until it resets the device."""
        if self.failure is None:
            log.error("virtio device %d at %#x failed: %s", self.device.device_id, self.base,
                      reason)
        self.failure = reason
        self.status |= S_NEEDS_RESET

    def queue(self, index: int) -> SplitQueue | None:
        return self.queues[index].live if index < len(self.queues) else None

    # ---- register access --------------------------------------------------------------------

    def read(self, address: int, length: int) -> bytes:
        offset = address - self.base
        if offset >= CONFIG:
            config = self.device.config()
            start = offset - CONFIG
            return config[start:start + length].ljust(length, b"\0")
        return struct.pack("<I", self._read32(offset))[:length]

    def _read32(self, offset: int) -> int:
        q = self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None
        features = self.device.features | F_VERSION_1
        values = {
            0x000: MAGIC, 0x004: VERSION, 0x008: self.device.device_id, 0x00C: VENDOR,
            0x010: (features >> (32 * self.device_features_sel)) & 0xFFFFFFFF
            if self.device_features_sel < 2 else 0,
            0x034: QUEUE_MAX if q else 0,
            0x044: q.ready if q else 0,
            0x060: self.interrupt_status, 0x070: self.status, 0x0FC: 0}
        return values.get(offset, 0)

    def write(self, address: int, data: bytes) -> None:
        offset = address - self.base
        if offset >= CONFIG or len(data) != 4:
            return  # the net config space is read-only; other widths are not allowed
        (value,) = struct.unpack("<I", data)
        q = self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None
        if offset == 0x014:
            self.device_features_sel = value
        elif offset == 0x024:
            self.driver_features_sel = value
        elif offset == 0x020 and self.driver_features_sel < 2:
            shift = 32 * self.driver_features_sel
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (
                value << shift)
        elif offset == 0x030:
            self.queue_sel = value
        elif offset == 0x070:
            self._set_status(value)
        elif offset == 0x050:
            self._notify(value)
        elif offset == 0x064:
            self.interrupt_status &= ~value  # InterruptACK
        elif q is not None:
            self._queue_register(q, offset, value)

    def _queue_register(self, q: QueueRegs, offset: int, value: int) -> None:
        if offset == 0x038:
            q.num = value
        elif offset in (0x080, 0x084):
            q.desc = _set_half(q.desc, offset == 0x084, value)
        elif offset in (0x090, 0x094):
            q.driver = _set_half(q.driver, offset == 0x094, value)
        elif offset in (0x0A0, 0x0A4):
            q.device = _set_half(q.device, offset == 0x0A4, value)
        elif offset == 0x044:
            q.ready = value & 1
            if q.ready:
                queue = SplitQueue(self.memory, q.num, q.desc, q.driver, q.device)
                try:
                    queue.check()
                except QueueError as err:
                    self.fail(str(err))
                    return
                q.live = queue

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        if value & S_FEATURES_OK and not self.status & S_FEATURES_OK:
            offered = self.device.features | F_VERSION_1
            if self.driver_features & ~offered or not self.driver_features & F_VERSION_1:
                value &= ~S_FEATURES_OK  # refused: the driver reads the status back
            else:
                self.device.negotiated(self.driver_features)
        self.status = value | (self.status & S_NEEDS_RESET)

    def notify(self, index: int) -> None:
        """A kick of queue ``index`` (from a QueueNotify write or its ioeventfd)."""
        self._notify(index)

    def _notify(self, index: int) -> None:
        queue = self.queue(index)
        if not self.driver_ok or queue is None:
            return
        before = queue.pushed
        try:
            self.device.notify(self, index)
        except QueueError as err:
            self.fail(str(err))
            return
        if queue.pushed != before and queue.wants_interrupt():
            self.interrupt_status |= 1  # used buffer notification
            if self.interrupt is not None:
                self.interrupt()


def _set_half(current: int, high: bool, value: int) -> int:
    return (current & 0xFFFFFFFF) | value << 32 if high else (current & ~0xFFFFFFFF) | value
