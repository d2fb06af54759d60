"""Apply a plan: one driver per resource kind, every step journaled before it runs.

``plan(desired, recorded)`` (in ``resources``) is pure and says *what* to delete and create;
``apply`` says *how*, the same way for every kind of resource, so adding a kind (an overlay
tunnel, a bus subscription) means adding a driver, never another branch here.

- A resource is journaled ``pending`` before its driver creates it and ``ready`` after, and
  forgotten only after its driver deleted it: a crash at any point leaves a journal from
  which the next ``apply`` finishes the job (its ``pending`` entries are deleted first).
- A driver that finds its object taken by a stranger raises ``NotOurs`` before making
  anything; that resource is forgotten at once, so the rollback never deletes the stranger's.
- A failed step rolls the change back: what this change created is deleted (newest first),
  what it deleted is created again (oldest first), so the lab is left as it was.  A step that
  cannot be undone is not hidden: it is logged with its traceback and named in the error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vnet.daemon.resources import KIND_ORDER, Plan, Resource
from vnet.errors import NotOurs, VnetError

log = logging.getLogger("vnet.reconciler")


class Driver(Protocol):
    """Realises one kind of resource.  ``create`` refuses to take over what it did not make;
    ``delete`` tolerates a half-created or already-gone resource (it is called again after a
    crash); ``exists`` says whether the resource is there now; ``describe`` is its status."""

    kind: str

    async def create(self, resource: Any) -> None: ...

    async def delete(self, resource: Any) -> None: ...

    async def exists(self, resource: Any) -> bool: ...

    def describe(self, resource: Any) -> dict[str, Any]: ...


class Journal(Protocol):
    """Where ``apply`` writes down each step before taking it (the lab's state file)."""

    def pending(self) -> list[Resource]: ...

    def mark_pending(self, resource: Resource) -> None: ...

    def mark_ready(self, resource: Resource) -> None: ...

    def forget(self, resource: Resource) -> None: ...


class ApplyError(VnetError):
    """A change failed and was rolled back; the text says why and what could not be undone."""


class MissingDriver(VnetError, LookupError):
    """A resource of a kind that no driver realises (a kind added without its driver)."""


@dataclass(frozen=True)
class Applied:
    created: tuple[Resource, ...] = ()
    deleted: tuple[Resource, ...] = ()   # the plan's deletions and crash leftovers


@dataclass
class Drivers:
    """The driver of each resource kind."""

    by_kind: dict[str, Driver] = field(default_factory=dict)

    @classmethod
    def of(cls, drivers: Iterable[Driver]) -> Drivers:
        return cls({driver.kind: driver for driver in drivers})

    def __getitem__(self, resource: Resource) -> Driver:
        try:
            return self.by_kind[resource.kind]
        except KeyError:
            raise MissingDriver(f"no driver for resources of kind {resource.kind!r}") from None


def creation_order(resources: Iterable[Resource]) -> list[Resource]:
    return sorted(resources, key=lambda r: KIND_ORDER[r.kind])


def deletion_order(resources: Iterable[Resource]) -> list[Resource]:
    return sorted(resources, key=lambda r: -KIND_ORDER[r.kind])


async def apply(work: Plan, journal: Journal, drivers: Drivers) -> Applied:
    """Finish the journal's leftovers, then delete and create what ``work`` says.  On
    failure the change is rolled back and ``ApplyError`` (or the cancellation) propagates."""
    stale = deletion_order(journal.pending())
    created: list[Resource] = []
    deleted: list[Resource] = []   # by this change, not crash leftovers: restored on failure
    try:
        for resource in stale:
            await _delete(resource, journal, drivers)
        for resource in work.delete:
            await _delete(resource, journal, drivers)
            deleted.append(resource)
        for resource in work.create:
            journal.mark_pending(resource)
            try:
                await drivers[resource].create(resource)
            except NotOurs:
                journal.forget(resource)   # nothing of it was made: the object is a stranger's
                raise
            journal.mark_ready(resource)
            created.append(resource)
    except BaseException as err:
        problems = await rollback(journal, drivers, created, deleted)
        if not isinstance(err, Exception):
            raise       # cancelled or interrupted: rolled back, and not turned into an error
        if isinstance(err, VnetError):
            reason = str(err)
        else:  # a bug: its traceback goes to the log, not its repr to the user
            log.error("a step failed with an internal error", exc_info=err)
            reason = "internal error in vnetd (see its log)"
        if problems:
            reason += "; and the rollback could not undo: " + "; ".join(problems)
        raise ApplyError(reason) from err
    return Applied(tuple(created), tuple(stale + work.delete))


async def remove_all(resources: Sequence[Resource], journal: Journal, drivers: Drivers) -> int:
    """Delete every resource (``vnet down``), newest kind first, forgetting each once gone."""
    ordered = deletion_order(resources)
    for resource in ordered:
        await _delete(resource, journal, drivers)
    return len(ordered)


async def _delete(resource: Resource, journal: Journal, drivers: Drivers) -> None:
    await drivers[resource].delete(resource)
    journal.forget(resource)


async def rollback(journal: Journal, drivers: Drivers, created: Sequence[Resource],
                   deleted: Sequence[Resource]) -> list[str]:
    """Undo a failed change; returns what could not be undone (each also logged)."""
    problems: list[str] = []
    for resource in deletion_order([*journal.pending(), *created]):
        try:
            await _delete(resource, journal, drivers)
        except Exception as err:
            log.error("rollback could not delete %s; it stays in the journal", resource.key,
                      exc_info=err)
            problems.append(f"deleting {_name(resource)} ({err})")
    for resource in creation_order(deleted):
        journal.mark_pending(resource)
        try:
            await drivers[resource].create(resource)
            journal.mark_ready(resource)
        except Exception as err:
            log.error("rollback could not restore %s", resource.key, exc_info=err)
            problems.append(f"restoring {_name(resource)} ({err})")
            try:
                await _delete(resource, journal, drivers)
            except Exception as again:
                log.error("and could not remove what was half restored of %s; it stays "
                          "pending for the next up or down", resource.key, exc_info=again)
    return problems


def _name(resource: Resource) -> str:
    return f"{resource.kind} {resource.key[1]}"
