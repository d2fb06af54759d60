"""What a guest sees when it runs CPUID on two vCPUs of one VM, and the MSRs KVM holds for it.

A guest kernel's CPUID (CPL 0, emulated by KVM here) is answered from each vCPU's own table
on every host.  Guest user code's (CPL 3) is too where the host CPU faults on CPUID (Intel);
on AMD under PVM it runs natively and sees the host's own CPUID (``vnet.kvm.cpuid_probe``,
docs/kvm.md).  The tests check what is true on each kind of host, and that the runner says
which kind it is on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vnet.kvm import cpuid_probe, layout
from vnet.kvm.cpu import IA32_MISC_ENABLE, MTRR_DEF_TYPE
from vnet.kvm.cpuid_probe import CpuidReport, Delivery, native_cpuid, run_cpuid
from vnet.kvm.vm import Vcpu, Vm

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")
View = Callable[[int, int], tuple[int, int, int, int]]   # (leaf, subleaf) -> registers


@pytest.fixture(scope="module")
def report() -> CpuidReport:
    return cpuid_probe.probe()


@pytest.fixture
def host_cpu() -> Iterator[int]:
    """The test thread, which runs the vCPUs, stays on one host CPU."""
    with cpuid_probe.pinned_to_one_cpu() as number:
        yield number


def make_vm(*, kernel: bool) -> Vm:
    vm = Vm(layout.MIN_MEMORY * 2)
    cpuid_probe.prepare(vm, kernel=kernel)
    return vm


@pytest.fixture
def vm() -> Iterator[Vm]:
    machine = make_vm(kernel=False)
    yield machine
    machine.close()


def has_leaf_0xb(vm: Vm) -> bool:
    return any(e.function == 0xB for e in vm.supported_cpuid())


def view_of(vm: Vm, vcpu: Vcpu, *, kernel: bool) -> View:
    return lambda leaf, subleaf: run_cpuid(vm, vcpu, leaf, subleaf, kernel=kernel)


def assert_own_identity(view: View, index: int, leaf_0xb: bool) -> None:
    """vCPU ``index`` of 2, under KVM, with the features the CPU model clears cleared."""
    _, ebx, ecx, _ = view(1, 0)
    assert (ebx >> 24, ebx >> 16 & 0xFF) == (index, 2), f"vCPU {index}: leaf 1 EBX {ebx:#010x}"
    assert ecx & 1 << 31, "the hypervisor bit"
    assert not ecx & 1 << 5, "no VMX"
    assert view(0xA, 0) == (0, 0, 0, 0), "no PMU"
    _, *signature = view(0x40000000, 0)
    assert b"".join(r.to_bytes(4, "little") for r in signature) == b"KVMKVMKVM\0\0\0"
    if leaf_0xb:
        _, cores, level, x2apic_id = view(0xB, 1)
        assert (cores, level >> 8 & 0xFF, x2apic_id) == (2, 2, index), f"vCPU {index}: 0xB"


def test_the_guest_kernel_on_each_vcpu_sees_itself_of_two_and_the_kvm_hypervisor() -> None:
    """CPL 0, on every host: what a Linux kernel's SMP bring-up reads."""
    vm = make_vm(kernel=True)
    try:
        leaf_0xb = has_leaf_0xb(vm)
        for index, vcpu in enumerate(vm.create_vcpus(2)):
            assert_own_identity(view_of(vm, vcpu, kernel=True), index, leaf_0xb)
    finally:
        vm.close()


def test_each_vcpu_sees_itself_of_two_and_the_kvm_hypervisor(vm: Vm, report: CpuidReport,
                                                             host_cpu: int) -> None:
    """CPL 3: each vCPU's own identity where the host intercepts CPUID there; where it does
    not, exactly the host's own CPUID on the CPU the vCPU runs on, on both vCPUs."""
    leaf_0xb = has_leaf_0xb(vm)
    host_leaf_0xb = native_cpuid(0)[0] >= 0xB
    for index, vcpu in enumerate(vm.create_vcpus(2)):
        view = view_of(vm, vcpu, kernel=False)
        if report.user is Delivery.PER_VCPU:
            assert_own_identity(view, index, leaf_0xb)
        elif report.user is Delivery.HOST:
            assert view(1, 0)[:2] == native_cpuid(1)[:2], f"vCPU {index} on CPU {host_cpu}"
            if host_leaf_0xb:
                assert view(0xB, 1) == native_cpuid(0xB, 1), f"vCPU {index} on CPU {host_cpu}"
        else:
            pytest.fail(f"guest user mode: {report.warning()}")


def test_the_probe_finds_what_the_host_cpu_explains(report: CpuidReport) -> None:
    """The guest kernel always reads its vCPU's table; guest user code does where the host
    CPU has CPUID faulting, and sees the host's CPUID where it has not (docs/kvm.md)."""
    assert report.kernel is Delivery.PER_VCPU, report.warning()
    expected = Delivery.PER_VCPU if report.cpuid_faulting else Delivery.HOST
    assert report.user is expected, (
        f"{report.vendor}, cpuid_fault {'present' if report.cpuid_faulting else 'absent'}: "
        f"guest user mode got {report.user.value} ({report.warning()})")


def test_the_runner_says_when_guest_user_code_sees_the_hosts_cpuid(
        tmp_path: Path, report: CpuidReport) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vnet.kvm.runner", "--name", "t1", "--memory", "16M",
         "--cmdline", "poweroff", "--console-log", str(tmp_path / "console.log")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "VNET_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    expected = report.warning()
    assert warnings == ([] if expected is None else [f"vnet-vm t1: warning: {expected}"])
    if report.user is Delivery.HOST:
        assert "guest user code sees the host's CPUID" in warnings[0]
        assert "the guest kernel sees this VM's model" in warnings[0]


def test_boot_msrs_are_held_by_kvm(vm: Vm) -> None:
    vcpu, = vm.create_vcpus(1)
    msrs = vcpu.get_msrs([MTRR_DEF_TYPE, IA32_MISC_ENABLE])
    assert msrs[MTRR_DEF_TYPE] == 0x806, "MTRRs on, default write-back"
    assert msrs[IA32_MISC_ENABLE] & 1
