"""virtio-blk backed by a raw disk image: read, write, flush, get-id, and a read-only mode.

Requests are chains of [header (device-readable, 16 bytes: type, reserved, sector)] [data]
[status byte (device-writable)].  A malformed chain (no header, no status byte, a header that
is writable) is a broken driver: the device fails.  A request that is well formed but cannot
be served (beyond the end of the disk, a write to a read-only disk, an unknown type) gets an
error status, as real hardware answers.
"""

from __future__ import annotations

import os
import struct

from vnet.kvm.virtio.mmio import MmioTransport
from vnet.kvm.virtio.queue import Buffer, QueueError, SplitQueue

DEVICE_ID = 2
SECTOR = 512
F_RO = 1 << 5
F_FLUSH = 1 << 9
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20


class VirtioBlk:
    device_id = DEVICE_ID
    num_queues = 1

    def __init__(self, path: str, readonly: bool = False, serial: str = "vnet-disk") -> None:
        self.readonly = readonly
        self.fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self.serial = serial.encode()[:ID_BYTES]
        self.features = F_FLUSH | (F_RO if readonly else 0)
        # Counters, written on the device thread, read by the control socket's status.
        self.stats = {"requests": 0, "read_bytes": 0, "written_bytes": 0, "errors": 0}

    def config(self) -> bytes:
        return struct.pack("<Q", self.size // SECTOR)

    def negotiated(self, features: int) -> None:
        """Nothing depends on what the driver took (RO and FLUSH are the device's facts)."""

    def notify(self, transport: MmioTransport, queue: int) -> None:
        q = transport.queue(queue)
        while q is not None and (chain := q.pop()) is not None:
            head, buffers = chain
            written = self._serve(q, buffers)
            q.push_used(head, written)

    def _serve(self, q: SplitQueue, buffers: list[Buffer]) -> int:
        if len(buffers) < 2 or buffers[0].writable or buffers[0].length < 16:
            raise QueueError("a block request needs a readable 16-byte header first")
        status = buffers[-1]
        if not status.writable or status.length < 1:
            raise QueueError("a block request needs a writable status byte last")
        kind, _reserved, sector = struct.unpack("<IIQ", q.read([buffers[0]])[:16])
        data = buffers[1:-1]
        code, written = self._request(q, kind, sector, data)
        self.stats["requests"] += 1
        if code != S_OK:
            self.stats["errors"] += 1
        elif kind == T_IN:
            self.stats["read_bytes"] += written
        elif kind == T_OUT:
            self.stats["written_bytes"] += sum(b.length for b in data)
        q.memory[status.address] = code
        return written + 1

    def _request(self, q: SplitQueue, kind: int, sector: int,
                 data: list[Buffer]) -> tuple[int, int]:
        length = sum(b.length for b in data)
        offset = sector * SECTOR
        if kind == T_IN:
            if any(not b.writable for b in data) or offset + length > self.size:
                return S_IOERR, 0
            return S_OK, q.write(data, os.pread(self.fd, length, offset))
        if kind == T_OUT:
            if self.readonly or any(b.writable for b in data) or offset + length > self.size:
                return S_IOERR, 0
            os.pwrite(self.fd, q.read(data), offset)
            return S_OK, 0
        if kind == T_FLUSH:
            if not self.readonly:
                os.fsync(self.fd)
            return S_OK, 0
        if kind == T_GET_ID:
            return S_OK, q.write(data, self.serial.ljust(ID_BYTES, b"\0"))
        return S_UNSUPP, 0

    def close(self) -> None:
        os.close(self.fd)
