"""How CPUID reaches a guest on this host: from each vCPU's own table, or not.

KVM answers a guest's CPUID from the table the VMM gave that vCPU (KVM_SET_CPUID2), but
only if the instruction reaches KVM.  Under PVM (the nested /dev/kvm of these machines)
guest code runs in the L1 host's hardware ring 3, and CPUID there traps only where the CPU
can fault on it (Intel's CPUID faulting, ``cpuid_fault`` in /proc/cpuinfo).  Without it
(AMD EPYC under Firecracker) a guest's CPL-3 CPUID runs natively and the L0 hypervisor
answers with the host's own CPUID: the APIC ID of whichever host CPU the vCPU thread is on.
Guest CPL-0 code is emulated by KVM, whose CPUID reads the vCPU's table on both vendors.

``probe`` finds out, at CPL 3 and at CPL 0, with a throwaway VM per level whose two vCPUs
get tables with marker APIC IDs: each vCPU seeing its own marker, both the same marker (one
table for the whole VM), or the host's APIC ID are told apart.  ``classify`` and the
warning are pure; ``native_cpuid`` runs the instruction in this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from vnet.kvm import cpu, layout
from vnet.kvm.boot import linux
from vnet.kvm.vm import Vcpu, Vm

MARKERS = (0xA0, 0xA1)          # the APIC IDs the probe's two vCPUs are given
SPARE_MARKERS = (0xB0, 0xB1)    # used instead when the host CPU's own APIC ID is a marker
PROBE_PORT = 0x80


class Delivery(Enum):
    PER_VCPU = "each vCPU's own table"
    SHARED = "one table for the whole VM"
    HOST = "the host's own CPUID"
    UNEXPECTED = "neither"


def probe_markers(host_apic_id: int) -> tuple[int, int]:
    return SPARE_MARKERS if host_apic_id in MARKERS else MARKERS


def classify(seen: tuple[int, int], markers: tuple[int, int], host_apic_id: int) -> Delivery:
    """What the APIC IDs the two vCPUs saw (leaf 1 EBX[31:24]) say about the tables."""
    if seen == markers:
        return Delivery.PER_VCPU
    if seen[0] == seen[1] and seen[0] in markers:
        return Delivery.SHARED
    if seen == (host_apic_id, host_apic_id):
        return Delivery.HOST
    return Delivery.UNEXPECTED


def marker_tables(supported: list[cpu.CpuidEntry],
                  markers: tuple[int, int]) -> list[list[cpu.CpuidEntry]]:
    """This VM's CPU model for two vCPUs, each with its marker as leaf 1's APIC ID."""
    tables = []
    for index, marker in enumerate(markers):
        table = cpu.guest_cpuid(supported, index, len(markers))
        tables.append([replace(e, ebx=e.ebx & 0xFFFFFF | marker << 24) if e.function == 1
                       else e for e in table])
    return tables


@dataclass(frozen=True)
class CpuidReport:
    user: Delivery                  # CPUID at CPL 3 (the tiny guest, Linux's processes)
    kernel: Delivery                # CPUID at CPL 0 (a Linux kernel)
    user_seen: tuple[int, int]      # the APIC IDs vCPU 0 and vCPU 1 saw
    kernel_seen: tuple[int, int]
    markers: tuple[int, int]        # the APIC IDs their tables said
    host_cpu: int                   # the host CPU the probe ran on, and its APIC ID
    host_apic_id: int
    vendor: str
    cpuid_faulting: bool            # /proc/cpuinfo has cpuid_fault
    pvm: bool                       # /dev/kvm is PVM (the kvm_pvm module is loaded)

    def warning(self) -> str | None:
        """One line for the runner's log when a guest does not see its own vCPU's CPUID."""
        problems = [problem for mode, delivery, seen in (
            ("user", self.user, self.user_seen), ("kernel", self.kernel, self.kernel_seen))
            if (problem := self._problem(mode, delivery, seen)) is not None]
        if not problems:
            return None
        if self.kernel is Delivery.PER_VCPU:
            problems.append("the guest kernel sees this VM's model")
        return "; ".join(problems)

    def _problem(self, mode: str, delivery: Delivery, seen: tuple[int, int]) -> str | None:
        if delivery is Delivery.PER_VCPU:
            return None
        if delivery is Delivery.HOST:
            faulting = "with" if self.cpuid_faulting else "without"
            under = ", under PVM" if self.pvm else ""
            return (f"CPUID from guest {mode} mode is not intercepted on this host "
                    f"({self.vendor} {faulting} CPUID faulting{under}): guest {mode} code "
                    f"sees the host's CPUID, not its vCPU's")
        if delivery is Delivery.SHARED:
            return (f"KVM on this host answers CPUID from guest {mode} mode from one table "
                    f"for the whole VM (the last KVM_SET_CPUID2 wins): every vCPU has the "
                    f"same APIC ID")
        return (f"CPUID from guest {mode} mode is answered neither from each vCPU's table "
                f"nor by the host: the vCPUs saw APIC IDs {seen[0]:#x} and {seen[1]:#x} "
                f"(theirs: {self.markers[0]:#x}, {self.markers[1]:#x}; the host's "
                f"{self.host_apic_id:#x})")


# cpuid_native(leaf, subleaf, out): the System V ABI passes them in edi, esi, rdx.
_NATIVE_CPUID = bytes([
    0x53,                      # push rbx (callee-saved; CPUID writes it)
    0x89, 0xF8,                # mov eax, edi
    0x89, 0xF1,                # mov ecx, esi
    0x49, 0x89, 0xD0,          # mov r8, rdx
    0x0F, 0xA2,                # cpuid
    0x41, 0x89, 0x00,          # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,    # mov [r8 + 4], ebx
    0x41, 0x89, 0x48, 0x08,    # mov [r8 + 8], ecx
    0x41, 0x89, 0x50, 0x0C,    # mov [r8 + 12], edx
    0x5B,                      # pop rbx
    0xC3,                      # ret
])
_Registers = ctypes.c_uint32 * 4


@functools.cache
def _native_cpuid_function() -> Callable[..., None]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "cannot map a page for CPUID")
    ctypes.memmove(address, _NATIVE_CPUID, len(_NATIVE_CPUID))
    if libc.mprotect(address, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        raise OSError(ctypes.get_errno(), "cannot make the CPUID page executable")
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32,
                                 ctypes.POINTER(_Registers))
    function: Callable[..., None] = prototype(address)
    return function


def native_cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """(eax, ebx, ecx, edx) of CPUID run by this thread, on the CPU it is on: the host's."""
    registers = _Registers()
    _native_cpuid_function()(leaf, subleaf, ctypes.byref(registers))
    return registers[0], registers[1], registers[2], registers[3]


@contextlib.contextmanager
def pinned_to_one_cpu() -> Iterator[int]:
    """Keep the calling thread on one CPU (the lowest it may use), so that the host's CPUID
    it reads and the one a guest on this thread might see are those of the same CPU."""
    allowed = os.sched_getaffinity(0)
    host_cpu = min(allowed)
    os.sched_setaffinity(0, {host_cpu})
    try:
        yield host_cpu
    finally:
        os.sched_setaffinity(0, allowed)


def run_cpuid(vm: Vm, vcpu: Vcpu, leaf: int, subleaf: int = 0, *,
              kernel: bool = False) -> tuple[int, int, int, int]:
    """What the guest gets from ``mov eax, leaf; mov ecx, subleaf; cpuid`` on ``vcpu``, at
    CPL 0 (``kernel``) or CPL 3.  The VM's memory holds ``prepare`` 's tables for that
    level.  Upstream PVM refuses to change the CPL of a vCPU that has run (this host's
    allowed it), so a vCPU keeps to one level and the probe uses a VM per level."""
    code = (b"\xb8" + leaf.to_bytes(4, "little") + b"\xb9" + subleaf.to_bytes(4, "little")
            + b"\x0f\xa2" + bytes([0xE6, PROBE_PORT]) + b"\xeb\xfe")  # out PORT, al; jmp $
    vm.memory[layout.IMAGE_ADDR:layout.IMAGE_ADDR + len(code)] = code
    if kernel:
        vcpu.enter_long_mode_kernel(layout.IMAGE_ADDR, len(linux.build_gdt()) - 1, 0)
    else:
        vcpu.enter_long_mode_user(layout.IMAGE_ADDR, layout.STACK_TOP)
    vcpu.run_until(lambda io: b"stop" if io.port == PROBE_PORT else None)
    regs = vcpu.regs()
    return (regs.rax & 0xFFFFFFFF, regs.rbx & 0xFFFFFFFF, regs.rcx & 0xFFFFFFFF,
            regs.rdx & 0xFFFFFFFF)


def prepare(vm: Vm, *, kernel: bool) -> None:
    """The tables ``run_cpuid`` needs in ``vm``'s memory for CPL 0 or CPL 3 entry."""
    memory = memoryview(vm.memory)
    try:
        if kernel:
            linux.write_entry_tables(memory, vm.memory_size)
        else:
            layout.write_user_mode_tables(memory, vm.memory_size)
    finally:
        memory.release()


def _seen_apic_ids(markers: tuple[int, int], *, kernel: bool) -> tuple[int, int]:
    vm = Vm(layout.MIN_MEMORY)
    try:
        prepare(vm, kernel=kernel)
        vcpus = [vm.add_vcpu(table) for table in marker_tables(vm.supported_cpuid(), markers)]
        first, second = (run_cpuid(vm, vcpu, 1, kernel=kernel)[1] >> 24 for vcpu in vcpus)
        return first, second
    finally:
        vm.close()


def host_has_cpuid_faulting(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    flags = next((line for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), "")
    return "cpuid_fault" in flags.split()


@functools.cache
def probe() -> CpuidReport:
    """How CPUID reaches guests here, found once per process (two tiny VMs, a few ms).
    Raises KvmError or OSError when /dev/kvm cannot run them."""
    with pinned_to_one_cpu() as host_cpu:
        host_apic_id = native_cpuid(1)[1] >> 24
        markers = probe_markers(host_apic_id)
        user_seen = _seen_apic_ids(markers, kernel=False)
        kernel_seen = _seen_apic_ids(markers, kernel=True)
    return CpuidReport(
        user=classify(user_seen, markers, host_apic_id),
        kernel=classify(kernel_seen, markers, host_apic_id),
        user_seen=user_seen, kernel_seen=kernel_seen, markers=markers, host_cpu=host_cpu,
        host_apic_id=host_apic_id, vendor=cpu.vendor([cpu.CpuidEntry(0, 0, 0, *native_cpuid(0))]),
        cpuid_faulting=host_has_cpuid_faulting(), pvm=Path("/sys/module/kvm_pvm").exists())
