"""When the datapath dies, vnetd restarts it and replays the bridges and ports of its lab
records: that touches the datapath's tables and nothing else (no VM is started, no node is
created), and it runs under the daemon's lock, so it never interleaves with an up or a down.

The datapath process and its control calls are replaced by an in-memory table here (no root,
no process); the supervisor's own restart path (``_watch``) is the one under test.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from vnet.daemon import naming
from vnet.daemon.requests import DownRequest
from vnet.daemon.resources import (
    BridgeResource,
    NetnsNodeResource,
    PortResource,
    Resource,
    TapSpec,
    VethSpec,
    VmNodeResource,
)
from vnet.daemon.service import Vnetd
from vnet.daemon.state import LabRecord
from vnet.datapath import protocol
from vnet.switch import VlanOptions


class FakeDatapath:
    """The datapath's tables, driven by control calls; every call yields to the loop once, as
    a real one (a socket round trip) does, so concurrent callers would interleave."""

    def __init__(self) -> None:
        self.bridges: dict[str, set[str]] = {}
        self.calls: list[tuple[str, str]] = []   # (task name, op)
        self.starts = 0

    async def spawn(self) -> FakeChild:
        self.starts += 1
        self.bridges.clear()  # a new datapath process knows nothing
        await asyncio.sleep(0)
        return FakeChild()

    async def call(self, request: protocol.Request) -> Any:
        task = asyncio.current_task()
        self.calls.append((task.get_name() if task else "?", request.op))
        await asyncio.sleep(0)
        if isinstance(request, protocol.AddBridge):
            self.bridges.setdefault(request.bridge, set())
        elif isinstance(request, protocol.DelBridge):
            self.bridges.pop(request.bridge, None)
        elif isinstance(request, protocol.AddPort):
            self.bridges[request.bridge].add(request.name)
        elif isinstance(request, protocol.DelPort):
            self.bridges.get(request.bridge, set()).discard(request.name)
        return {}


class FakeChild:
    """A datapath process that runs until the test ends."""

    pid = 4343
    alive = True

    async def died(self) -> str:
        await asyncio.Event().wait()
        return "never"

    def kill(self) -> None:
        pass


class DeadChild(FakeChild):
    """A datapath process that has just been killed."""

    pid = 4242

    async def died(self) -> str:
        return "was killed by SIGKILL"


def restart_task(daemon: Vnetd, name: str | None = None) -> asyncio.Task[None]:
    """The supervisor watching a datapath that has just died."""
    supervisor = daemon.datapath
    supervisor.policy.start(0.0)
    supervisor.policy.started(0.0)
    return asyncio.create_task(supervisor._watch(DeadChild(), None),  # type: ignore[arg-type]
                               name=name)


async def restarted(daemon: Vnetd, fake: FakeDatapath, task: asyncio.Task[None]) -> None:
    """Until the new datapath is started and replayed (the lock is free again)."""
    for _ in range(1000):
        if fake.starts and not daemon.lock.locked():
            break
        await asyncio.sleep(0)
    task.cancel()


def lab_record(lab: str) -> LabRecord:
    nic = VethSpec("eth0", naming.host_ifname(lab, "c1", "eth0"), "02:00:00:00:00:01",
                   ("10.0.0.1/24",), naming.owner_alias(lab, "c1", "eth0"))
    tap = TapSpec("eth0", naming.host_ifname(lab, "vm1", "eth0"), "02:00:00:00:00:02",
                  "10.0.0.2/24", naming.owner_alias(lab, "vm1", "eth0"))
    resources: list[Resource] = [
        BridgeResource(lab, (VlanOptions(10, 300.0, 1024),)),
        NetnsNodeResource(lab, "c1", naming.netns_name(lab, "c1"), (nic,)),
        VmNodeResource(lab, "vm1", (tap,), 16 << 20, 1, "builtin:tiny", "", "always"),
        PortResource(lab, "c1.eth0", nic.host_ifname, "access", vlan=10, node="c1"),
        PortResource(lab, "vm1.eth0", tap.ifname, "access", vlan=10, node="vm1"),
        PortResource(lab, naming.uplink_port_name("eth2"), "eth2", "access", vlan=10),
    ]
    record = LabRecord(lab, f"/labs/{lab}.yaml")
    record.resources = dict.fromkeys(resources, "ready")
    return record


@pytest.fixture
def vnetd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Vnetd, FakeDatapath,
                                                                       list[str]]:
    """A vnetd with one lab recorded, a fake datapath, and no way to touch the kernel or a
    VM without it being written down in ``touched``."""
    daemon = Vnetd(tmp_path / "vnetd.sock", tmp_path)
    fake = FakeDatapath()
    monkeypatch.setattr(daemon.datapath, "_spawn", fake.spawn)
    monkeypatch.setattr(daemon.datapath, "_prepare_standby", lambda: None)
    monkeypatch.setattr(daemon.datapath.client, "call", fake.call)
    touched: list[str] = []

    class Recorder:
        """A host driver that writes down what it was asked instead of doing it."""

        def __init__(self, kind: str) -> None:
            self.kind = kind

        async def create(self, resource: Resource) -> None:
            touched.append(f"create {resource.kind}")

        async def delete(self, resource: Resource) -> None:
            touched.append(f"delete {resource.kind}")

    for kind in list(daemon.drivers.by_kind):
        if kind not in ("bridge", "port"):  # those are the fake datapath's
            monkeypatch.setitem(daemon.drivers.by_kind, kind, Recorder(kind))
    daemon.store.save(lab_record("lab1"))
    return daemon, fake, touched


def test_a_datapath_restart_replays_bridges_and_ports_and_touches_nothing_else(
        vnetd: tuple[Vnetd, FakeDatapath, list[str]]) -> None:
    daemon, fake, touched = vnetd

    async def scenario() -> None:
        await restarted(daemon, fake, restart_task(daemon))

    asyncio.run(scenario())
    assert fake.starts == 1 and daemon.datapath.restarts == 1
    assert fake.bridges == {"lab1": {"c1.eth0", "vm1.eth0", "@uplink.eth2"}}
    assert [op for _, op in fake.calls] == ["add_bridge"] + ["add_port"] * 3
    assert touched == []  # no VM started (the user may have stopped it), no node re-created


def test_a_datapath_restart_waits_for_the_lock(
        vnetd: tuple[Vnetd, FakeDatapath, list[str]]) -> None:
    """Whoever holds the daemon's lock (an up, a down, vnet vm) finishes before the restarted
    datapath is started and programmed."""
    daemon, fake, _touched = vnetd

    async def scenario() -> None:
        async with daemon.lock:
            restart = restart_task(daemon)
            for _ in range(50):  # let it run as far as it can: the fakes never block
                await asyncio.sleep(0)
            assert (fake.starts, fake.calls) == (0, [])
        await restarted(daemon, fake, restart)
        assert fake.starts == 1 and len(fake.calls) == 4

    asyncio.run(scenario())


def test_a_replay_never_interleaves_with_a_down(
        vnetd: tuple[Vnetd, FakeDatapath, list[str]]) -> None:
    """A down and a datapath restart at the same moment: one runs after the other, and the
    lab that went down leaves nothing in the datapath (unserialised, the replay re-added
    ports the down had just removed, for a lab that no longer existed)."""
    daemon, fake, _touched = vnetd
    daemon.store.save(lab_record("lab2"))

    async def scenario() -> None:
        down = asyncio.create_task(daemon.op_down(DownRequest("lab1")), name="down")
        await asyncio.sleep(0)  # the down takes the lock first ...
        restart = restart_task(daemon, "replay")  # ... and the datapath dies while it runs
        await down
        await restarted(daemon, fake, restart)

    asyncio.run(scenario())
    # whose call each was (the down's own steps may run in tasks of their own: waves)
    order = [task == "replay" for task, _ in fake.calls]
    switches = sum(a != b for a, b in itertools.pairwise(order))
    assert switches <= 1, f"the replay interleaved with the down: {fake.calls}"
    assert fake.bridges == {"lab2": {"c1.eth0", "vm1.eth0", "@uplink.eth2"}}
