"""The 16550's interrupt logic: what IIR says and when the IRQ 4 line moves."""

from __future__ import annotations

from vnet.kvm.serial import (
    COM1,
    IER,
    IER_RX_DATA,
    IER_THR_EMPTY,
    IIR,
    IIR_FIFOS_ON,
    IIR_NONE,
    IIR_RX_DATA,
    IIR_THR_EMPTY,
    LSR,
    LSR_DATA_READY,
    THR,
    Serial16550,
)


def uart() -> tuple[Serial16550, list[bytes], list[bool]]:
    out: list[bytes] = []
    line: list[bool] = []
    serial = Serial16550(out.append)
    serial.wire(line.append)
    return serial, out, line


def test_a_polling_guest_never_moves_the_line() -> None:
    serial, out, line = uart()
    serial.write(COM1 + THR, ord("x"))
    serial.feed(b"typed")
    assert serial.read(COM1 + IIR) == IIR_NONE
    assert serial.read(COM1 + LSR) & LSR_DATA_READY
    assert out == [b"x"] and line == []


def test_received_data_raises_the_line_until_the_fifo_is_read_empty() -> None:
    serial, _out, line = uart()
    serial.write(COM1 + IER, IER_RX_DATA)
    serial.feed(b"ab")
    assert line == [True] and serial.read(COM1 + IIR) == IIR_RX_DATA
    assert serial.read(COM1 + THR) == ord("a") and line == [True]
    assert serial.read(COM1 + THR) == ord("b")
    assert line == [True, False] and serial.read(COM1 + IIR) == IIR_NONE


def test_enabling_thre_raises_it_at_once_and_reading_iir_acknowledges_it() -> None:
    serial, out, line = uart()
    serial.write(COM1 + IER, IER_THR_EMPTY)
    assert line == [True]
    assert serial.read(COM1 + IIR) == IIR_THR_EMPTY
    assert line == [True, False] and serial.read(COM1 + IIR) == IIR_NONE
    serial.write(COM1 + THR, ord("y"))   # sent at once: the transmitter is empty again
    assert line == [True, False, True] and out == [b"y"]


def test_received_data_outranks_thre_and_fifos_show_in_iir() -> None:
    serial, _out, _line = uart()
    serial.write(COM1 + 2, 0x01)          # FCR: FIFOs on
    serial.write(COM1 + IER, IER_RX_DATA | IER_THR_EMPTY)
    serial.feed(b"z")
    assert serial.read(COM1 + IIR) == IIR_RX_DATA | IIR_FIFOS_ON
    serial.read(COM1 + THR)
    assert serial.read(COM1 + IIR) == IIR_THR_EMPTY | IIR_FIFOS_ON


def test_an_unwired_uart_keeps_its_state_for_when_the_line_is_connected() -> None:
    serial = Serial16550(lambda _data: None)
    serial.write(COM1 + IER, IER_RX_DATA)
    serial.feed(b"q")
    line: list[bool] = []
    serial.wire(line.append)
    assert line == [True]
    serial.wire(None)
    serial.read(COM1 + THR)  # no line to move: nothing breaks
