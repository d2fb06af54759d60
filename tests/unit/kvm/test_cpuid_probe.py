"""Telling how CPUID reaches a guest from what two marked vCPUs saw, and saying so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.kvm.test_cpu import find, host
from vnet.kvm import cpuid_probe, runner
from vnet.kvm.cpuid_probe import (
    MARKERS,
    SPARE_MARKERS,
    CpuidReport,
    Delivery,
    classify,
    marker_tables,
    native_cpuid,
    probe_markers,
)
from vnet.kvm.vm import KvmError

A, B = MARKERS


@pytest.mark.parametrize(("seen", "host_apic_id", "delivery"), [
    ((A, B), 1, Delivery.PER_VCPU),           # each its own marker
    ((A, B), A, Delivery.PER_VCPU),
    ((B, B), 1, Delivery.SHARED),             # the last table set wins for the whole VM
    ((A, A), 1, Delivery.SHARED),             # or the first
    ((1, 1), 1, Delivery.HOST),               # AMD under PVM: the host CPU's own APIC ID
    ((0, 0), 0, Delivery.HOST),
    ((B, A), 1, Delivery.UNEXPECTED),         # swapped
    ((A, 1), 1, Delivery.UNEXPECTED),         # one right, one the host's
    ((0, 1), 1, Delivery.UNEXPECTED),         # the real model's IDs: not the probe's tables
    ((2, 2), 1, Delivery.UNEXPECTED),         # the same ID, but not this host CPU's
])
def test_classify_tells_each_outcome_apart(seen: tuple[int, int], host_apic_id: int,
                                           delivery: Delivery) -> None:
    assert classify(seen, MARKERS, host_apic_id) is delivery


def test_the_markers_never_coincide_with_the_host_cpus_apic_id() -> None:
    assert probe_markers(1) == MARKERS
    for apic_id in MARKERS:
        markers = probe_markers(apic_id)
        assert markers == SPARE_MARKERS and apic_id not in markers
        assert classify((apic_id, apic_id), markers, apic_id) is Delivery.HOST


def test_marker_tables_are_the_cpu_model_with_the_marker_as_apic_id() -> None:
    first, second = marker_tables(host(), MARKERS)
    assert find(first, 1).ebx >> 24 == A and find(second, 1).ebx >> 24 == B
    assert find(first, 1).ebx & 0xFFFFFF == find(second, 1).ebx & 0xFFFFFF == 0x020800
    assert find(first, 0xA).eax == 0, "otherwise the CPU model of vnet.kvm.cpu"
    assert find(second, 0xB, 1).edx == 1


def report(user: Delivery, kernel: Delivery = Delivery.PER_VCPU) -> CpuidReport:
    seen = {Delivery.PER_VCPU: MARKERS, Delivery.SHARED: (B, B), Delivery.HOST: (1, 1),
            Delivery.UNEXPECTED: (0, 1)}
    return CpuidReport(user=user, kernel=kernel, user_seen=seen[user], kernel_seen=seen[kernel],
                       markers=MARKERS, host_cpu=1, host_apic_id=1, vendor="AuthenticAMD",
                       cpuid_faulting=False, pvm=True)


def test_no_warning_where_every_vcpu_sees_its_own_table() -> None:
    assert report(Delivery.PER_VCPU).warning() is None


def test_the_warning_on_amd_under_pvm_names_what_is_affected_and_what_is_not() -> None:
    assert report(Delivery.HOST).warning() == (
        "CPUID from guest user mode is not intercepted on this host (AuthenticAMD without "
        "CPUID faulting, under PVM): guest user code sees the host's CPUID, not its "
        "vCPU's; the guest kernel sees this VM's model")


def test_the_warning_for_a_vm_wide_table_and_for_the_unexplained() -> None:
    shared = report(Delivery.SHARED).warning()
    assert shared is not None and "one table for the whole VM" in shared
    assert "last KVM_SET_CPUID2 wins" in shared
    odd = report(Delivery.PER_VCPU, kernel=Delivery.UNEXPECTED).warning()
    assert odd is not None and "guest kernel mode" in odd and "0x0 and 0x1" in odd
    assert "the guest kernel sees this VM's model" not in odd
    both = report(Delivery.HOST, kernel=Delivery.HOST).warning()
    assert both is not None and "guest user code" in both and "guest kernel code" in both


def test_the_runner_logs_the_warning_once_per_start(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cpuid_probe, "probe", lambda: report(Delivery.HOST))
    runner.report_cpuid_delivery("web")
    assert capsys.readouterr().err == f"vnet-vm web: warning: {report(Delivery.HOST).warning()}\n"
    monkeypatch.setattr(cpuid_probe, "probe", lambda: report(Delivery.PER_VCPU))
    runner.report_cpuid_delivery("web")
    assert capsys.readouterr().err == ""


def test_the_runner_says_when_it_cannot_probe(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def no_kvm() -> CpuidReport:
        raise KvmError("cannot open /dev/kvm (No such file or directory)")

    def refused() -> CpuidReport:
        raise OSError(22, "KVM ioctl 0xc008ae05: Invalid argument")

    monkeypatch.setattr(cpuid_probe, "probe", no_kvm)
    runner.report_cpuid_delivery("web")
    assert capsys.readouterr().err == ("vnet-vm web: warning: cannot tell how CPUID reaches "
                                       "a guest on this host: cannot open /dev/kvm (No such "
                                       "file or directory)\n")
    monkeypatch.setattr(cpuid_probe, "probe", refused)
    runner.report_cpuid_delivery("web")
    assert "Errno" not in capsys.readouterr().err


def initial_apic_ids() -> dict[int, int]:
    """processor -> initial apicid, as /proc/cpuinfo has them."""
    ids, processor = {}, None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            processor = int(value)
        elif key == "initial apicid" and processor is not None:
            ids[processor] = int(value)
    return ids


def test_native_cpuid_is_the_cpu_this_thread_is_pinned_to() -> None:
    """The host side of the comparison, against what the kernel recorded at boot."""
    _, ebx, ecx, edx = native_cpuid(0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)).decode()
    assert f"vendor_id\t: {vendor}" in Path("/proc/cpuinfo").read_text()
    allowed = os.sched_getaffinity(0)
    with cpuid_probe.pinned_to_one_cpu() as cpu:
        assert os.sched_getaffinity(0) == {cpu}
        assert native_cpuid(1)[1] >> 24 == initial_apic_ids()[cpu] & 0xFF
    assert os.sched_getaffinity(0) == allowed, "the thread's CPUs are given back"


def test_cpuid_faulting_is_read_from_the_flags(tmp_path: Path) -> None:
    with_it = tmp_path / "with"
    with_it.write_text("processor\t: 0\nflags\t\t: fpu vme cpuid_fault pti\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu vme cpuid pti\n")
    assert cpuid_probe.host_has_cpuid_faulting(with_it)
    assert not cpuid_probe.host_has_cpuid_faulting(without)
