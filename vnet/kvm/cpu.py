"""The virtual CPU model every vCPU gets: its CPUID table and its MSRs at boot (pure).

A vCPU starts with an empty CPUID table.  Handing it KVM_GET_SUPPORTED_CPUID as is (what the
runner first did) tells the guest things that are false: the host's APIC IDs and core counts,
a performance-monitoring unit nobody emulates, VMX it cannot use, thermal and power MSRs
that #GP.  Like Firecracker's CPUID normalisation, ``guest_cpuid`` starts from what KVM
supports and makes it describe this VM: the hypervisor bit set, vCPU *i* of *n* in one
package (one thread per core), and the features no VMM here backs cleared.  ``boot_msrs``
are the MSR values a firmware would leave behind: MTRRs on with write-back as the default
(else Linux maps RAM uncached), fast strings on, the syscall MSRs zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Leaf 1 ECX: the hypervisor bit, and what this VMM does not offer (VMX/SMX: no nested
# virtualisation; EST/TM2/PDCM/DTES64/DS-CPL/MONITOR: power, thermal, debug-store and
# MONITOR/MWAIT features whose MSRs or instructions are not emulated).
ECX_HYPERVISOR = 1 << 31
ECX_CLEARED = sum(1 << bit for bit in (2, 3, 4, 5, 6, 7, 8, 15))
# Leaf 1 EDX: DS, ACPI thermal, TM, PBE cleared; HTT says "EBX[23:16] counts CPUs".
EDX_HTT = 1 << 28
EDX_CLEARED = sum(1 << bit for bit in (21, 22, 29, 31))
CLFLUSH_LINE_QWORDS = 8          # 64-byte cache lines, in leaf 1 EBX[15:8]
EXT_ECX_SVM = 1 << 2             # leaf 0x80000001 ECX: AMD's nested virtualisation
LEVEL_SMT, LEVEL_CORE = 1, 2     # leaf 0xB level types
AMD = "AuthenticAMD"

IA32_TSC = 0x10
IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
IA32_MISC_ENABLE = 0x1A0
MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_DEF_TYPE = 0x2FF
MTRR_ENABLE, MTRR_TYPE_WRITE_BACK = 1 << 11, 6
STAR, LSTAR, CSTAR, SYSCALL_MASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
KERNEL_GS_BASE = 0xC0000102


@dataclass(frozen=True)
class CpuidEntry:
    """One ``struct kvm_cpuid_entry2``: the answer to CPUID(function, index)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def vendor(entries: list[CpuidEntry]) -> str:
    leaf0 = next((e for e in entries if e.function == 0), None)
    if leaf0 is None:
        return ""
    return b"".join(r.to_bytes(4, "little") for r in (leaf0.ebx, leaf0.edx, leaf0.ecx)).decode(
        "ascii", "replace")


def core_shift(count: int) -> int:
    """Bits of the APIC ID that number the cores of a package of ``count``."""
    return (count - 1).bit_length()


def guest_cpuid(supported: list[CpuidEntry], vcpu: int, count: int) -> list[CpuidEntry]:
    """The CPUID table of vCPU ``vcpu`` of ``count``, from what KVM supports on this host.

    Topology: one package, ``count`` cores of one thread, APIC ID = vCPU index (as the
    ACPI MADT says).  Features the VMM does not back are cleared, never added."""
    if not 0 <= vcpu < count:
        raise ValueError(f"vCPU {vcpu} of {count}")
    amd = vendor(supported) == AMD
    out: list[CpuidEntry] = []
    for entry in supported:
        leaf = entry.function
        if leaf == 1:
            ebx = vcpu << 24 | count << 16 | CLFLUSH_LINE_QWORDS << 8
            edx = entry.edx & ~EDX_CLEARED & ~EDX_HTT | (EDX_HTT if count > 1 else 0)
            entry = replace(entry, ebx=ebx, ecx=entry.ecx & ~ECX_CLEARED | ECX_HYPERVISOR,
                            edx=edx)
        elif leaf == 4:
            level = entry.eax >> 5 & 0x7
            sharing = count - 1 if level >= 3 else 0   # L3 shared by all, L1/L2 per core
            eax = entry.eax & 0x3FFF | sharing << 14 | (count - 1) << 26
            entry = replace(entry, eax=eax)
        elif leaf == 0xA:   # architectural performance monitoring: no vPMU
            entry = replace(entry, eax=0, ebx=0, ecx=0, edx=0)
        elif leaf in (0xB, 0x1F):
            continue         # rewritten below, from this VM's topology
        elif leaf == 0x80000001:
            entry = replace(entry, ecx=entry.ecx & ~EXT_ECX_SVM)
        elif leaf == 0x80000008 and amd:
            entry = replace(entry, ecx=core_shift(count) << 12 | (count - 1))
        elif leaf == 0x8000001E and amd:
            entry = replace(entry, eax=vcpu, ebx=vcpu, ecx=0)
        out.append(entry)
    if any(e.function == 0xB for e in supported):
        out.extend(topology_leaf(0xB, vcpu, count))
    return out


def topology_leaf(function: int, vcpu: int, count: int) -> list[CpuidEntry]:
    """Leaf 0xB (extended topology): an SMT level of one thread, a core level of ``count``,
    then the terminating invalid level; EDX is the x2APIC ID everywhere."""
    significant_index = 1  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    levels = [(0, 1, LEVEL_SMT), (core_shift(count), count, LEVEL_CORE), (0, 0, 0)]
    return [CpuidEntry(function, index, significant_index, eax=shift, ebx=cpus,
                       ecx=kind << 8 | index, edx=vcpu)
            for index, (shift, cpus, kind) in enumerate(levels)]


def boot_msrs() -> list[tuple[int, int]]:
    """(index, value) of the MSRs set on every vCPU before it first runs."""
    return [(IA32_SYSENTER_CS, 0), (IA32_SYSENTER_ESP, 0), (IA32_SYSENTER_EIP, 0),
            (STAR, 0), (LSTAR, 0), (CSTAR, 0), (SYSCALL_MASK, 0), (KERNEL_GS_BASE, 0),
            (IA32_TSC, 0), (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            (MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK)]
