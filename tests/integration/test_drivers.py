"""Every driver's ``exists`` against the real thing: true for each resource a lab brought up,
false for each once the lab is down (a network owns nothing, so it always "exists").

The drivers run in a process of their own inside the test's host namespace, as vnetd's do,
on a copy of the lab's record taken while it was up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_root
from vnet.testing import TestHost

pytestmark = [needs_root,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="needs /dev/kvm")]

# Every kind of resource: bridge, networks, a NAT gateway with its table and dnsmasq, a
# namespace node with a DHCP lease, a VM node, node ports, the gateway's and an uplink's port.
TOPOLOGY = """\
name: drv
networks:
  inside: {vlan: 20, mode: nat, subnet: 192.168.77.0/24,
           dhcp: {range: [192.168.77.100, 192.168.77.150]}}
  lan: {vlan: 30, mode: bridged, uplink: upl0}
  office: {vlan: 10}
nodes:
  n1: {kind: netns, nics: [{name: eth0, network: inside, ip: dhcp},
                           {name: eth1, network: office, ip: 10.9.0.1/24}]}
  vm1: {kind: vm, memory: 16M, nics: [{name: eth0, network: lan, ip: 198.51.100.11/24}]}
"""

PROBE = """
import asyncio, json, sys
from pathlib import Path
from vnet.host import netns
netns.enter_for_good(sys.argv[1])
from vnet.daemon.drivers import host_drivers
from vnet.daemon.state import LabRecord
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.daemon.vms import VmSupervisor

async def main():
    state = Path(sys.argv[2])
    datapath = DatapathSupervisor(state / "datapath.sock", state / "probe.log", None)
    drivers = host_drivers(state, datapath, VmSupervisor(state))
    record = LabRecord.from_json(json.loads(Path(sys.argv[3]).read_text()))
    return {f"{r.kind}:{r.key[1]}": await drivers[r].exists(r) for r in record.resources}

print(json.dumps(asyncio.run(main())))
"""


def probe(host: TestHost, record: Path) -> dict[str, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE, host.name, host.state_dir, str(record)],
                         capture_output=True, text=True, check=True, timeout=120)
    result: dict[str, bool] = json.loads(out.stdout)
    return result


def test_every_driver_knows_whether_its_resource_is_there(vnet_host: TestHost,
                                                          tmp_path: Path) -> None:
    vnet_host.exec(["ip", "link", "add", "upl0", "type", "veth", "peer", "name", "upl0p"],
                   check=True)
    vnet_host.exec(["ip", "link", "set", "upl0", "up"], check=True)
    topology = tmp_path / "drv.yaml"
    topology.write_text(TOPOLOGY)
    vnet_host.up(topology)
    record = tmp_path / "record.json"
    record.write_text((Path(vnet_host.state_dir) / "labs" / "drv.json").read_text())
    up = probe(vnet_host, record)
    kinds = {key.split(":")[0] for key in up}
    assert kinds == {"bridge", "network", "gateway", "nat", "dhcp", "netns-node", "vm-node",
                     "port", "dhcp-lease"}
    assert all(up.values()), [key for key, there in up.items() if not there]
    vnet_host.down("drv")
    down = probe(vnet_host, record)
    assert [key for key, there in down.items() if there] == [
        "network:drv/inside", "network:drv/lan", "network:drv/office"]
