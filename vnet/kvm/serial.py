"""A 16550 UART at 0x3f8 on IRQ 4 (pure: the interrupt line is a callback).

Transmit goes to a sink (the console log and socket) at once, so the transmitter is always
empty; received bytes (typed on the console socket) wait in a FIFO, announced by the line
status register's data-ready bit.  Interrupts, as an 8250-family driver (Linux's) expects:
"received data available" while the FIFO holds bytes and IER enables it; "transmitter
holding register empty" when IER enables it (at once, since the transmitter is always
empty) and again after every write to THR, cleared by reading IIR while it is the reason
shown, or by writing THR.  IIR reports the highest-priority reason; the line (``irq``,
called with True/False on every change) is up while any reason is pending.  A polling guest
(the tiny guest) leaves IER at 0 and never sees the line move.  Modem-status and line-status
interrupts never fire: nothing here changes those registers.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

COM1 = 0x3F8
COM1_IRQ = 4
THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
FCR = IIR  # written, it is the FIFO control register
LSR_DATA_READY, LSR_THR_EMPTY, LSR_TX_IDLE = 0x01, 0x20, 0x40
IER_RX_DATA, IER_THR_EMPTY = 0x01, 0x02
IIR_NONE, IIR_THR_EMPTY, IIR_RX_DATA, IIR_FIFOS_ON = 0x01, 0x02, 0x04, 0xC0
FCR_ENABLE = 0x01
RX_FIFO_MAX = 4096
LCR_DLAB = 0x80


class Serial16550:
    def __init__(self, sink: Callable[[bytes], None], base: int = COM1) -> None:
        self.base = base
        self.sink = sink
        self.registers = bytearray(8)
        self.divisor = bytearray(2)
        self.rx: collections.deque[int] = collections.deque(maxlen=RX_FIFO_MAX)
        self.fifos = False
        self.thr_empty_pending = False  # the THRE interrupt, until IIR shows it or THR is written
        self.irq: Callable[[bool], None] | None = None  # the interrupt line, once wired
        self.line = False
        self.lock = threading.Lock()  # input arrives on the console thread

    def wire(self, irq: Callable[[bool], None] | None) -> None:
        """Connect the interrupt line (None: disconnect, e.g. when the VM goes away)."""
        with self.lock:
            self.irq, self.line = irq, False
            self._update_line()

    def feed(self, data: bytes) -> None:
        """Bytes typed on the console, for the guest to read (the oldest are lost when the
        guest does not read and the FIFO is full, as on a real line)."""
        with self.lock:
            self.rx.extend(data)
            self._update_line()

    def owns(self, port: int) -> bool:
        return self.base <= port < self.base + 8

    def write(self, port: int, value: int) -> None:
        offset = port - self.base
        with self.lock:
            if self.registers[LCR] & LCR_DLAB and offset in (0, 1):
                self.divisor[offset] = value
            elif offset == THR:
                self.sink(bytes([value]))
                self.thr_empty_pending = True  # sent at once: empty again
            elif offset == FCR:
                self.fifos = bool(value & FCR_ENABLE)
                if value & 0x02:
                    self.rx.clear()  # "clear receive FIFO"
            else:
                if offset == IER and value & IER_THR_EMPTY and not (
                        self.registers[IER] & IER_THR_EMPTY):
                    self.thr_empty_pending = True  # enabling THRE with THR empty raises it
                self.registers[offset] = value
            self._update_line()

    def read(self, port: int) -> int:
        offset = port - self.base
        with self.lock:
            if self.registers[LCR] & LCR_DLAB and offset in (0, 1):
                return self.divisor[offset]
            if offset == LSR:
                return LSR_THR_EMPTY | LSR_TX_IDLE | (LSR_DATA_READY if self.rx else 0)
            if offset == IIR:
                reason = self._reason()
                if reason == IIR_THR_EMPTY:
                    self.thr_empty_pending = False  # reading IIR acknowledges THRE
                    self._update_line()
                return reason | (IIR_FIFOS_ON if self.fifos else 0)
            if offset == THR:
                value = self.rx.popleft() if self.rx else 0
                self._update_line()
                return value
            return self.registers[offset]

    def _reason(self) -> int:
        ier = self.registers[IER]
        if ier & IER_RX_DATA and self.rx:
            return IIR_RX_DATA
        if ier & IER_THR_EMPTY and self.thr_empty_pending:
            return IIR_THR_EMPTY
        return IIR_NONE

    def _update_line(self) -> None:
        level = self._reason() != IIR_NONE
        if level != self.line and self.irq is not None:
            self.line = level
            self.irq(level)
