"""The vCPU model: CPUID describes this VM, not the host, and only clears features."""

from __future__ import annotations

import pytest

from vnet.kvm.cpu import (
    ECX_HYPERVISOR,
    MTRR_DEF_TYPE,
    CpuidEntry,
    boot_msrs,
    guest_cpuid,
    vendor,
)


def leaf0(name: str) -> CpuidEntry:
    ebx, edx, ecx = (int.from_bytes(name.encode()[i:i + 4], "little") for i in (0, 4, 8))
    return CpuidEntry(0, 0, 0, 0x1F, ebx, ecx, edx)


def host(name: str = "GenuineIntel") -> list[CpuidEntry]:
    """A host's supported table: 8 threads, VMX and the PMU, a shared L3."""
    return [leaf0(name),
            CpuidEntry(1, 0, 0, 0x806EC, 0x07100800, 0xFFFAB2FF, 0xBFEBFBFF),
            CpuidEntry(4, 0, 1, 0x1C004121, 0, 0, 0),          # L1d
            CpuidEntry(4, 3, 1, 0x1C03C163, 0, 0, 0),          # L3, shared by 16
            CpuidEntry(0xA, 0, 0, 0x07300404, 0, 0, 0x603),
            CpuidEntry(0xB, 0, 1, 1, 2, 0x100, 7), CpuidEntry(0xB, 1, 1, 4, 8, 0x201, 7),
            CpuidEntry(0x1F, 0, 1, 1, 2, 0x100, 7),
            CpuidEntry(0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),
            CpuidEntry(0x80000001, 0, 0, 0, 0, 0x121 | 4, 0x2C100800),
            CpuidEntry(0x80000008, 0, 0, 0x3027, 0, 7, 0)]


def find(entries: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry:
    return next(e for e in entries if e.function == function and e.index == index)


def test_leaf_1_names_this_vcpu_of_this_vm_and_the_hypervisor() -> None:
    table = guest_cpuid(host(), 2, 3)
    leaf1 = find(table, 1)
    assert leaf1.ebx >> 24 == 2 and leaf1.ebx >> 16 & 0xFF == 3
    assert leaf1.ecx & ECX_HYPERVISOR
    assert not leaf1.ecx & (1 << 5), "VMX must not be offered: no nested virtualisation"
    assert leaf1.edx & (1 << 28), "HTT: EBX[23:16] counts the CPUs"
    assert not guest_cpuid(host(), 0, 1)[1].edx & (1 << 28)
    assert leaf1.eax == 0x806EC, "family/model/stepping stay the host's"


def test_features_are_only_ever_cleared() -> None:
    original = find(host(), 1)
    leaf1 = find(guest_cpuid(host(), 0, 4), 1)
    assert leaf1.ecx & ~ECX_HYPERVISOR & ~original.ecx == 0
    assert leaf1.edx & ~original.edx == 0


def test_topology_leaves_describe_one_package_of_count_cores() -> None:
    table = guest_cpuid(host(), 1, 3)
    smt, core, end = (find(table, 0xB, i) for i in range(3))
    assert (smt.ebx, smt.ecx >> 8 & 0xFF, smt.edx) == (1, 1, 1)
    assert (core.eax, core.ebx, core.ecx >> 8 & 0xFF, core.edx) == (2, 3, 2, 1)
    assert (end.ebx, end.ecx >> 8 & 0xFF) == (0, 0)
    assert not [e for e in table if e.function == 0x1F], "0x1F would override 0xB"
    assert find(table, 4, 0).eax >> 26 == 2 and find(table, 4, 0).eax >> 14 & 0xFFF == 0
    assert find(table, 4, 3).eax >> 14 & 0xFFF == 2, "the L3 is shared by all 3"
    assert find(table, 4, 3).eax & 0x3FFF == 0x0163, "cache level and type untouched"


def test_no_pmu_no_svm_and_the_kvm_signature_kept() -> None:
    table = guest_cpuid(host(), 0, 1)
    pmu = find(table, 0xA)
    assert (pmu.eax, pmu.ebx, pmu.ecx, pmu.edx) == (0, 0, 0, 0)
    assert not find(table, 0x80000001).ecx & 4
    assert find(table, 0x40000000) == find(host(), 0x40000000)
    assert find(table, 0x80000008).ecx == 7, "Intel: leaf 0x80000008 ECX untouched"


def test_amd_core_count_in_leaf_0x80000008() -> None:
    table = guest_cpuid(host("AuthenticAMD"), 0, 4)
    assert vendor(table) == "AuthenticAMD"
    assert find(table, 0x80000008).ecx == (2 << 12) | 3


def test_a_vcpu_outside_the_vm_is_refused() -> None:
    with pytest.raises(ValueError):
        guest_cpuid(host(), 2, 2)


def test_boot_msrs_turn_mtrrs_on_with_write_back_default() -> None:
    msrs = dict(boot_msrs())
    assert msrs[MTRR_DEF_TYPE] == 1 << 11 | 6
    assert len(msrs) == len(boot_msrs()), "each MSR once"
