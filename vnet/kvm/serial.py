"""A 16550 UART at 0x3f8: enough of one for a guest that writes its console by polling.

Transmit goes to a sink (the console log, and later the console socket); the line status
register always reports the transmitter empty; other registers read back what was written
(so probing drivers find a UART) — no interrupts yet.
"""

from __future__ import annotations

from collections.abc import Callable

COM1 = 0x3F8
THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
LSR_THR_EMPTY, LSR_TX_IDLE = 0x20, 0x40
LCR_DLAB = 0x80


class Serial16550:
    def __init__(self, sink: Callable[[bytes], None], base: int = COM1) -> None:
        self.base = base
        self.sink = sink
        self.registers = bytearray(8)
        self.divisor = bytearray(2)

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
            return LSR_THR_EMPTY | LSR_TX_IDLE
        if offset == IIR:
            return 0x01  # no interrupt pending
        if offset == THR:
            return 0     # no input yet
        return self.registers[offset]
