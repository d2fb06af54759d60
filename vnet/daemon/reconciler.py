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
- ``restore`` (vnetd's start, a new datapath) has no "as it was" to go back to: it rebuilds
  what a ``recovery.Recovery`` says one resource at a time; one that cannot be made stays
  ``pending`` (so ``vnet status`` lists it and the next up or down finishes it) with what
  needs it, and the others go on.
- ``remove_all`` (``vnet down``) tries every resource even when one cannot be deleted, and
  keeps only those in the journal, so a down removes whatever it can.
- Resources of one kind whose driver says ``concurrent`` (a lab's nodes, its ports) are one
  *wave*: journaled in one write, made (or removed) up to ``WAVE_WIDTH`` at a time, since
  most of a node's cost is waiting on the kernel (RCU grace periods, ``nft``), and journaled
  again in one write.  A wave is waited for whole, also when cancelled: a step running in a
  thread cannot be stopped, and the rollback must not race it.
- A wave whose driver says ``after_first_stage`` (a lab's ports: each needs only its netdev)
  runs beside the second stage of a ``Staged`` wave just before it (the nodes' nft
  transaction and host ends up), once that wave's first stage made every one of its
  resources (which made those netdevs); each wave is journaled as on its own, and a failure
  of either rolls both back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from vnet.daemon import progress
from vnet.daemon.progress import Progress, Verb
from vnet.daemon.recovery import Recovery
from vnet.daemon.resources import KIND_ORDER, Plan, Resource, is_datapath_kind
from vnet.errors import DatapathGone, NotOurs, VnetError

log = logging.getLogger("vnet.reconciler")

WAVE_WIDTH = 32   # steps of one wave in flight at once (blocking ones share the loop's threads)


class Driver(Protocol):
    """Realises one kind of resource.  ``create`` refuses to take over what it did not make;
    ``delete`` tolerates a half-created or already-gone resource (it is called again after a
    crash); ``exists`` says whether the resource is there now; ``describe`` is its status.
    A driver with ``concurrent = True`` may make or delete several of its resources at once
    (they share nothing: a lab's nodes, its ports)."""

    kind: str

    async def create(self, resource: Any) -> None: ...

    async def delete(self, resource: Any) -> None: ...

    async def exists(self, resource: Any) -> bool: ...

    def describe(self, resource: Any) -> dict[str, Any]: ...


@runtime_checkable
class Restorer(Protocol):
    """A driver whose rebuilding from a record differs from its creation by an up: a VM
    node's ``restore`` makes its TAPs and leaves the runner to the run state its user
    chose, where ``create`` starts it."""

    async def restore(self, resource: Any) -> None: ...


@runtime_checkable
class Staged(Protocol):
    """A concurrent driver part of whose creation costs the same for one resource as for a
    whole wave (a wave's port tables in ONE nft transaction: one RCU grace period instead of
    one per node).  A wave of it is made in two stages: ``create_first`` on each resource,
    then ``create_together`` once on those it made (each one's error; None: made); its
    ``create`` of one resource does both."""

    async def create_first(self, resource: Any) -> None: ...

    async def create_together(self, resources: Sequence[Any]) -> list[Exception | None]: ...


class Journal(Protocol):
    """Where ``apply`` writes down each step before taking it (the lab's state file)."""

    def pending(self) -> list[Resource]: ...

    def mark_pending(self, *resources: Resource) -> None: ...

    def mark_ready(self, *resources: Resource) -> None: ...

    def forget(self, *resources: Resource) -> None: ...


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


def waves(ordered: Sequence[Resource], drivers: Drivers) -> Iterator[list[Resource]]:
    """``ordered`` cut into waves: each run of one kind whose driver is ``concurrent``, and
    every other resource on its own, in the order given."""
    wave: list[Resource] = []
    for resource in ordered:
        if wave and (resource.kind != wave[0].kind
                     or not getattr(drivers[resource], "concurrent", False)):
            yield wave
            wave = []
        wave.append(resource)
    if wave:
        yield wave


async def _each(verb: Verb, step: Callable[[Resource], Awaitable[None]],
                wave: Sequence[Resource], last_told: bool = True) -> list[BaseException | None]:
    """``step`` on every resource of ``wave``, ``WAVE_WIDTH`` at a time; what each raised
    (None: it succeeded); each finished step is reported (``vnet.daemon.progress``), but
    the wave's last only if ``last_told`` (else its caller tells when the wave is done).
    Returns only once no step runs any more: a cancellation stops the steps not yet begun
    (they raise ``CancelledError``) and waits for the rest, then propagates."""
    finished = 0

    def done() -> None:
        nonlocal finished
        finished += 1
        if last_told or finished < len(wave):
            progress.report(Progress(verb, wave[0].kind, finished, len(wave)))

    if len(wave) == 1:   # the common case, as before waves: no task, no semaphore
        try:
            await step(wave[0])
        except Exception as err:
            return [err]
        finally:
            done()
        return [None]
    gate = asyncio.Semaphore(WAVE_WIDTH)
    stopping = False

    async def one(resource: Resource) -> None:
        async with gate:
            if stopping:
                raise asyncio.CancelledError
            try:
                await step(resource)
            finally:
                done()

    def stop() -> None:
        nonlocal stopping
        stopping = True

    tasks = [asyncio.ensure_future(one(r)) for r in wave]
    await _wait_out(tasks, on_cancel=stop)
    return [t.exception() if not t.cancelled() else asyncio.CancelledError()
            for t in tasks]


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
        todo = list(waves(work.create, drivers))
        while todo:
            wave = todo.pop(0)
            later = todo[0] if todo and _beside(wave, todo[0], drivers) else None
            journal.mark_pending(*wave)
            outcomes, later_outcomes = await _create(wave, drivers, later, journal)
            failures = [_settle(wave, outcomes, journal, created)]
            if later is not None and later_outcomes is not None:
                todo.pop(0)
                failures.append(_settle(later, later_outcomes, journal, created))
            failure = next((f for f in failures if f is not None), None)
            if failure is not None:
                raise failure
    except BaseException as err:
        problems = await rollback(journal, drivers, created, deleted)
        if not isinstance(err, Exception):
            raise       # cancelled or interrupted: rolled back, and not turned into an error
        reason = _reason(err)
        if problems:
            reason += "; and the rollback could not undo: " + "; ".join(problems)
        raise ApplyError(reason) from err
    return Applied(tuple(created), tuple(stale + work.delete))


def _beside(wave: Sequence[Resource], later: Sequence[Resource], drivers: Drivers) -> bool:
    """Whether ``later`` may run beside ``wave``'s second stage (see module docstring)."""
    return (len(wave) > 1 and isinstance(drivers[wave[0]], Staged)
            and getattr(drivers[later[0]], "after_first_stage", False))


def _settle(wave: Sequence[Resource], outcomes: Sequence[BaseException | None],
            journal: Journal, created: list[Resource]) -> BaseException | None:
    """Journal a wave's outcomes (the made ready, a stranger's forgotten: nothing of it was
    made, so nothing to delete); its first failure, if any."""
    made = [r for r, failed in zip(wave, outcomes, strict=True) if failed is None]
    if made:
        journal.mark_ready(*made)
        created.extend(made)
    strangers = [r for r, failed in zip(wave, outcomes, strict=True)
                 if isinstance(failed, NotOurs)]
    if strangers:
        journal.forget(*strangers)
    return next((f for f in outcomes if f is not None), None)


Outcomes = list[BaseException | None]


async def _create(wave: Sequence[Resource], drivers: Drivers,
                  later: Sequence[Resource] | None = None, journal: Journal | None = None
                  ) -> tuple[Outcomes, Outcomes | None]:
    """Make a wave: each resource on its own, or a ``Staged`` driver's two stages (the
    second once for all that the first made; a failure at either stage is that resource's
    outcome, and what it half made is rolled back as any failed step's).  ``later`` (a wave
    that needs only what the first stage makes) is journaled pending and made beside the
    second stage if the first made everything; its outcomes, or None if it was not begun."""
    driver = drivers[wave[0]]
    started = time.monotonic()
    if len(wave) == 1 or not isinstance(driver, Staged):
        outcomes = await _each("making", lambda r: drivers[r].create(r), wave)
        _log_made(wave, started)
        return outcomes, None
    outcomes = list(await _each("making", driver.create_first, wave, last_told=False))
    made = [i for i, failed in enumerate(outcomes) if failed is None]
    first = time.monotonic()

    def told() -> None:   # the wave's end, when its second stage ends (the later may run on)
        log.debug("%s: first stage %.3f s, together %.3f s", wave[0].kind, first - started,
                  time.monotonic() - first)
        progress.report(Progress("making", wave[0].kind, len(wave), len(wave)))
        _log_made(wave, started)

    if not made:
        told()
        return outcomes, None

    async def second_stage() -> list[Exception | None]:
        try:
            return await driver.create_together([wave[i] for i in made])
        finally:
            told()

    second = asyncio.ensure_future(second_stage())
    beside: asyncio.Future[Outcomes] | None = None
    if later is not None and journal is not None and len(made) == len(wave):
        journal.mark_pending(*later)
        beside = asyncio.ensure_future(_made_later(later, drivers))

    def stop_later() -> None:   # the second stage's thread cannot be stopped
        if beside is not None:
            beside.cancel()   # the later wave waits for the steps it has begun

    await _wait_out([second] if beside is None else [second, beside], stop_later)
    for i, refused in zip(made, _whole_outcome(second, len(made)), strict=True):
        outcomes[i] = refused
    return outcomes, None if beside is None else beside.result()


async def _made_later(wave: Sequence[Resource], drivers: Drivers) -> Outcomes:
    started = time.monotonic()
    outcomes = await _each("making", lambda r: drivers[r].create(r), wave)
    _log_made(wave, started, " (beside the last wave's second stage)")
    return outcomes


def _log_made(wave: Sequence[Resource], started: float, how: str = "") -> None:
    log.debug("made %d %s in %.3f s%s", len(wave), wave[0].kind, time.monotonic() - started,
              how)


async def _wait_out(tasks: Sequence[asyncio.Future[Any]],
                    on_cancel: Callable[[], None] = lambda: None) -> None:
    """Wait until every task is done, also when cancelled meanwhile (a step's thread cannot
    be stopped, and a rollback must not race it: ``on_cancel`` is told at once), then
    propagate that cancellation."""
    cancelled = False
    while not all(t.done() for t in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            cancelled = True
            on_cancel()
    if cancelled:
        raise asyncio.CancelledError


def _whole_outcome(task: asyncio.Future[list[Exception | None]], count: int
                   ) -> list[Exception | None]:
    """A finished second stage's outcomes; one that raised failed all ``count``."""
    if task.cancelled():
        raise asyncio.CancelledError
    failure = task.exception()
    if failure is not None:
        if not isinstance(failure, Exception):
            raise failure
        return [failure] * count
    return task.result()


async def remove_all(resources: Sequence[Resource], journal: Journal, drivers: Drivers) -> int:
    """Delete every resource (``vnet down``), newest kind first, forgetting each once gone.
    One that cannot be deleted stays in the journal and the others are still deleted; the
    ``ApplyError`` then names what is left, for the next down to finish."""
    ordered = deletion_order(resources)
    problems = []
    for wave in waves(ordered, drivers):
        outcomes = await _each("removing", lambda r: drivers[r].delete(r), wave)
        gone = [r for r, failed in zip(wave, outcomes, strict=True) if failed is None]
        if gone:
            journal.forget(*gone)
        problems += [f"{_name(r)} ({_reason(failed)})" for r, failed
                     in zip(wave, outcomes, strict=True) if isinstance(failed, Exception)]
        if any(f is not None and not isinstance(f, Exception) for f in outcomes):
            raise asyncio.CancelledError
    if problems:
        raise ApplyError(f"could not remove {'; '.join(problems)}; the rest is removed, and "
                         f"what is left stays recorded: run the down again once that is fixed")
    return len(ordered)


async def restore(recovery: Recovery, journal: Journal, drivers: Drivers) -> list[str]:
    """Rebuild what ``recovery`` says, each resource on its own: what is left of it is
    deleted (a namespace's stale file, a dead dnsmasq's pid file), then it is made again.
    Returns what could not be rebuilt, in words; those resources, and what needs them,
    stay ``pending``.  The journal's ``pending`` resources are not touched (the next up or
    down finishes them), and what needs one of them is not rebuilt either."""
    unfinished = set(journal.pending())
    lost: set[Resource] = set(unfinished)
    problems: list[str] = []
    for step in recovery.rebuild:
        resource = step.resource
        waiting = [r for r in step.needs if r in lost]
        if waiting:
            journal.mark_pending(resource)
            lost.add(resource)
            if any(r in unfinished for r in waiting):
                problems.append(f"{_name(resource)} needs {', '.join(_name(r) for r in waiting)}"
                                f", which an earlier up or down left unfinished")
            continue   # a failure it waits for is named already
        driver = drivers[resource]
        if step.clear:   # journaled first, as every change; a bridge or a port in a new
            journal.mark_pending(resource)   # datapath is rebuilt by any next start anyway
        try:
            if step.clear:
                await driver.delete(resource)
            if isinstance(driver, Restorer):
                await driver.restore(resource)
            else:
                await driver.create(resource)
        except Exception as err:
            if isinstance(err, DatapathGone) and is_datapath_kind(resource):
                # Not the lab's fault, and not pending (that would keep it out of the
                # replay): the next datapath is given every ready bridge and port.
                log.warning("%s is not in the datapath: %s; the next datapath gets it",
                            _name(resource), err)
                if step.clear:
                    journal.mark_ready(resource)
                continue
            journal.mark_pending(resource)
            lost.add(resource)
            problems.append(f"{_name(resource)}: {_reason(err)}")
            log.error("could not rebuild %s", problems[-1])
            try:
                await driver.delete(resource)   # what was half made; it stays pending anyway
            except Exception as again:
                log.error("and could not remove what was half made of %s", resource.key,
                          exc_info=again)
            continue
        if step.clear:
            journal.mark_ready(resource)
    return problems


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


def _reason(err: Exception) -> str:
    """A failed step in the user's words: a ``VnetError`` says it; anything else is a bug,
    whose traceback goes to the log and not its repr to the user."""
    if isinstance(err, VnetError):
        return str(err)
    log.error("a step failed with an internal error", exc_info=err)
    return "internal error in vnetd (see its log)"


def _name(resource: Resource) -> str:
    return f"{resource.kind} {resource.key[1]}"
