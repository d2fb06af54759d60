"""The reconciler's apply/rollback against fake drivers and an in-memory journal (no root)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vnet.daemon.reconciler import WAVE_WIDTH, ApplyError, Drivers, apply, remove_all, restore
from vnet.daemon.recovery import Rebuild, Recovery, recovery_plan
from vnet.daemon.resources import (
    BridgeResource,
    NatResource,
    NetnsNodeResource,
    Plan,
    PortResource,
    Resource,
)
from vnet.errors import DatapathGone, HostError, NotOurs

BRIDGE = BridgeResource("lab", ())
NAT = NatResource("lab", "table ip vnet-lab {}")
PORT_A = PortResource("lab", "a.eth0", "vnaaaa", "access", vlan=10, node="a")
PORT_B = PortResource("lab", "b.eth0", "vnbbbb", "access", vlan=10, node="b")


class FakeWorld:
    """What exists "in the kernel", the calls made, and which calls fail."""

    def __init__(self) -> None:
        self.present: set[Resource] = set()
        self.calls: list[tuple[str, Resource]] = []
        self.fail: dict[tuple[str, Resource], BaseException] = {}


class FakeDriver:
    def __init__(self, kind: str, world: FakeWorld) -> None:
        self.kind = kind
        self.world = world

    def _step(self, verb: str, resource: Resource) -> None:
        self.world.calls.append((verb, resource))
        if (verb, resource) in self.world.fail:
            raise self.world.fail[(verb, resource)]

    async def create(self, resource: Any) -> None:
        self._step("create", resource)
        self.world.present.add(resource)

    async def delete(self, resource: Any) -> None:
        self._step("delete", resource)
        self.world.present.discard(resource)

    async def exists(self, resource: Any) -> bool:
        return resource in self.world.present

    def describe(self, resource: Any) -> dict[str, Any]:
        return {}


class MemoryJournal:
    def __init__(self, entries: dict[Resource, str] | None = None) -> None:
        self.entries: dict[Resource, str] = dict(entries or {})
        self.writes = 0

    def pending(self) -> list[Resource]:
        return [r for r, s in self.entries.items() if s == "pending"]

    def mark_pending(self, *resources: Resource) -> None:
        self.entries.update(dict.fromkeys(resources, "pending"))
        self.writes += 1

    def mark_ready(self, *resources: Resource) -> None:
        self.entries.update(dict.fromkeys(resources, "ready"))
        self.writes += 1

    def forget(self, *resources: Resource) -> None:
        for resource in resources:
            del self.entries[resource]
        self.writes += 1


def drivers(world: FakeWorld) -> Drivers:
    return Drivers.of(FakeDriver(kind, world) for kind in ("bridge", "nat", "port"))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_creates_in_order_and_journals_each_step_ready() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    applied = run(apply(Plan(create=[BRIDGE, PORT_A, PORT_B]), journal, drivers(world)))
    assert applied.created == (BRIDGE, PORT_A, PORT_B)
    assert world.present == {BRIDGE, PORT_A, PORT_B}
    assert journal.entries == {BRIDGE: "ready", PORT_A: "ready", PORT_B: "ready"}
    assert journal.writes == 6   # pending, then ready, for each


def test_pending_leftovers_of_a_crash_are_deleted_first() -> None:
    world, journal = FakeWorld(), MemoryJournal({BRIDGE: "ready", PORT_A: "pending"})
    world.present = {BRIDGE, PORT_A}
    applied = run(apply(Plan(create=[PORT_B]), journal, drivers(world)))
    assert world.calls[0] == ("delete", PORT_A)
    assert applied.deleted == (PORT_A,)
    assert journal.entries == {BRIDGE: "ready", PORT_B: "ready"}


def test_a_failed_create_rolls_back_to_what_was_there() -> None:
    world = FakeWorld()
    journal = MemoryJournal({BRIDGE: "ready", PORT_A: "ready"})
    world.present = {BRIDGE, PORT_A}
    world.fail[("create", PORT_B)] = HostError("interface vnbbbb already exists")
    work = Plan(delete=[PORT_A], create=[NAT, PORT_B])
    with pytest.raises(ApplyError, match="vnbbbb already exists"):
        run(apply(work, journal, drivers(world)))
    assert world.present == {BRIDGE, PORT_A}, "the deleted port is back, the new NAT gone"
    assert journal.entries == {BRIDGE: "ready", PORT_A: "ready"}


def test_what_the_rollback_cannot_undo_is_named_not_hidden() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    world.fail[("create", PORT_A)] = HostError("no such uplink")
    world.fail[("delete", BRIDGE)] = HostError("datapath gone")
    with pytest.raises(ApplyError, match=r"no such uplink.*could not undo: deleting bridge lab"):
        run(apply(Plan(create=[BRIDGE, PORT_A]), journal, drivers(world)))
    assert journal.entries == {BRIDGE: "ready"}, "what is still there stays journaled"


def test_an_internal_error_is_reported_as_such(caplog: pytest.LogCaptureFixture) -> None:
    world, journal = FakeWorld(), MemoryJournal()
    world.fail[("create", BRIDGE)] = KeyError("vid")
    with pytest.raises(ApplyError, match=r"internal error in vnetd \(see its log\)") as err:
        run(apply(Plan(create=[BRIDGE]), journal, drivers(world)))
    assert "KeyError" not in str(err.value), "a bug's repr is for the log, not the user"
    assert "Traceback" in caplog.text and "KeyError: 'vid'" in caplog.text
    assert journal.entries == {} and world.present == set()


def test_cancellation_rolls_back_and_stays_a_cancellation() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    world.fail[("create", PORT_A)] = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError):
        run(apply(Plan(create=[BRIDGE, PORT_A]), journal, drivers(world)))
    assert journal.entries == {} and world.present == set()


def test_remove_all_deletes_newest_kind_first() -> None:
    world = FakeWorld()
    journal = MemoryJournal({BRIDGE: "ready", PORT_A: "ready", NAT: "ready"})
    world.present = {BRIDGE, PORT_A, NAT}
    assert run(remove_all(list(journal.entries), journal, drivers(world))) == 3
    assert [r for _, r in world.calls] == [PORT_A, NAT, BRIDGE]
    assert journal.entries == {} and world.present == set()


def test_a_kind_without_a_driver_is_a_clear_error() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    only_ports = Drivers.of([FakeDriver("port", world)])
    with pytest.raises(ApplyError, match="no driver for resources of kind 'bridge'"):
        run(apply(Plan(create=[BRIDGE]), journal, only_ports))


def test_a_strangers_object_is_refused_and_never_deleted_by_the_rollback() -> None:
    """A create refused with NotOurs made nothing: the rollback must not delete that name
    (it belongs to someone else), only what the change itself made."""
    world, journal = FakeWorld(), MemoryJournal()
    world.fail[("create", PORT_B)] = NotOurs("interface vnbbbb already exists")
    with pytest.raises(ApplyError, match="vnbbbb already exists"):
        run(apply(Plan(create=[BRIDGE, PORT_A, PORT_B]), journal, drivers(world)))
    assert ("delete", PORT_B) not in world.calls
    assert ("delete", PORT_A) in world.calls and ("delete", BRIDGE) in world.calls
    assert journal.entries == {}


def test_remove_all_goes_on_past_what_it_cannot_delete() -> None:
    """A down removes whatever it can: one deletion that fails leaves only that resource
    recorded, and the error names it."""
    world = FakeWorld()
    journal = MemoryJournal({BRIDGE: "ready", PORT_A: "ready", NAT: "ready"})
    world.present = {BRIDGE, PORT_A, NAT}
    world.fail[("delete", PORT_A)] = HostError("the datapath is not reachable")
    with pytest.raises(ApplyError, match=r"could not remove port lab/a.eth0 \(the datapath"):
        run(remove_all(list(journal.entries), journal, drivers(world)))
    assert world.present == {PORT_A}
    assert journal.entries == {PORT_A: "ready"}, "what is left stays recorded for the next down"


NODE_A = NetnsNodeResource("lab", "a", "vnet-lab-a", ())
NODE_B = NetnsNodeResource("lab", "b", "vnet-lab-b", ())


class FakeRestorer(FakeDriver):
    """A driver with its own way of being rebuilt (a VM node: TAPs, no runner)."""

    async def restore(self, resource: Any) -> None:
        self._step("restore", resource)
        self.world.present.add(resource)


def restore_drivers(world: FakeWorld) -> Drivers:
    return Drivers.of([*drivers(world).by_kind.values(), FakeRestorer("netns-node", world)])


RECORDED: list[Resource] = [BRIDGE, NAT, NODE_A, PORT_A, NODE_B, PORT_B]


def test_restore_rebuilds_what_is_gone_and_journals_it_ready() -> None:
    world = FakeWorld()
    world.present = {NAT, NODE_B}                       # a new datapath; node a vanished
    journal = MemoryJournal(dict.fromkeys(RECORDED, "ready"))
    recovery = recovery_plan(RECORDED, world.present)
    assert run(restore(recovery, journal, restore_drivers(world))) == []
    assert world.present == set(RECORDED)
    assert journal.entries == dict.fromkeys(RECORDED, "ready")
    assert world.calls == [("create", BRIDGE), ("delete", NODE_A), ("restore", NODE_A),
                           ("create", PORT_A), ("create", PORT_B)], \
        "leftovers of node a deleted first; its driver's restore used, not create"


def test_what_cannot_be_rebuilt_stays_pending_with_what_needs_it_and_the_rest_goes_on() -> None:
    world = FakeWorld()
    world.present = {NAT, NODE_B}
    world.fail[("restore", NODE_A)] = HostError("ip netns add vnet-lab-a: out of memory")
    journal = MemoryJournal(dict.fromkeys(RECORDED, "ready"))
    problems = run(restore(recovery_plan(RECORDED, world.present), journal,
                           restore_drivers(world)))
    assert problems == ["netns-node lab/a: ip netns add vnet-lab-a: out of memory"]
    assert ("create", PORT_A) not in world.calls, "a port on a node that is not there"
    assert ("create", PORT_B) in world.calls
    assert journal.pending() == [NODE_A, PORT_A]
    assert world.calls.count(("delete", NODE_A)) == 2, "leftovers, then what was half made"


def test_a_bug_in_a_driver_is_named_as_an_internal_error() -> None:
    world = FakeWorld()
    world.fail[("create", NAT)] = KeyError("ruleset")
    journal = MemoryJournal({NAT: "ready"})
    assert run(restore(Recovery(rebuild=(Rebuild(NAT),)), journal, drivers(world))) == [
        "nat lab: internal error in vnetd (see its log)"]
    assert journal.entries == {NAT: "pending"}


def test_a_resource_left_unfinished_is_not_touched_and_blocks_what_needs_it() -> None:
    """A node pending from an up that did not finish is the next up's or down's to finish;
    a ready port on it cannot be rebuilt now, and that is said."""
    world = FakeWorld()
    journal = MemoryJournal({BRIDGE: "ready", NODE_A: "pending", PORT_A: "ready"})
    ready: list[Resource] = [BRIDGE, PORT_A]
    problems = run(restore(recovery_plan(ready, set(), [NODE_A]), journal,
                           restore_drivers(world)))
    assert problems == ["port lab/a.eth0 needs netns-node lab/a, which an earlier up or down "
                        "left unfinished"]
    assert world.calls == [("create", BRIDGE)]
    assert journal.entries == {BRIDGE: "ready", NODE_A: "pending", PORT_A: "pending"}


def test_a_new_datapath_is_programmed_without_a_journal_write() -> None:
    """The replay after a datapath restart: each write is an fsync, and forwarding waits for
    the replay, so a bridge or port that is added writes nothing (a crash half-way leaves
    it ready, and the next start rebuilds every bridge and port anyway); one that fails is
    written down as pending."""
    world = FakeWorld()
    world.fail[("create", PORT_B)] = HostError("interface vnbbbb does not exist on this host")
    journal = MemoryJournal({BRIDGE: "ready", PORT_A: "ready", PORT_B: "ready"})
    recovery = recovery_plan([BRIDGE, PORT_A, PORT_B], set())
    problems = run(restore(recovery, journal, drivers(world)))
    assert problems == ["port lab/b.eth0: interface vnbbbb does not exist on this host"]
    assert journal.writes == 1 and journal.pending() == [PORT_B]
    assert world.present == {BRIDGE, PORT_A}


def test_a_datapath_that_dies_during_the_replay_leaves_the_records_ready() -> None:
    """The replay into a datapath that dies half-way: what it did not take stays ready, so
    the next datapath's replay adds it (marked pending, it was left out of every later
    replay, and the lab never forwarded again), and it is no problem of the lab's."""
    world = FakeWorld()
    world.fail[("create", PORT_A)] = DatapathGone("the datapath closed the connection")
    world.fail[("create", PORT_B)] = DatapathGone("nothing listens on its control socket")
    journal = MemoryJournal({BRIDGE: "ready", PORT_A: "ready", PORT_B: "ready"})
    recovery = recovery_plan([BRIDGE, PORT_A, PORT_B], set())
    assert run(restore(recovery, journal, drivers(world))) == []
    assert journal.entries == {BRIDGE: "ready", PORT_A: "ready", PORT_B: "ready"}
    assert ("delete", PORT_A) not in world.calls, "nothing half made in a datapath that is gone"


class ConcurrentDriver(FakeDriver):
    """Creates wait at a gate the test opens, so how many run at once can be seen."""

    concurrent = True

    def __init__(self, kind: str, world: FakeWorld) -> None:
        super().__init__(kind, world)
        self.in_flight = 0
        self.most = 0
        self.gate = asyncio.Event()

    async def create(self, resource: Any) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.gate.wait()
            await super().create(resource)
        finally:
            self.in_flight -= 1


PORTS: list[Resource] = [
    PortResource("lab", f"n{i}.eth0", f"vn{i:04x}", "access", vlan=10, node=f"n{i}")
    for i in range(WAVE_WIDTH + 4)]


def wave_drivers(world: FakeWorld) -> tuple[Drivers, ConcurrentDriver]:
    ports = ConcurrentDriver("port", world)
    return Drivers.of([FakeDriver("bridge", world), ports]), ports


async def _opened_when_all_wait(ports: ConcurrentDriver, count: int, work: Any) -> Any:
    """Run ``work``; open the gate once ``count`` creates wait at it together (a reconciler
    that made them one at a time never gets there, and the deadline fails the test)."""
    task = asyncio.ensure_future(work)
    async with asyncio.timeout(10):
        while ports.in_flight < count:
            await asyncio.sleep(0)
    ports.gate.set()
    return await task


def test_a_wave_of_ports_is_made_together_within_the_width_and_journaled_twice() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    drivers_, ports = wave_drivers(world)
    applied = run(_opened_when_all_wait(ports, WAVE_WIDTH, apply(
        Plan(create=[BRIDGE, *PORTS]), journal, drivers_)))
    assert ports.most == WAVE_WIDTH, "never more than the width in flight"
    assert applied.created == (BRIDGE, *PORTS), "created in the plan's order"
    assert journal.entries == dict.fromkeys([BRIDGE, *PORTS], "ready")
    assert journal.writes == 4, "the bridge pending and ready, then the wave's two"


def test_one_failure_in_a_wave_rolls_back_the_rest_of_it() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    drivers_, ports = wave_drivers(world)
    world.fail[("create", PORTS[3])] = HostError("interface vn0003 vanished")
    ports.gate.set()
    with pytest.raises(ApplyError, match="vn0003 vanished"):
        run(apply(Plan(create=[BRIDGE, *PORTS]), journal, drivers_))
    assert world.present == set() and journal.entries == {}
    assert ("delete", PORTS[3]) in world.calls, "the failed one was pending: half made"


def test_a_stranger_in_a_wave_is_forgotten_and_never_deleted() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    drivers_, ports = wave_drivers(world)
    world.fail[("create", PORTS[5])] = NotOurs("interface vn0005 already exists")
    ports.gate.set()
    with pytest.raises(ApplyError, match="vn0005 already exists"):
        run(apply(Plan(create=PORTS), journal, drivers_))
    assert ("delete", PORTS[5]) not in world.calls
    assert world.present == set() and journal.entries == {}


def test_a_cancelled_wave_waits_for_the_steps_in_flight_before_rolling_back() -> None:
    """A step in a thread cannot be stopped: the rollback must come after it, or it would
    delete what the step then makes."""
    async def scenario() -> None:
        world, journal = FakeWorld(), MemoryJournal()
        drivers_, ports = wave_drivers(world)
        task = asyncio.ensure_future(apply(Plan(create=PORTS), journal, drivers_))
        async with asyncio.timeout(10):
            while ports.in_flight < 2:
                await asyncio.sleep(0)
        task.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done(), "the apply waits for its steps in flight"
        ports.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert world.present == set() and journal.entries == {}
        first_delete = next(i for i, (verb, _) in enumerate(world.calls) if verb == "delete")
        assert all(verb == "delete" for verb, _ in world.calls[first_delete:])

    run(scenario())


def test_remove_all_deletes_a_wave_and_keeps_only_what_failed() -> None:
    world = FakeWorld()
    drivers_, _ = wave_drivers(world)
    world.present = set(PORTS)
    journal = MemoryJournal(dict.fromkeys(PORTS, "ready"))
    world.fail[("delete", PORTS[7])] = HostError("the datapath is not reachable")
    with pytest.raises(ApplyError, match=r"could not remove port lab/n7.eth0"):
        run(remove_all(PORTS, journal, drivers_))
    assert world.present == {PORTS[7]} and journal.entries == {PORTS[7]: "ready"}
    assert journal.writes == 1


def test_each_finished_step_of_a_wave_is_reported_to_whoever_listens() -> None:
    from vnet.daemon import progress

    heard: list[progress.Progress] = []

    async def scenario() -> None:
        world, journal = FakeWorld(), MemoryJournal()
        drivers_, ports = wave_drivers(world)
        ports.gate.set()
        token = progress.REPORTER.set(heard.append)
        try:
            await apply(Plan(create=[BRIDGE, *PORTS[:3]]), journal, drivers_)
            await remove_all([BRIDGE, *PORTS[:3]], journal, drivers_)
        finally:
            progress.REPORTER.reset(token)

    run(scenario())
    assert [(p.verb, p.kind, p.done, p.total) for p in heard] == [
        ("making", "bridge", 1, 1), ("making", "port", 1, 3), ("making", "port", 2, 3),
        ("making", "port", 3, 3), ("removing", "port", 1, 3), ("removing", "port", 2, 3),
        ("removing", "port", 3, 3), ("removing", "bridge", 1, 1)]


class StagedDriver(FakeDriver):
    """A ``reconciler.Staged`` driver: the first stage on each, the second once for all
    (``together`` records each call's resources; ``refuse`` names those it fails)."""

    concurrent = True

    def __init__(self, kind: str, world: FakeWorld) -> None:
        super().__init__(kind, world)
        self.together: list[list[Resource]] = []
        self.refuse: set[Resource] = set()

    async def create_first(self, resource: Any) -> None:
        self._step("first", resource)
        self.world.present.add(resource)

    async def create_together(self, resources: Any) -> list[Exception | None]:
        self.together.append(list(resources))
        return [HostError(f"nft refused {r.key[1]}") if r in self.refuse else None
                for r in resources]


def test_a_staged_wave_has_its_second_stage_once_for_all_its_first_made() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    ports = StagedDriver("port", world)
    applied = run(apply(Plan(create=[BRIDGE, *PORTS[:5]]), journal,
                        Drivers.of([FakeDriver("bridge", world), ports])))
    assert ports.together == [PORTS[:5]], "one call for the whole wave, in its order"
    assert ("create", PORTS[0]) not in world.calls, "no resource made alone"
    assert applied.created == (BRIDGE, *PORTS[:5])
    assert journal.entries == dict.fromkeys([BRIDGE, *PORTS[:5]], "ready")


def test_a_staged_wave_leaves_out_of_the_second_stage_what_the_first_failed() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    ports = StagedDriver("port", world)
    world.fail[("first", PORTS[1])] = NotOurs("interface vn0001 already exists")
    ports.refuse = {PORTS[3]}
    with pytest.raises(ApplyError, match="vn0001 already exists"):
        run(apply(Plan(create=PORTS[:5]), journal, Drivers.of([ports])))
    assert ports.together == [[PORTS[0], PORTS[2], PORTS[3], PORTS[4]]]
    assert ("delete", PORTS[1]) not in world.calls, "a stranger's: never deleted"
    assert ("delete", PORTS[3]) in world.calls, "refused in the second stage: half made"
    assert world.present == set() and journal.entries == {}


def test_a_staged_wave_reports_its_end_once_both_stages_are_done() -> None:
    from vnet.daemon import progress

    heard: list[progress.Progress] = []

    async def scenario() -> None:
        world, journal = FakeWorld(), MemoryJournal()
        token = progress.REPORTER.set(heard.append)
        try:
            await apply(Plan(create=PORTS[:3]), journal,
                        Drivers.of([StagedDriver("port", world)]))
        finally:
            progress.REPORTER.reset(token)

    run(scenario())
    assert [(p.done, p.total) for p in heard] == [(1, 3), (2, 3), (3, 3)]


NODES: list[Resource] = [NetnsNodeResource("lab", f"n{i}", f"vnet-lab-n{i}", ())
                         for i in range(4)]


class HeldStagedDriver(StagedDriver):
    """A staged node driver whose second stage waits at a gate the test opens."""

    def __init__(self, kind: str, world: FakeWorld) -> None:
        super().__init__(kind, world)
        self.gate = asyncio.Event()
        self.holding = False

    async def create_together(self, resources: Any) -> list[Exception | None]:
        self.holding = True
        try:
            await self.gate.wait()
        finally:
            self.holding = False
        for r in resources:
            self.world.calls.append(("together", r))
        return await super().create_together(resources)


class LaterPorts(FakeDriver):
    """Ports that need only a node's first stage (``after_first_stage``)."""

    concurrent = True
    after_first_stage = True


def overlap_drivers(world: FakeWorld) -> tuple[Drivers, HeldStagedDriver]:
    nodes = HeldStagedDriver("netns-node", world)
    return Drivers.of([nodes, LaterPorts("port", world)]), nodes


def test_a_wave_of_ports_is_made_beside_the_nodes_second_stage() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    drivers, nodes = overlap_drivers(world)

    async def scenario() -> Any:
        task = asyncio.ensure_future(apply(Plan(create=[*NODES, *PORTS[:4]]), journal, drivers))
        async with asyncio.timeout(10):   # a reconciler waiting for the second stage first
            while sum(verb == "create" for verb, _ in world.calls) < 4:   # never gets here
                await asyncio.sleep(0)
        assert nodes.holding, "the ports were made while the nodes' second stage runs"
        assert all(journal.entries[p] == "pending" for p in PORTS[:4]), "journaled first"
        nodes.gate.set()
        return await task

    applied = run(scenario())
    verbs = [verb for verb, _ in world.calls]
    assert verbs[:4] == ["first"] * 4, "no port before every node's first stage"
    assert set(verbs[4:8]) == {"create"} and verbs[8:] == ["together"] * 4
    assert set(applied.created) == {*NODES, *PORTS[:4]}
    assert journal.entries == dict.fromkeys([*NODES, *PORTS[:4]], "ready")


def test_a_node_refused_in_the_second_stage_rolls_back_the_ports_made_beside_it() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    drivers, nodes = overlap_drivers(world)
    nodes.gate.set()
    nodes.refuse = {NODES[2]}
    with pytest.raises(ApplyError, match="nft refused lab/n2"):
        run(apply(Plan(create=[*NODES, *PORTS[:4]]), journal, drivers))
    assert world.present == set() and journal.entries == {}
    deletes = [r for verb, r in world.calls if verb == "delete"]
    assert set(deletes[:4]) == set(PORTS[:4]), "the ports first, then their nodes"
    assert set(deletes[4:]) == set(NODES)


def test_a_port_failing_beside_the_second_stage_rolls_back_both_waves() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    drivers, nodes = overlap_drivers(world)
    nodes.gate.set()
    world.fail[("create", PORTS[1])] = HostError("interface vn0001 does not exist")
    with pytest.raises(ApplyError, match="vn0001 does not exist"):
        run(apply(Plan(create=[*NODES, *PORTS[:4]]), journal, drivers))
    assert world.present == set() and journal.entries == {}
    assert [verb for verb, _ in world.calls].count("together") == 4, "the second stage ended"


def test_no_port_is_begun_when_a_nodes_first_stage_failed() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    drivers, nodes = overlap_drivers(world)
    nodes.gate.set()
    world.fail[("first", NODES[1])] = HostError("no veth for n1")
    with pytest.raises(ApplyError, match="no veth for n1"):
        run(apply(Plan(create=[*NODES, *PORTS[:4]]), journal, drivers))
    assert not any(verb == "create" for verb, _ in world.calls)
    assert world.present == set() and journal.entries == {}


def test_a_cancelled_overlap_waits_for_the_second_stage_then_rolls_back() -> None:
    world, journal = FakeWorld(), MemoryJournal()
    drivers, nodes = overlap_drivers(world)

    async def scenario() -> None:
        task = asyncio.ensure_future(apply(Plan(create=[*NODES, *PORTS[:4]]), journal, drivers))
        async with asyncio.timeout(10):
            while not nodes.holding:
                await asyncio.sleep(0)
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done(), "the second stage (a thread) is waited for"
        nodes.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert world.present == set() and journal.entries == {}
