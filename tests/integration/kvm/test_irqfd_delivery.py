"""An interrupt raised through an irqfd reaches a guest's handler: eventfd write -> the
in-kernel I/O APIC (pin 5, the NIC's GSI) -> the local APIC -> the IDT.

The tiny guest polls at CPL 3 and takes no interrupts, so this test brings its own guest: a
few hand-assembled CPL-0 instructions (emulated on these nested machines, fast enough for
these) that mask the 8259s, enable the local APIC, route I/O APIC pin 5 to vector 0x30, load
an IDT and halt.  The handler reports on port 0x81, acknowledges the APIC and returns.
"""

from __future__ import annotations

import os
import queue
import signal
import struct
import threading

import pytest

from vnet.kvm import api, layout
from vnet.kvm.boot import linux
from vnet.kvm.vm import IoExit, Vm

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")

CODE = layout.IMAGE_ADDR
HANDLER = CODE + 0x100
IDT_ADDR, IDTR_ADDR = 0x9000, 0xA000
STACK = 0x80000
VECTOR, GSI = 0x30, 5
READY, HANDLED, DONE = 0x82, 0x81, 0x80


def mov_rax(value: int) -> bytes:
    return b"\x48\xb8" + struct.pack("<Q", value)


def store_rax(offset: int, value: int) -> bytes:
    """mov dword [rax + offset], value"""
    return (b"\xc7\x40" + bytes([offset]) if offset else b"\xc7\x00") + struct.pack("<I", value)


MAIN = b"".join([
    b"\xb0\xff\xe6\x21\xe6\xa1",                        # mask both 8259s
    mov_rax(0xFEE000F0), store_rax(0, 0x1FF),           # local APIC: software-enable (SVR)
    mov_rax(0xFEC00000),                                # I/O APIC: redirection entry for pin 5
    store_rax(0, 0x10 + 2 * GSI), store_rax(0x10, VECTOR),      # fixed, edge, unmasked
    store_rax(0, 0x11 + 2 * GSI), store_rax(0x10, 0),           # to APIC ID 0
    b"\x0f\x01\x1c\x25" + struct.pack("<I", IDTR_ADDR),  # lidt [IDTR_ADDR]
    bytes([0xE6, READY]),                               # out READY, al
    b"\xfb\xf4",                                        # sti; hlt
    bytes([0xE6, DONE]), b"\xeb\xfe",                   # out DONE, al; jmp $
])
HANDLER_CODE = b"".join([
    b"\x50",                                            # push rax
    mov_rax(0xFEE000B0), store_rax(0, 0),               # EOI
    bytes([0xB0, VECTOR, 0xE6, HANDLED]),               # mov al, VECTOR; out HANDLED, al
    b"\x58\x48\xcf",                                    # pop rax; iretq
])


def interrupt_gate(handler: int) -> bytes:
    return struct.pack("<HHBBHII", handler & 0xFFFF, 0x10, 0, 0x8E, handler >> 16 & 0xFFFF,
                       handler >> 32, 0)


def test_an_irqfd_write_runs_the_guests_interrupt_handler() -> None:
    vm = Vm(4 << 20)
    api.ioctl(vm.fd, api.KVM_CREATE_IRQCHIP, 0)  # PIC, I/O APIC, local APICs; no PIT ticking
    irq = vm.irqfd(GSI)
    mem = memoryview(vm.memory)
    layout.write_page_tables(mem, vm.memory_size)
    gdt = linux.build_gdt()
    mem[layout.GDT_ADDR:layout.GDT_ADDR + len(gdt)] = gdt
    gate = IDT_ADDR + VECTOR * 16
    mem[gate:gate + 16] = interrupt_gate(HANDLER)
    mem[IDTR_ADDR:IDTR_ADDR + 10] = struct.pack("<HQ", 256 * 16 - 1, IDT_ADDR)
    mem[CODE:CODE + len(MAIN)] = MAIN
    mem[HANDLER:HANDLER + len(HANDLER_CODE)] = HANDLER_CODE
    mem.release()
    vcpu, = vm.create_vcpus(1)
    vcpu.enter_long_mode_kernel(CODE, len(gdt) - 1, 0)
    regs = vcpu.regs()
    regs.rsp = STACK
    api.ioctl(vcpu.fd, api.KVM_SET_REGS, regs)

    events: queue.Queue[tuple[int, bytes]] = queue.Queue()

    def on_io(io: IoExit) -> bytes | None:
        events.put((io.port, io.data))
        return b"stop" if io.port == DONE else None

    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(_run(vcpu, on_io)), daemon=True)
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # kicks KVM_RUN out with EINTR
    thread.start()
    try:
        assert events.get(timeout=30)[0] == READY
        with pytest.raises(queue.Empty):  # halted: nothing happens until the line is raised
            events.get(timeout=0.5)
        os.eventfd_write(irq, 1)
        assert events.get(timeout=30) == (HANDLED, bytes([VECTOR]))
        assert events.get(timeout=30)[0] == DONE
        thread.join(10)
        assert outcome == ["stopped"]
    finally:
        while thread.is_alive():  # a guest still halted: interrupt KVM_RUN before closing
            signal.pthread_kill(thread.ident or 0, signal.SIGUSR1)
            thread.join(0.1)
        signal.signal(signal.SIGUSR1, previous)
        vm.close()


def _run(vcpu, on_io) -> object:
    try:
        return vcpu.run_until(on_io)
    except OSError as err:
        return err
