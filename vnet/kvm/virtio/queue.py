"""Split virtqueues, walked over guest memory that the guest controls (so: distrusted).

Every address, length, index and chain is checked before use: a descriptor outside guest
memory, a chain longer than the queue (a loop), an available index that jumps by more than
the queue size, or an absurd buffer size raises ``QueueError``; the device then fails
(DEVICE_NEEDS_RESET) instead of touching memory outside the guest or spinning forever.

The guest reads the used ring's index while the device writes it, so the index is written
with one 16-bit store (``_words``): ``struct.pack_into`` zeroes its target before it writes
the value, and a guest polling the index saw it fall back to 0 for an instant (the tiny
guest's sender took the drop for 65 000 returned buffers and overran its queue; a Linux
driver would read stale entries).  Native order is little-endian, as virtio's: x86 only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vnet.errors import VnetError

DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 1, 2, 4
DESC_SIZE = 16
MAX_CHAIN_BYTES = 1 << 20


class QueueError(VnetError):
    """The guest broke the virtqueue rules; the message says how (the device stops, the
    VMM does not)."""


@dataclass(frozen=True)
class Buffer:
    address: int
    length: int
    writable: bool


@dataclass
class SplitQueue:
    memory: memoryview
    size: int
    desc: int
    avail: int
    used: int
    last_avail: int = 0
    pushed: int = 0  # used entries returned so far (the transport interrupts on change)
    _words: memoryview = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._words = self.memory[:len(self.memory) & ~1].cast("H")  # guest memory as u16

    def check(self) -> None:
        if self.size == 0 or self.size > 32768 or self.size & (self.size - 1):
            raise QueueError(f"queue size {self.size} is not a power of two in 1..32768")
        self._span(self.desc, DESC_SIZE * self.size, "descriptor table")
        self._span(self.avail, 6 + 2 * self.size, "available ring")
        self._span(self.used, 6 + 8 * self.size, "used ring")
        for address, alignment, what in ((self.desc, 16, "descriptor table"),
                                         (self.avail, 2, "available ring"),
                                         (self.used, 4, "used ring")):
            if address % alignment:
                raise QueueError(f"{what} at {address:#x} is not {alignment}-byte aligned "
                                 f"as a split virtqueue's must be")

    def _span(self, address: int, length: int, what: str) -> None:
        if address < 0 or length < 0 or address + length > len(self.memory):
            raise QueueError(f"{what} at {address:#x}+{length} lies outside guest memory "
                             f"({len(self.memory):#x} bytes)")

    def pending(self) -> int:
        (avail_idx,) = struct.unpack_from("<H", self.memory, self.avail + 2)
        count = (avail_idx - self.last_avail) & 0xFFFF
        if count > self.size:
            raise QueueError(f"available index jumped by {count} with a queue of {self.size}")
        return int(count)

    def pop(self) -> tuple[int, list[Buffer]] | None:
        """The next available chain: (head index, buffers), or None if there is none."""
        if not self.pending():
            return None
        slot = self.avail + 4 + 2 * (self.last_avail % self.size)
        (head,) = struct.unpack_from("<H", self.memory, slot)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return head, self.chain(head)

    def chain(self, head: int) -> list[Buffer]:
        buffers: list[Buffer] = []
        index, total = head, 0
        for _ in range(self.size):
            if index >= self.size:
                raise QueueError(f"descriptor index {index} outside a queue of {self.size}")
            address, length, flags, following = struct.unpack_from(
                "<QIHH", self.memory, self.desc + DESC_SIZE * index)
            if flags & DESC_F_INDIRECT:
                raise QueueError("indirect descriptors were not negotiated")
            self._span(address, length, f"buffer of descriptor {index}")
            total += length
            if total > MAX_CHAIN_BYTES:
                raise QueueError(f"descriptor chain from {head} exceeds {MAX_CHAIN_BYTES} bytes")
            buffers.append(Buffer(address, length, bool(flags & DESC_F_WRITE)))
            if not flags & DESC_F_NEXT:
                return buffers
            index = following
        raise QueueError(f"descriptor chain from {head} is longer than the queue: a loop")

    def push_used(self, head: int, written: int) -> None:
        index = (self.used + 2) >> 1  # aligned: check() made sure
        used_idx = self._words[index]
        struct.pack_into("<II", self.memory, self.used + 4 + 8 * (used_idx % self.size),
                         head, written)
        self._words[index] = (used_idx + 1) & 0xFFFF  # one store: never seen half-done
        self.pushed += 1

    def wants_interrupt(self) -> bool:
        """False when the driver set VIRTQ_AVAIL_F_NO_INTERRUPT (it polls)."""
        return not struct.unpack_from("<H", self.memory, self.avail)[0] & 1

    def read(self, buffers: list[Buffer]) -> bytes:
        return b"".join(bytes(self.memory[b.address:b.address + b.length])
                        for b in buffers if not b.writable)

    def write(self, buffers: list[Buffer], data: bytes) -> int:
        """Scatter ``data`` over the writable buffers; returns how much fit."""
        done = 0
        for b in buffers:
            if not b.writable or done >= len(data):
                continue
            part = data[done:done + b.length]
            self.memory[b.address:b.address + len(part)] = part
            done += len(part)
        return done
