"""A KVM virtual machine: guest memory in a memory slot, vCPUs, and the run loop's exits.

Thin over the ioctls in ``vnet.kvm.api``; what to put in memory comes from
``vnet.kvm.layout``, what port I/O means from the devices.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass

from vnet.errors import VnetError
from vnet.kvm import api, cpu, layout

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 0x10000, 0x80000000
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 0x20, 0x200, 0x400
EFER_LME, EFER_LMA = 0x100, 0x400
RFLAGS_RESERVED, RFLAGS_IOPL3 = 0x2, 0x3000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


class KvmError(VnetError):
    """/dev/kvm is missing, refused, or the guest did something the VMM cannot handle."""


@dataclass
class IoExit:
    port: int
    size: int
    out: bool
    data: bytes          # for out: the bytes written


class Vm:
    def __init__(self, memory_size: int) -> None:
        if memory_size < layout.MIN_MEMORY:
            raise KvmError(f"guest memory must be at least {layout.MIN_MEMORY >> 20} MiB")
        try:
            self.kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise KvmError(f"cannot open /dev/kvm ({err.strerror}): KVM is not available "
                           f"here, or needs root / the kvm group") from None
        version = api.ioctl(self.kvm, api.KVM_GET_API_VERSION)
        if version != api.KVM_API_VERSION:
            raise KvmError(f"KVM API version {version}, expected {api.KVM_API_VERSION}")
        self.fd = api.ioctl(self.kvm, api.KVM_CREATE_VM, 0)
        api.ioctl(self.fd, api.KVM_SET_TSS_ADDR, 0xFFFBD000)
        self.memory_size = memory_size
        self.memory = mmap.mmap(-1, memory_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        host_address = ctypes.addressof(ctypes.c_char.from_buffer(self.memory))
        api.ioctl(self.fd, api.KVM_SET_USER_MEMORY_REGION, api.UserspaceMemoryRegion(
            slot=0, flags=0, guest_phys_addr=0, memory_size=memory_size,
            userspace_addr=host_address))
        self.vcpus: list[Vcpu] = []
        self.eventfds: list[int] = []  # ioeventfds and irqfds, closed with the VM

    def ioeventfd(self, address: int, length: int, datamatch: int) -> int:
        """An eventfd that the kernel signals when the guest writes ``datamatch`` to the MMIO
        ``address``: the write completes in the kernel, with no exit to this process."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            api.ioctl(self.fd, api.KVM_IOEVENTFD, api.IoEventFd(
                datamatch=datamatch, addr=address, len=length, fd=fd,
                flags=api.IOEVENTFD_FLAG_DATAMATCH))
        except OSError:
            os.close(fd)
            raise
        self.eventfds.append(fd)
        return fd

    def irqfd(self, gsi: int) -> int:
        """An eventfd that, written to, raises interrupt line ``gsi`` of the in-kernel irqchip:
        a device's interrupt never passes through the vCPU thread."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            api.ioctl(self.fd, api.KVM_IRQFD, api.IrqFd(fd=fd, gsi=gsi))
        except OSError:
            os.close(fd)
            raise
        self.eventfds.append(fd)
        return fd

    def set_irq_line(self, gsi: int, level: bool) -> None:
        """Drive interrupt line ``gsi`` of the in-kernel irqchip to ``level`` (KVM_IRQ_LINE):
        for a device whose line stays up while it wants service, like the UART."""
        api.ioctl(self.fd, api.KVM_IRQ_LINE, api.IrqLevel(irq=gsi, level=int(level)))

    def create_irqchip_and_pit(self) -> None:
        """The in-kernel PIC, IOAPIC and local APICs, and the i8254 PIT: what a PC guest
        (Linux) expects, emulated by KVM rather than here.  Before any vCPU exists."""
        api.ioctl(self.fd, api.KVM_CREATE_IRQCHIP, 0)
        api.ioctl(self.fd, api.KVM_CREATE_PIT2, api.PitConfig())

    def supported_cpuid(self) -> list[cpu.CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID: what this host's KVM can show a guest."""
        table = api.Cpuid2(nent=api.CPUID_MAX_ENTRIES)
        api.ioctl(self.kvm, api.KVM_GET_SUPPORTED_CPUID, table)
        return [cpu.CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                for e in table.entries[:table.nent]]

    def create_vcpus(self, count: int) -> list[Vcpu]:
        """``count`` vCPUs with the CPU model of ``vnet.kvm.cpu``: vCPU i of ``count`` in
        its CPUID, the boot MSRs set.  All at once: each one's CPUID names the total."""
        supported = self.supported_cpuid()
        return [self.add_vcpu(cpu.guest_cpuid(supported, index, count))
                for index in range(count)]

    def add_vcpu(self, cpuid: list[cpu.CpuidEntry]) -> Vcpu:
        """One more vCPU with this CPUID table of its own (KVM copies it) and the boot MSRs."""
        vcpu = Vcpu(self, len(self.vcpus))
        self.vcpus.append(vcpu)
        vcpu.set_cpuid(cpuid)
        vcpu.set_msrs(cpu.boot_msrs())
        return vcpu

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds.clear()
        os.close(self.fd)
        os.close(self.kvm)
        self.vcpus.clear()


class Vcpu:
    def __init__(self, vm: Vm, index: int) -> None:
        self.index = index
        self.fd = api.ioctl(vm.fd, api.KVM_CREATE_VCPU, index)
        self.run_size = api.ioctl(vm.kvm, api.KVM_GET_VCPU_MMAP_SIZE)
        # Mapped through libc, not the mmap module: a ctypes view into an mmap object pins
        # it (BufferError on close) for as long as any frame still references the view.
        address = _libc.mmap(None, self.run_size, mmap.PROT_READ | mmap.PROT_WRITE,
                             mmap.MAP_SHARED, self.fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise KvmError(f"cannot map the vCPU's run page: {os.strerror(ctypes.get_errno())}")
        self.run_address = int(address)
        self.run = api.Run.from_address(self.run_address)

    def enter_long_mode_user(self, entry: int, stack: int) -> None:
        """Start at ``entry`` in 64-bit mode at CPL 3 with IOPL 3 (see docs/kvm.md)."""
        sregs = api.Sregs()
        api.ioctl(self.fd, api.KVM_GET_SREGS, sregs)
        code = api.Segment(base=0, limit=0xFFFFFFFF, selector=layout.USER_CS, type=0xB,
                           present=1, dpl=3, db=0, s=1, l=1, g=1)
        data = api.Segment(base=0, limit=0xFFFFFFFF, selector=layout.USER_DS, type=0x3,
                           present=1, dpl=3, db=1, s=1, l=0, g=1)
        sregs.cs = code
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        sregs.tr = api.Segment(base=layout.TSS_ADDR, limit=layout.TSS_SIZE - 1,
                               selector=layout.TSS_SELECTOR, type=0xB, present=1, s=0)
        sregs.ldt = api.Segment(unusable=1)
        sregs.gdt = api.DTable(base=layout.GDT_ADDR, limit=len(layout.build_gdt()) - 1)
        sregs.idt = api.DTable(base=0, limit=0)
        sregs.cr3 = layout.PML4_ADDR
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
        sregs.efer = EFER_LME | EFER_LMA
        api.ioctl(self.fd, api.KVM_SET_SREGS, sregs)
        regs = api.Regs(rip=entry, rsp=stack, rflags=RFLAGS_RESERVED | RFLAGS_IOPL3)
        api.ioctl(self.fd, api.KVM_SET_REGS, regs)

    def set_cpuid(self, entries: list[cpu.CpuidEntry]) -> None:
        """KVM_SET_CPUID2: a vCPU starts with no CPUID, and Linux checks for long mode."""
        if len(entries) > api.CPUID_MAX_ENTRIES:
            raise KvmError(f"{len(entries)} CPUID entries, at most {api.CPUID_MAX_ENTRIES}")
        table = api.Cpuid2(nent=len(entries))
        for slot, entry in zip(table.entries, entries, strict=False):
            for field in ("function", "index", "flags", "eax", "ebx", "ecx", "edx"):
                setattr(slot, field, getattr(entry, field))
        api.ioctl(self.fd, api.KVM_SET_CPUID2, table)

    def set_msrs(self, values: list[tuple[int, int]]) -> None:
        """KVM_SET_MSRS; it stops at the first MSR KVM refuses and says how many it set."""
        table = api.Msrs(nmsrs=len(values))
        for slot, (index, data) in zip(table.entries, values, strict=False):
            slot.index, slot.data = index, data
        done = api.ioctl(self.fd, api.KVM_SET_MSRS, table)
        if done < len(values):
            raise KvmError(f"KVM refused to set MSR {values[done][0]:#x} on vCPU {self.index}")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        table = api.Msrs(nmsrs=len(indices))
        for slot, index in zip(table.entries, indices, strict=False):
            slot.index = index
        done = api.ioctl(self.fd, api.KVM_GET_MSRS, table)
        return {table.entries[i].index: table.entries[i].data for i in range(done)}

    def regs(self) -> api.Regs:
        regs = api.Regs()
        api.ioctl(self.fd, api.KVM_GET_REGS, regs)
        return regs

    def enter_long_mode_kernel(self, entry: int, gdt_limit: int, rsi: int) -> None:
        """Start at ``entry`` in 64-bit mode at CPL 0, as the Linux 64-bit boot protocol
        asks: flat __BOOT_CS (0x10) and __BOOT_DS (0x18), interrupts off, %rsi = zero page."""
        sregs = api.Sregs()
        api.ioctl(self.fd, api.KVM_GET_SREGS, sregs)
        sregs.cs = api.Segment(base=0, limit=0xFFFFFFFF, selector=0x10, type=0xB, present=1,
                               dpl=0, db=0, s=1, l=1, g=1)
        data = api.Segment(base=0, limit=0xFFFFFFFF, selector=0x18, type=0x3, present=1,
                           dpl=0, db=1, s=1, l=0, g=1)
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        sregs.tr = api.Segment(base=0, limit=0xFFFF, selector=0, type=0xB, present=1, s=0)
        sregs.ldt = api.Segment(unusable=1)
        sregs.gdt = api.DTable(base=layout.GDT_ADDR, limit=gdt_limit)
        sregs.idt = api.DTable(base=0, limit=0)
        sregs.cr3 = layout.PML4_ADDR
        sregs.cr4 = CR4_PAE
        sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG
        sregs.efer = EFER_LME | EFER_LMA
        api.ioctl(self.fd, api.KVM_SET_SREGS, sregs)
        api.ioctl(self.fd, api.KVM_SET_REGS, api.Regs(rip=entry, rsi=rsi, rflags=RFLAGS_RESERVED))

    def run_until(self, on_io: Callable[[IoExit], bytes | None],
                  on_mmio: Callable[[int, int, bytes | None], bytes] | None = None,
                  interrupted: Callable[[Vcpu], bool] | None = None) -> str:
        """Run until ``on_io`` asks to stop (returns b"stop") or the guest cannot go on;
        returns why.  ``on_io`` returns the bytes an ``in`` reads, or None; ``on_mmio``
        gets (address, length, data written or None for a read) and returns what a read
        reads.  When KVM_RUN is interrupted (a signal, ``immediate_exit``), ``interrupted``
        says whether to go on (default: go on); when it says no, returns "kicked"."""
        run = self.run
        base = self.run_address
        while True:
            try:
                api.ioctl(self.fd, api.KVM_RUN, 0)
            except InterruptedError:
                if interrupted is None or interrupted(self):
                    continue
                return "kicked"
            reason = run.exit_reason
            if reason == api.EXIT_IO:
                io = run.exit.io
                offset, width = io.data_offset, io.size * io.count
                out = io.direction == api.IO_OUT
                data = ctypes.string_at(base + offset, width) if out else b""
                answer = on_io(IoExit(io.port, io.size, out, data))
                if answer == b"stop":
                    return "stopped"
                if not out:
                    value = (answer or b"")[:width].ljust(width, b"\xff")
                    ctypes.memmove(base + offset, value, width)
                continue
            if reason == api.EXIT_MMIO and on_mmio is not None:
                mmio = run.exit.mmio
                length = min(mmio.len, 8)
                if mmio.is_write:
                    on_mmio(mmio.phys_addr, length, bytes(mmio.data)[:length])
                else:
                    value = on_mmio(mmio.phys_addr, length, None)[:length].ljust(length, b"\0")
                    ctypes.memmove(ctypes.addressof(mmio.data), value, length)
                continue
            if reason == api.EXIT_HLT:
                return "halted"
            name = api.EXIT_NAMES.get(reason, str(reason))
            raise KvmError(f"the guest stopped with exit {name} at rip={self.regs().rip:#x}")

    def close(self) -> None:
        _libc.munmap(ctypes.c_void_p(self.run_address), self.run_size)
        os.close(self.fd)
