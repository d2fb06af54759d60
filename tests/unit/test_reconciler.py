"""The reconciler's apply/rollback against fake drivers and an in-memory journal (no root)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vnet.daemon.reconciler import ApplyError, Drivers, apply, remove_all
from vnet.daemon.resources import (
    BridgeResource,
    NatResource,
    Plan,
    PortResource,
    Resource,
)
from vnet.errors import HostError, NotOurs

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

    def mark_pending(self, resource: Resource) -> None:
        self.entries[resource] = "pending"
        self.writes += 1

    def mark_ready(self, resource: Resource) -> None:
        self.entries[resource] = "ready"
        self.writes += 1

    def forget(self, resource: Resource) -> None:
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
