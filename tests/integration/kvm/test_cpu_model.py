"""What a guest sees when it runs CPUID (trapped to KVM, answered from the table the VMM
set) and the MSRs KVM holds for it, on two vCPUs of one VM."""

from __future__ import annotations

import os
import struct

import pytest

from vnet.kvm import layout
from vnet.kvm.cpu import IA32_MISC_ENABLE, MTRR_DEF_TYPE
from vnet.kvm.vm import Vcpu, Vm

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")
PROBE_PORT = 0x80


def guest_cpuid(vm: Vm, vcpu: Vcpu, leaf: int, subleaf: int = 0) -> tuple[int, ...]:
    """Run ``mov eax, leaf; mov ecx, subleaf; cpuid; out 0x80, al`` at CPL 3 and read the
    registers the guest got."""
    code = (b"\xb8" + struct.pack("<I", leaf) + b"\xb9" + struct.pack("<I", subleaf)
            + b"\x0f\xa2" + bytes([0xE6, PROBE_PORT]) + b"\xeb\xfe")
    vm.memory[layout.IMAGE_ADDR:layout.IMAGE_ADDR + len(code)] = code
    vcpu.enter_long_mode_user(layout.IMAGE_ADDR, layout.STACK_TOP)
    assert vcpu.run_until(lambda io: b"stop" if io.port == PROBE_PORT else None) == "stopped"
    regs = vcpu.regs()
    return regs.rax & 0xFFFFFFFF, regs.rbx & 0xFFFFFFFF, regs.rcx & 0xFFFFFFFF, \
        regs.rdx & 0xFFFFFFFF


@pytest.fixture
def vm():
    machine = Vm(layout.MIN_MEMORY * 2)
    mem = memoryview(machine.memory)
    layout.write_user_mode_tables(mem, machine.memory_size)
    mem.release()
    yield machine
    machine.close()


def test_each_vcpu_sees_itself_of_two_and_the_kvm_hypervisor(vm: Vm) -> None:
    vcpus = vm.create_vcpus(2)
    for index, vcpu in enumerate(vcpus):
        _, ebx, ecx, _ = guest_cpuid(vm, vcpu, 1)
        assert ebx >> 24 == index and ebx >> 16 & 0xFF == 2
        assert ecx & 1 << 31, "the hypervisor bit"
        assert not ecx & 1 << 5, "no VMX"
        assert guest_cpuid(vm, vcpu, 0xA) == (0, 0, 0, 0), "no PMU"
        _, *signature = guest_cpuid(vm, vcpu, 0x40000000)
        assert b"".join(r.to_bytes(4, "little") for r in signature) == b"KVMKVMKVM\0\0\0"
        if any(e.function == 0xB for e in vm.supported_cpuid()):
            _, cores, level, x2apic_id = guest_cpuid(vm, vcpu, 0xB, 1)
            assert (cores, level >> 8 & 0xFF, x2apic_id) == (2, 2, index)


def test_boot_msrs_are_held_by_kvm(vm: Vm) -> None:
    vcpu, = vm.create_vcpus(1)
    msrs = vcpu.get_msrs([MTRR_DEF_TYPE, IA32_MISC_ENABLE])
    assert msrs[MTRR_DEF_TYPE] == 0x806, "MTRRs on, default write-back"
    assert msrs[IA32_MISC_ENABLE] & 1
