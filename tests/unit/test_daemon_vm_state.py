"""A VM its user stopped stays stopped when vnetd starts again; one started runs (no root:
the runners are replaced by a record of what vnetd asked of them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vnet.daemon import naming
from vnet.daemon.requests import VmRequest
from vnet.daemon.resources import TapSpec, VmNodeResource
from vnet.daemon.service import Vnetd
from vnet.daemon.state import LabRecord


def vm(name: str) -> VmNodeResource:
    tap = TapSpec("eth0", naming.host_ifname("lab", name, "eth0"), "02:00:00:00:00:02",
                  None, naming.owner_alias("lab", name, "eth0"))
    return VmNodeResource("lab", name, (tap,), 16 << 20, 1, "builtin:tiny", "", "always")


def vnetd(state_dir: Path, started: list[str]) -> Vnetd:
    """A vnetd on ``state_dir`` whose VM starts are written down in ``started``."""
    daemon = Vnetd(state_dir / "vnetd.sock", state_dir)

    async def start(resource: VmNodeResource) -> None:
        started.append(resource.node)

    daemon.vms.start = start  # type: ignore[method-assign,assignment]
    return daemon


def test_the_users_stop_and_start_outlive_vnetd(tmp_path: Path) -> None:
    first: list[str] = []
    daemon = vnetd(tmp_path, first)
    daemon.store.save(LabRecord("lab", "/lab.yaml", dict.fromkeys([vm("vm1"), vm("vm2")],
                                                                  "ready")))
    asyncio.run(daemon._start_vms())
    assert first == ["vm1", "vm2"]                      # nobody stopped one yet
    asyncio.run(daemon.op_vm(VmRequest("stop", "vm1")))
    record = daemon.store.load("lab")
    assert record is not None and record.vm_run == {"vm1": "stopped"}

    again: list[str] = []
    asyncio.run(vnetd(tmp_path, again)._start_vms())   # vnetd restarted
    assert again == ["vm2"]

    daemon = vnetd(tmp_path, [])
    asyncio.run(daemon.op_vm(VmRequest("start", "vm1")))
    once_more: list[str] = []
    asyncio.run(vnetd(tmp_path, once_more)._start_vms())
    assert once_more == ["vm1", "vm2"]


def test_a_record_without_run_states_starts_every_vm(tmp_path: Path) -> None:
    """Records written before run states were kept have none: every VM runs, as before."""
    started: list[str] = []
    daemon = vnetd(tmp_path, started)
    record = LabRecord("lab", "/lab.yaml", dict.fromkeys([vm("vm1")], "ready"))
    data = record.to_json()
    del data["vm_run"]
    assert LabRecord.from_json(data) == record
    daemon.store.save(record)
    asyncio.run(daemon._start_vms())
    assert started == ["vm1"]
