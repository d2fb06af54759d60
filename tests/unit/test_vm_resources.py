"""VM nodes become a VmNodeResource and a runner command line (pure, no KVM needed)."""

from __future__ import annotations

from pathlib import Path

from vnet.daemon import naming
from vnet.daemon.resources import VmNodeResource, desired_resources, from_dict, to_dict
from vnet.daemon.vms import VmProcess
from vnet.topology import parse_topology

TOPOLOGY = """
name: vmlab
networks: {office: {vlan: 10}}
nodes:
  vm1:
    kind: vm
    memory: 32M
    cmdline: "console=ttyS0"
    disk: {path: /images/vm1.img, readonly: true}
    restart: always
    nics: [{name: eth0, network: office, ip: 10.10.0.11/24}]
"""


def test_vm_node_resource_and_runner_command(tmp_path: Path) -> None:
    topology = parse_topology(TOPOLOGY, base_dir=tmp_path)
    (vm,) = [r for r in desired_resources(topology) if isinstance(r, VmNodeResource)]
    assert from_dict(to_dict(vm)) == vm
    tap = naming.host_ifname("vmlab", "vm1", "eth0")
    assert vm.taps[0].ifname == tap and vm.memory == 32 << 20 and vm.restart == "always"
    command = VmProcess(vm, tmp_path).command()
    assert command[command.index("--memory") + 1] == str(32 << 20)
    assert command[command.index("--disk") + 1] == "/images/vm1.img,ro"
    assert command[command.index("--cmdline") + 1] == "console=ttyS0"
    nic = command[command.index("--nic") + 1]
    assert nic == f"tap={tap},mac={vm.taps[0].mac},ip=10.10.0.11/24"
    assert command[command.index("--console-log") + 1] == str(tmp_path / "console-vmlab-vm1.log")
