"""The KVM ioctl interface: request numbers and the C structures, as ctypes.

Requests go through libc's ``ioctl`` with ctypes arguments, never ``fcntl.ioctl`` with an
int: that parses the argument as a C ``int`` and mangles 64-bit addresses (ENVIRONMENT.md).
"""

from __future__ import annotations

import ctypes
import os

KVMIO = 0xAE


def _io(nr: int) -> int:
    return KVMIO << 8 | nr


def _iow(nr: int, size: int) -> int:
    return 1 << 30 | size << 16 | KVMIO << 8 | nr


def _ior(nr: int, size: int) -> int:
    return 2 << 30 | size << 16 | KVMIO << 8 | nr


class UserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("guest_phys_addr", ctypes.c_uint64), ("memory_size", ctypes.c_uint64),
                ("userspace_addr", ctypes.c_uint64)]


class Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
        "r12", "r13", "r14", "r15", "rip", "rflags")]


class Segment(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32),
                ("selector", ctypes.c_uint16), ("type", ctypes.c_uint8),
                ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8), ("db", ctypes.c_uint8),
                ("s", ctypes.c_uint8), ("l", ctypes.c_uint8), ("g", ctypes.c_uint8),
                ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8),
                ("padding", ctypes.c_uint8)]


class DTable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16),
                ("padding", ctypes.c_uint16 * 3)]


class Sregs(ctypes.Structure):
    _fields_ = [("cs", Segment), ("ds", Segment), ("es", Segment), ("fs", Segment),
                ("gs", Segment), ("ss", Segment), ("tr", Segment), ("ldt", Segment),
                ("gdt", DTable), ("idt", DTable), ("cr0", ctypes.c_uint64),
                ("cr2", ctypes.c_uint64), ("cr3", ctypes.c_uint64), ("cr4", ctypes.c_uint64),
                ("cr8", ctypes.c_uint64), ("efer", ctypes.c_uint64),
                ("apic_base", ctypes.c_uint64), ("interrupt_bitmap", ctypes.c_uint64 * 4)]


class RunIo(ctypes.Structure):
    _fields_ = [("direction", ctypes.c_uint8), ("size", ctypes.c_uint8),
                ("port", ctypes.c_uint16), ("count", ctypes.c_uint32),
                ("data_offset", ctypes.c_uint64)]


class RunMmio(ctypes.Structure):
    _fields_ = [("phys_addr", ctypes.c_uint64), ("data", ctypes.c_uint8 * 8),
                ("len", ctypes.c_uint32), ("is_write", ctypes.c_uint8)]


class RunExit(ctypes.Union):
    _fields_ = [("io", RunIo), ("mmio", RunMmio), ("padding", ctypes.c_uint8 * 256)]


class Run(ctypes.Structure):
    """The head of ``struct kvm_run`` (the vCPU's shared page): the parts we read."""

    _fields_ = [("request_interrupt_window", ctypes.c_uint8),
                ("immediate_exit", ctypes.c_uint8), ("padding1", ctypes.c_uint8 * 6),
                ("exit_reason", ctypes.c_uint32),
                ("ready_for_interrupt_injection", ctypes.c_uint8),
                ("if_flag", ctypes.c_uint8), ("flags", ctypes.c_uint16),
                ("cr8", ctypes.c_uint64), ("apic_base", ctypes.c_uint64), ("exit", RunExit)]


class CpuidEntry2(ctypes.Structure):
    _fields_ = [("function", ctypes.c_uint32), ("index", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("eax", ctypes.c_uint32), ("ebx", ctypes.c_uint32),
                ("ecx", ctypes.c_uint32), ("edx", ctypes.c_uint32),
                ("padding", ctypes.c_uint32 * 3)]


CPUID_MAX_ENTRIES = 256


class Cpuid2(ctypes.Structure):
    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32),
                ("entries", CpuidEntry2 * CPUID_MAX_ENTRIES)]


class MsrEntry(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("data", ctypes.c_uint64)]


MSR_MAX_ENTRIES = 32


class Msrs(ctypes.Structure):
    _fields_ = [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("entries", MsrEntry * MSR_MAX_ENTRIES)]


class IrqLevel(ctypes.Structure):
    _fields_ = [("irq", ctypes.c_uint32), ("level", ctypes.c_uint32)]


class PitConfig(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32 * 15)]


class IrqFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("gsi", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("resamplefd", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 16)]


class IoEventFd(ctypes.Structure):
    _fields_ = [("datamatch", ctypes.c_uint64), ("addr", ctypes.c_uint64),
                ("len", ctypes.c_uint32), ("fd", ctypes.c_int32), ("flags", ctypes.c_uint32),
                ("pad", ctypes.c_uint8 * 36)]


IOEVENTFD_FLAG_DATAMATCH = 1 << 0
IOEVENTFD_FLAG_DEASSIGN = 1 << 2

KVM_API_VERSION = 12
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = 3 << 30 | 8 << 16 | KVMIO << 8 | 0x05  # _IOWR, header size
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_GET_MSRS = 3 << 30 | 8 << 16 | KVMIO << 8 | 0x88  # _IOWR, header size
KVM_SET_MSRS = _iow(0x89, 8)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(UserspaceMemoryRegion))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_CREATE_PIT2 = _iow(0x77, 64)
KVM_IRQ_LINE = _iow(0x61, ctypes.sizeof(IrqLevel))
KVM_RUN = _io(0x80)
KVM_IOEVENTFD = _iow(0x79, ctypes.sizeof(IoEventFd))
KVM_IRQFD = _iow(0x76, ctypes.sizeof(IrqFd))
KVM_GET_REGS = _ior(0x81, ctypes.sizeof(Regs))
KVM_SET_REGS = _iow(0x82, ctypes.sizeof(Regs))
KVM_GET_SREGS = _ior(0x83, ctypes.sizeof(Sregs))
KVM_SET_SREGS = _iow(0x84, ctypes.sizeof(Sregs))

EXIT_IO = 2
EXIT_HLT = 5
EXIT_MMIO = 6
EXIT_SHUTDOWN = 8
EXIT_FAIL_ENTRY = 9
EXIT_INTERNAL_ERROR = 17
EXIT_NAMES = {EXIT_IO: "io", EXIT_HLT: "hlt", EXIT_MMIO: "mmio", EXIT_SHUTDOWN: "shutdown",
              EXIT_FAIL_ENTRY: "fail-entry", EXIT_INTERNAL_ERROR: "internal-error"}
IO_OUT = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def ioctl(fd: int, request: int, arg: ctypes.Structure | int | None = None) -> int:
    """``ioctl(2)`` with a structure (passed by reference) or a small integer argument."""
    if isinstance(arg, ctypes.Structure):
        pointer: int | None = ctypes.addressof(arg)
    else:
        pointer = arg
    result = int(_libc.ioctl(fd, request, pointer))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"KVM ioctl {request:#x}: {os.strerror(err)}")
    return result
