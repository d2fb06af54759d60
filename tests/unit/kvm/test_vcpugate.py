"""The vCPU gate's parking logic, with plain threads standing where vCPU threads stand once
KVM_RUN has returned EINTR (the KVM side is tested in tests/integration/kvm)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, cast

from vnet.kvm.vcpugate import VcpuGate
from vnet.kvm.vm import Vcpu


@dataclass
class RunPage:
    immediate_exit: int = 0


@dataclass
class FakeVcpu:
    index: int
    run: RunPage = field(default_factory=RunPage)


def test_pause_parks_every_vcpu_until_resume_and_stop_lets_them_leave() -> None:
    gate = VcpuGate()
    vcpus = [cast(Vcpu, FakeVcpu(i)) for i in range(2)]
    answers: list[bool] = []
    for vcpu in vcpus:
        gate.enter(vcpu)
    gate.request = "pause"  # as pause() does, without signalling these (unregistered) threads

    def interrupted(vcpu: Any) -> None:
        answers.append(gate.interrupted(vcpu))

    threads = [threading.Thread(target=interrupted, args=(v,)) for v in vcpus]
    for thread in threads:
        thread.start()
    assert gate.wait_parked(30)
    assert gate.states() == {0: "paused", 1: "paused"}
    assert all(v.run.immediate_exit == 0 for v in vcpus)
    gate.resume()
    for thread in threads:
        thread.join(30)
    assert answers == [True, True] and gate.states() == {0: "running", 1: "running"}

    gate.request = "stop"
    assert gate.interrupted(vcpus[0]) is False
    gate.leave(vcpus[0])
    assert gate.states() == {1: "running"}


def test_a_vcpu_that_enters_after_a_stop_leaves_at_once() -> None:
    gate = VcpuGate()
    gate.stop()
    vcpu = cast(Vcpu, FakeVcpu(0))
    gate.enter(vcpu)
    assert vcpu.run.immediate_exit == 1  # its first KVM_RUN returns EINTR at once
    assert gate.interrupted(vcpu) is False


def test_wait_parked_gives_up_after_its_timeout() -> None:
    gate = VcpuGate()
    gate.enter(cast(Vcpu, FakeVcpu(0)))
    gate.request = "pause"
    assert gate.wait_parked(0.05) is False  # vCPU 0 never came to park
