"""Interrupts reach a guest's handler: an irqfd write (how virtio devices signal) and the
16550's IRQ 4 line (KVM_IRQ_LINE), each through the in-kernel I/O APIC, the local APIC and the
guest's IDT.

The tiny guest polls at CPL 3 and takes no interrupts, so these tests bring their own guest: a
few hand-assembled CPL-0 instructions (emulated on these nested machines, fast enough for
these) that mask the 8259s, enable the local APIC, route one I/O APIC pin to a vector, load
an IDT and halt.  The handler reports on port 0x81, acknowledges the APIC and returns.
"""

from __future__ import annotations

import os
import queue
import signal
import struct
import threading
from collections.abc import Callable

import pytest

from vnet.kvm import api, layout
from vnet.kvm.boot import linux
from vnet.kvm.serial import COM1, COM1_IRQ, IER, THR, Serial16550
from vnet.kvm.vm import IoExit, Vm

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")

CODE = layout.IMAGE_ADDR
HANDLER = CODE + 0x100
IDT_ADDR, IDTR_ADDR = 0x9000, 0xA000
STACK = 0x80000
VECTOR, GSI = 0x30, 5
SERIAL_VECTOR = 0x31
READY, HANDLED, DONE = 0x82, 0x81, 0x80


def mov_rax(value: int) -> bytes:
    return b"\x48\xb8" + struct.pack("<Q", value)


def store_rax(offset: int, value: int) -> bytes:
    """mov dword [rax + offset], value"""
    return (b"\xc7\x40" + bytes([offset]) if offset else b"\xc7\x00") + struct.pack("<I", value)


def guest(pin: int, vector: int, setup: bytes = b"", handler: bytes = b"") -> tuple[bytes, bytes]:
    """The main program (``setup`` runs just before it halts) and the interrupt handler
    (``handler`` runs first, and leaves in al what to report on HANDLED)."""
    main = b"".join([
        b"\xb0\xff\xe6\x21\xe6\xa1",                        # mask both 8259s
        mov_rax(0xFEE000F0), store_rax(0, 0x1FF),           # local APIC: software-enable (SVR)
        mov_rax(0xFEC00000),                                # the I/O APIC's redirection entry
        store_rax(0, 0x10 + 2 * pin), store_rax(0x10, vector),      # fixed, edge, unmasked
        store_rax(0, 0x11 + 2 * pin), store_rax(0x10, 0),           # to APIC ID 0
        b"\x0f\x01\x1c\x25" + struct.pack("<I", IDTR_ADDR),  # lidt [IDTR_ADDR]
        setup,
        bytes([0xE6, READY]),                               # out READY, al
        b"\xfb\xf4",                                        # sti; hlt
        bytes([0xE6, DONE]), b"\xeb\xfe",                   # out DONE, al; jmp $
    ])
    isr = b"".join([
        b"\x50\x52",                                        # push rax; push rdx
        handler or bytes([0xB0, vector]),                   # default: al = the vector
        bytes([0xE6, HANDLED]),                             # out HANDLED, al
        mov_rax(0xFEE000B0), store_rax(0, 0),               # EOI
        b"\x5a\x58\x48\xcf",                                # pop rdx; pop rax; iretq
    ])
    return main, isr


def interrupt_gate(handler: int) -> bytes:
    return struct.pack("<HHBBHII", handler & 0xFFFF, 0x10, 0, 0x8E, handler >> 16 & 0xFFFF,
                       handler >> 32, 0)


class HaltedGuest:
    """A VM with the in-kernel irqchip (no PIT ticking) running ``guest(...)`` on vCPU 0 in
    a thread; ``events`` gets every port write: (port, data)."""

    def __init__(self, main: bytes, isr: bytes, vector: int,
                 devices: Callable[[IoExit], bytes | None] = lambda _io: None) -> None:
        self.vm = Vm(4 << 20)
        api.ioctl(self.vm.fd, api.KVM_CREATE_IRQCHIP, 0)
        mem = memoryview(self.vm.memory)
        gdt_limit = linux.write_entry_tables(mem, self.vm.memory_size)
        mem[IDT_ADDR + vector * 16:IDT_ADDR + vector * 16 + 16] = interrupt_gate(HANDLER)
        mem[IDTR_ADDR:IDTR_ADDR + 10] = struct.pack("<HQ", 256 * 16 - 1, IDT_ADDR)
        mem[CODE:CODE + len(main)] = main
        mem[HANDLER:HANDLER + len(isr)] = isr
        mem.release()
        self.vcpu, = self.vm.create_vcpus(1)
        self.vcpu.enter_long_mode_kernel(CODE, gdt_limit, 0)
        regs = self.vcpu.regs()
        regs.rsp = STACK
        api.ioctl(self.vcpu.fd, api.KVM_SET_REGS, regs)
        self.devices = devices
        self.events: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.outcome: list[object] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_io(self, io: IoExit) -> bytes | None:
        if io.port in (READY, HANDLED, DONE):
            self.events.put((io.port, io.data))
            return b"stop" if io.port == DONE else None
        return self.devices(io)

    def _run(self) -> None:
        try:
            self.outcome.append(self.vcpu.run_until(self._on_io))
        except OSError as err:
            self.outcome.append(err)

    def __enter__(self) -> HaltedGuest:
        self.previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # EINTRs KVM_RUN
        self.thread.start()
        assert self.events.get(timeout=30)[0] == READY
        with pytest.raises(queue.Empty):  # halted: nothing happens until the line is raised
            self.events.get(timeout=0.5)
        return self

    def handled_then_done(self) -> bytes:
        """What the handler reported; the guest then ran on past its hlt and stopped."""
        port, data = self.events.get(timeout=30)
        assert port == HANDLED
        assert self.events.get(timeout=30)[0] == DONE
        self.thread.join(10)
        assert self.outcome == ["stopped"]
        return data

    def __exit__(self, *exc: object) -> None:
        while self.thread.is_alive():  # a guest still halted: interrupt KVM_RUN first
            signal.pthread_kill(self.thread.ident or 0, signal.SIGUSR1)
            self.thread.join(0.1)
        signal.signal(signal.SIGUSR1, self.previous)
        self.vm.close()


def test_an_irqfd_write_runs_the_guests_interrupt_handler() -> None:
    main, isr = guest(GSI, VECTOR)
    halted = HaltedGuest(main, isr, VECTOR)
    irq = halted.vm.irqfd(GSI)
    with halted:
        os.eventfd_write(irq, 1)
        assert halted.handled_then_done() == bytes([VECTOR])


def test_a_byte_typed_on_the_console_interrupts_the_guest_on_irq_4() -> None:
    """The guest enables the UART's "received data" interrupt and halts; a byte fed to the
    UART (as the console socket does) raises IRQ 4; the handler reads it from RBR."""
    serial = Serial16550(lambda _data: None)
    setup = b"\x66\xba" + struct.pack("<H", COM1 + IER) + b"\xb0\x01\xee"  # IER = RX data
    read_rbr = b"\x66\xba" + struct.pack("<H", COM1 + THR) + b"\xec"       # in al, dx
    main, isr = guest(COM1_IRQ, SERIAL_VECTOR, setup, read_rbr)

    def uart(io: IoExit) -> bytes | None:
        if not serial.owns(io.port):
            return None
        if io.out:
            serial.write(io.port, io.data[0])
            return None
        return bytes([serial.read(io.port)])

    halted = HaltedGuest(main, isr, SERIAL_VECTOR, uart)
    serial.wire(lambda level: halted.vm.set_irq_line(COM1_IRQ, level))
    with halted:
        serial.feed(b"k")
        assert halted.handled_then_done() == b"k"
    assert not serial.line, "reading the byte lowered the line"
