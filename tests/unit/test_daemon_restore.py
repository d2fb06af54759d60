"""vnetd's start against records whose objects are gone, and a refused up (no root).

The datapath is an in-memory fake and every host driver a recorder that can be told what
exists and what fails, as in ``test_datapath_replay``; ``Vnetd`` itself is the real one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_datapath_replay import FakeDatapath, lab_record
from vnet.daemon import preflight
from vnet.daemon.drivers.vm_node import VmNodeDriver
from vnet.daemon.requests import DownRequest, StatusRequest, UpRequest
from vnet.daemon.resources import NetnsNodeResource, Resource, VmNodeResource
from vnet.daemon.service import Vnetd
from vnet.datapath import protocol
from vnet.errors import DaemonError, DatapathError, HostError


class Kernel:
    """What exists, what was done, and what fails, for the recorder drivers."""

    def __init__(self) -> None:
        self.present: set[Resource] = set()
        self.done: list[str] = []
        self.fail: set[tuple[str, str]] = set()   # (verb, lab)


class Recorder:
    def __init__(self, kind: str, kernel: Kernel) -> None:
        self.kind = kind
        self.kernel = kernel

    def _step(self, verb: str, resource: Resource) -> None:
        self.kernel.done.append(f"{verb} {resource.kind} {resource.lab}")
        if (verb, resource.lab) in self.kernel.fail:
            raise HostError(f"cannot {verb} {resource.kind} of {resource.lab}")

    async def create(self, resource: Resource) -> None:
        self._step("create", resource)
        self.kernel.present.add(resource)

    async def restore(self, resource: Resource) -> None:
        self._step("restore", resource)
        self.kernel.present.add(resource)

    async def delete(self, resource: Resource) -> None:
        self._step("delete", resource)
        self.kernel.present.discard(resource)

    async def exists(self, resource: Resource) -> bool:
        return resource in self.kernel.present

    def describe(self, resource: Any) -> dict[str, Any]:
        if isinstance(resource, NetnsNodeResource | VmNodeResource):
            return {"name": resource.node, "kind": resource.kind, "nics": []}
        return {}


class Datapath(FakeDatapath):
    """Opens a port only on a netdev that exists, as the real one (ENODEV otherwise)."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__()
        self.kernel = kernel

    async def call(self, request: protocol.Request) -> Any:
        if isinstance(request, protocol.AddPort) and request.ifname not in self.netdevs():
            raise DatapathError(f"datapath add_port: cannot open port {request.name!r} on "
                                f"{request.ifname!r}: No such device")
        return await super().call(request)

    def netdevs(self) -> set[str]:
        names = {"eth2"}   # the host's uplink
        for r in self.kernel.present:
            if isinstance(r, NetnsNodeResource):
                names.update(nic.host_ifname for nic in r.nics)
            elif isinstance(r, VmNodeResource):
                names.update(tap.ifname for tap in r.taps)
        return names


def vnetd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_when_idle: bool = False
          ) -> tuple[Vnetd, FakeDatapath, Kernel]:
    daemon = Vnetd(tmp_path / "vnetd.sock", tmp_path, exit_when_idle)
    kernel = Kernel()
    fake = Datapath(kernel)
    monkeypatch.setattr(daemon.datapath, "_spawn", fake.spawn)
    monkeypatch.setattr(daemon.datapath, "_prepare_standby", lambda: None)
    monkeypatch.setattr(daemon.datapath.client, "call", fake.call)
    for kind in list(daemon.drivers.by_kind):
        if kind not in ("bridge", "port"):
            monkeypatch.setitem(daemon.drivers.by_kind, kind, Recorder(kind, kernel))

    async def no_runner(vm: VmNodeResource) -> None:
        kernel.done.append(f"start runner {vm.lab}")

    monkeypatch.setattr(daemon.vms, "start", no_runner)
    monkeypatch.setattr(daemon, "_start_vms", lambda: asyncio.sleep(0))
    return daemon, fake, kernel


def test_vnetd_starts_when_a_lab_cannot_be_rebuilt_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lab1's objects are gone and cannot be made again; lab2's are there.  Before the fix
    the first port of lab1 stopped vnetd's start ("No such device"), and lab2 with it."""
    daemon, fake, kernel = vnetd(tmp_path, monkeypatch)
    lab1, lab2 = lab_record("lab1"), lab_record("lab2")
    daemon.store.save(lab1)
    daemon.store.save(lab2)
    kernel.present = {r for r in lab2.resources if r.kind not in ("bridge", "port")}
    kernel.fail = {("restore", "lab1")}

    async def scenario() -> dict[str, Any]:
        await daemon.start()
        try:
            return await daemon.op_status(StatusRequest())
        finally:
            await daemon.stop()

    status = asyncio.run(scenario())
    labs = {lab["name"]: lab for lab in status["labs"]}
    assert labs["lab2"]["failed"] is None and labs["lab2"]["pending"] == []
    assert fake.bridges["lab2"] == {"c1.eth0", "vm1.eth0", "@uplink.eth2"}
    failed = labs["lab1"]["failed"]
    assert failed.startswith("could not be restored at vnetd's start: netns-node lab1/c1: "
                             "cannot restore netns-node of lab1")
    assert "'vnet up /labs/lab1.yaml' brings it back" in failed
    assert "'vnet down --lab lab1' removes" in failed
    assert labs["lab1"]["pending"] == ["netns-node:lab1/c1", "vm-node:lab1/vm1",
                                       "port:lab1/c1.eth0", "port:lab1/vm1.eth0"]
    assert fake.bridges["lab1"] == {"@uplink.eth2"}, "the port that needs nothing rebuilt"
    assert "start runner lab1" not in kernel.done, "a rebuilt VM's runner is left to its state"


def test_a_lab_that_is_all_there_is_kept_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, fake, kernel = vnetd(tmp_path, monkeypatch)
    record = lab_record("lab1")
    daemon.store.save(record)
    kernel.present = set(record.resources)

    async def scenario() -> None:
        await daemon.start()
        await daemon.stop()

    asyncio.run(scenario())
    assert kernel.done == [], "nothing of the kernel's is touched"
    assert fake.bridges == {"lab1": {"c1.eth0", "vm1.eth0", "@uplink.eth2"}}


def refuse(*_args: Any) -> None:
    raise HostError("uplink eth2 does not exist on this host")


UP = UpRequest("name: x\nnetworks: {n: {vlan: 5}}\nnodes: {}\n", "/labs/x.yaml")


@pytest.mark.parametrize("holds_a_lab", [False, True])
def test_a_refused_up_stops_a_vnetd_that_vnet_up_started_and_holds_no_lab(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holds_a_lab: bool) -> None:
    daemon, _fake, _kernel = vnetd(tmp_path, monkeypatch, exit_when_idle=True)
    if holds_a_lab:
        daemon.store.save(lab_record("lab1"))
    monkeypatch.setattr(preflight, "check_host", refuse)

    stops: list[str] = []

    async def stop(everything: bool | None = None) -> None:
        stops.append("stop")

    monkeypatch.setattr(daemon, "stop", stop)

    async def scenario() -> None:
        with pytest.raises(HostError, match="uplink eth2 does not exist"):
            await daemon.op_up(UP)
        await asyncio.sleep(0)  # the stop is decided before the refusal is answered, and
        await asyncio.sleep(0)  # started on the loop's next turn (as after the last down)

    asyncio.run(scenario())
    assert stops == ([] if holds_a_lab else ["stop"])


def test_a_vm_node_restored_gets_its_taps_and_no_runner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vnetd's start starts each VM by its user's recorded choice; the rebuilding of its
    TAPs must not start one the user had stopped."""
    record = lab_record("lab1")
    vm = next(r for r in record.resources if isinstance(r, VmNodeResource))
    done: list[str] = []

    class Vms:
        def warm_up(self) -> None:
            pass

        async def start(self, _vm: VmNodeResource) -> None:
            done.append("runner")

    driver = VmNodeDriver(Vms())  # type: ignore[arg-type]
    monkeypatch.setattr(driver, "create_blocking", lambda _vm: done.append("taps"))
    asyncio.run(driver.restore(vm))
    assert done == ["taps"]
    asyncio.run(driver.create(vm))
    assert done == ["taps", "taps", "runner"]


def test_an_unreadable_record_keeps_neither_vnetd_nor_the_other_labs_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record cut short (a full disk, a hand edit): vnetd starts and restores the others,
    and the lab's own requests say what is wrong with it, not a traceback."""
    daemon, fake, _kernel = vnetd(tmp_path, monkeypatch)
    daemon.store.save(lab_record("lab2"))
    daemon.store.path("lab1").write_text('{"lab": "lab1", "resources": [')

    async def scenario() -> None:
        await daemon.start()
        try:
            with pytest.raises(DaemonError, match=r"the record of lab 'lab1' \(.*lab1.json\) "
                                                  r"cannot be read \(JSONDecodeError"):
                await daemon.op_down(DownRequest("lab1"))
        finally:
            await daemon.stop()

    asyncio.run(scenario())
    assert set(fake.bridges) == {"lab2"}
