"""A 16550 UART at 0x3f8: enough of one for a guest that drives its console by polling.

Transmit goes to a sink (the console log and socket); received bytes (typed on the console
socket) wait in a FIFO, announced by the line status register's data-ready bit; other
registers read back what was written (so probing drivers find a UART) — no interrupts yet.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

COM1 = 0x3F8
THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
LSR_DATA_READY, LSR_THR_EMPTY, LSR_TX_IDLE = 0x01, 0x20, 0x40
RX_FIFO_MAX = 4096
LCR_DLAB = 0x80


class Serial16550:
    def __init__(self, sink: Callable[[bytes], None], base: int = COM1) -> None:
        self.base = base
        self.sink = sink
        self.registers = bytearray(8)
        self.divisor = bytearray(2)
        self.rx: collections.deque[int] = collections.deque(maxlen=RX_FIFO_MAX)
        self.lock = threading.Lock()  # input arrives on the console thread

    def feed(self, data: bytes) -> None:
        """Bytes typed on the console, for the guest to read (the oldest are lost when the
        guest does not read and the FIFO is full, as on a real line)."""
        with self.lock:
            self.rx.extend(data)

    def owns(self, port: int) -> bool:
        return self.base <= port < self.base + 8

    def write(self, port: int, value: int) -> None:
        offset = port - self.base
        if self.registers[LCR] & LCR_DLAB and offset in (0, 1):
            self.divisor[offset] = value
        elif offset == THR:
            self.sink(bytes([value]))
        else:
            self.registers[offset] = value

    def read(self, port: int) -> int:
        offset = port - self.base
        if self.registers[LCR] & LCR_DLAB and offset in (0, 1):
            return self.divisor[offset]
        if offset == LSR:
            return LSR_THR_EMPTY | LSR_TX_IDLE | (LSR_DATA_READY if self.rx else 0)
        if offset == IIR:
            return 0x01  # no interrupt pending
        if offset == THR:
            with self.lock:
                return self.rx.popleft() if self.rx else 0
        return self.registers[offset]
