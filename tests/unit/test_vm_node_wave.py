"""A wave of VM nodes (``reconciler.Staged``): its TAPs' port tables in ONE nft run, the
runners started only after, and only for the VMs whose TAPs are ready (no root, no nft)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from vnet.daemon import reconciler
from vnet.daemon.drivers.vm_node import VmNodeDriver
from vnet.daemon.resources import VmNodeResource, desired_resources
from vnet.errors import HostError
from vnet.host import links, nft
from vnet.topology import parse_topology

TOPOLOGY = """
name: wave
networks: {office: {vlan: 10}}
nodes:
""" + "".join(f"""  vm{i}:
    kind: vm
    memory: 32M
    nics: [{{name: eth0, network: office}}]
""" for i in range(4))


class FakeSupervisor:
    """Records each start with the nft runs made before it; ``fail`` names runners that
    cannot start."""

    def __init__(self, scripts: list[str]) -> None:
        self.scripts = scripts
        self.started: list[tuple[str, int]] = []
        self.fail: set[str] = set()

    def warm_up(self) -> None:
        pass

    async def start(self, vm: VmNodeResource) -> None:
        self.started.append((vm.node, len(self.scripts)))
        if vm.node in self.fail:
            raise HostError(f"runner of {vm.node} did not start")


@pytest.fixture
def wave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Four VMs; nft recorded (refusing any script naming ``bad``'s TAPs); the TAPs
    brought up recorded."""
    vms = [r for r in desired_resources(parse_topology(TOPOLOGY, base_dir=tmp_path))
           if isinstance(r, VmNodeResource)]
    scripts: list[str] = []
    bad: list[str] = []
    up: list[str] = []

    def fake_nft(script: str) -> None:
        scripts.append(script)
        if any(ifname in script for ifname in bad):
            raise HostError("nft refused it")

    monkeypatch.setattr(nft, "nft", fake_nft)
    monkeypatch.setattr(links, "host_iproute", lambda: None)
    monkeypatch.setattr(links, "bring_up_marked", lambda _ipr, ifname: up.append(ifname))
    return vms, bad, scripts, up


def test_the_vm_driver_is_staged() -> None:
    assert isinstance(VmNodeDriver(FakeSupervisor([])), reconciler.Staged)  # type: ignore[arg-type]


def test_a_wave_of_vms_has_its_taps_port_tables_in_one_nft_run_then_its_runners(
        wave: Any) -> None:
    vms, _bad, scripts, up = wave
    supervisor = FakeSupervisor(scripts)
    outcomes = asyncio.run(VmNodeDriver(supervisor).create_together(vms))  # type: ignore[arg-type]
    assert outcomes == [None] * 4
    assert len(scripts) == 1, "one nft transaction for the whole wave"
    assert all(vm.taps[0].ifname in scripts[0] for vm in vms)
    assert up == [vm.taps[0].ifname for vm in vms]
    assert sorted(supervisor.started) == [(vm.node, 1) for vm in vms], \
        "each runner started once, after the wave's nft run"


def test_a_vm_nft_refuses_or_whose_runner_fails_fails_alone(wave: Any) -> None:
    vms, bad, scripts, up = wave
    bad.append(vms[1].taps[0].ifname)
    supervisor = FakeSupervisor(scripts)
    supervisor.fail = {vms[2].node}
    outcomes = asyncio.run(VmNodeDriver(supervisor).create_together(vms))  # type: ignore[arg-type]
    assert outcomes[0] is None and outcomes[3] is None
    assert isinstance(outcomes[1], HostError) and "nft refused" in str(outcomes[1])
    assert isinstance(outcomes[2], HostError) and "did not start" in str(outcomes[2])
    assert len(scripts) == 1 + 4, "the batch, then each VM's tables alone"
    assert vms[1].taps[0].ifname not in up
    assert {node for node, _ in supervisor.started} == {vms[0].node, vms[2].node,
                                                         vms[3].node}, \
        "no runner for a VM whose TAPs are not closed to the host's stack"
