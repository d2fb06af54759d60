"""The bus as one more part of vnetd: desired state in, realised state and MACs out.

With ``bus:`` in its config, vnetd runs one ``BusService``.  It keeps a connection to the
broker (``vnet.bus.client``) and a ``BusView`` of everything on it, and:

* realises the desired state of every lab that names this host, through the same path as a
  local ``vnet up`` (``Realiser.realise_part``: preflight, the daemon's lock, the
  reconciler), one lab at a time, the newest generation of each; a tombstone (``vnet down``
  on any host) or a cleared desired topic takes this host's part down;
* publishes this host's status: ``online`` with its epoch, refreshed within its lease, and
  per lab the generation it realised or the error that stopped it (a clean stop says
  ``offline``; the broker says ``lost`` through the Will);
* advertises the MACs of its local node NICs per lab (snapshot and deltas: ``BusView``),
  and the MACs its switch learned on local ports (read from the datapath's MAC table every
  ``learned.POLL_INTERVAL``, bounded per network: ``vnet.daemon.learned``), withdrawn when
  they age out;
* tells the overlay the flood peers and remote MACs of each network, the static plan minus
  the hosts the bus knows to be down, plus MACs learned from alive hosts (``bus_overlay``);
* for ``vnet up``/``vnet down`` of a multi-host lab on this host: publishes the next
  generation and waits until every host of the lab settled (``rollout``).

It never dies silently: an exception in a session is logged, and the service starts a new
session (new connection, new epoch, fresh view rebuilt from the retained state) after an
exponential back-off; the worker that realises labs is restarted the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from vnet.aiotasks import cancel_and_wait
from vnet.bus.client import BusConfig as ClientConfig
from vnet.bus.client import BusEvent, BusStats, Connected, Disconnected, Received
from vnet.bus.errors import BusError
from vnet.bus.liveness import WILL_GRACE
from vnet.bus.messages import DesiredLab, LabDeleted, LabRealised, Message
from vnet.bus.view import BusView, Effects
from vnet.daemon.bus_overlay import (
    NoOverlay,
    Overlay,
    OverlayPlan,
    live_overlay,
    static_overlay_plan,
)
from vnet.daemon.config import BusConfig
from vnet.daemon.learned import (
    DEFAULT_LIMIT,
    POLL_INTERVAL,
    LearnedMacs,
    local_sightings,
    next_poll,
)
from vnet.daemon.overlay_sync import OverlaySync
from vnet.daemon.rollout import HostOutcome, outcomes, summary
from vnet.errors import DaemonError, VnetError
from vnet.topology.model import Topology
from vnet.topology.placement import part_for_host

log = logging.getLogger("vnet.daemon.bus")

ROLLOUT_TIMEOUT = 120.0   # s: generous; a host that is slower is named in the answer
ECHO_TIMEOUT = 10.0       # s for the broker to pass our own desired state back to us
INTERNAL_ERROR = "internal error in vnetd (see its log)"
EPOCH_FILE = "bus-epoch"
FDB_TIMEOUT = 5.0         # s for the datapath to answer one read of a lab's MAC table

ReadFdb = Callable[[str], Awaitable[list[dict[str, Any]]]]   # lab -> the datapath's fdb op


class Bus(Protocol):
    """What the service uses of ``vnet.bus.client.BusClient``."""

    stats: BusStats
    epoch: int

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish_status(self, labs: Mapping[str, LabRealised] | None = None) -> bool: ...

    async def publish(self, message: Message) -> bool: ...

    def __aiter__(self) -> AsyncIterator[BusEvent]: ...


class Realiser(Protocol):
    """vnetd's own reconcile path, for this host's part of a lab."""

    async def realise_part(self, topology: Topology) -> object:
        """Bring this host's part of ``topology`` up (``VnetError`` says why it cannot)."""

    async def remove_part(self, lab: str) -> bool:
        """Take this host's part of a multi-host lab down; False if it had none."""


def client_config(bus: BusConfig, host: str, state_dir: str) -> ClientConfig:
    """The bus client's settings from vnetd's config file (``bus:``)."""
    tls = bus.tls
    return ClientConfig(
        bus.broker.url, bus.topic_root, username=bus.username or host,
        password_file=str(bus.password_file) if bus.password_file else None,
        ca_file=str(tls.ca_file) if tls and tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
        key_file=str(tls.key_file) if tls and tls.key_file else None,
        keepalive=bus.keepalive, epoch_file=f"{state_dir}/{EPOCH_FILE}")


def local_macs(topology: Topology, host: str) -> frozenset[tuple[str, str]]:
    """(network, MAC) of every NIC of this host's nodes: what it advertises in the lab."""
    return frozenset((network, nic.mac) for node in part_for_host(topology, host).nodes
                     for nic in node.nics for network in nic.networks)


class BusService:
    """This host's part in the bus (see module docstring)."""

    def __init__(self, host: str, connect: Callable[[], Bus], realiser: Realiser,
                 overlay: Overlay | None = None, *, plan: OverlayPlan = static_overlay_plan,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 backoff: tuple[float, float] = (0.2, 10.0),
                 will_grace: float = WILL_GRACE, read_fdb: ReadFdb | None = None,
                 learn_interval: float = POLL_INTERVAL,
                 learned_limit: int = DEFAULT_LIMIT) -> None:
        self.host = host
        self.will_grace = will_grace
        self.realiser = realiser
        self.overlay: Overlay = overlay if overlay is not None else NoOverlay()
        self.view = BusView(host, will_grace=will_grace)
        self.bus: Bus | None = None
        self.realised: dict[str, LabRealised] = {}   # this host's status, per lab
        self.since: dict[str, float] = {}            # host -> when its liveness last changed
        self.reconciles = 0
        self.restarts = 0
        self._connect = connect
        self._plan = plan
        self._clock, self._wall = clock, wall
        self._backoff = backoff
        self._pending: dict[str, DesiredLab | LabDeleted | None] = {}
        self._work = asyncio.Event()
        self._rearm = asyncio.Event()
        self._changed = asyncio.Condition()
        self._advertised: dict[str, frozenset[tuple[str, str]]] = {}
        self._read_fdb, self._learn_interval = read_fdb, learn_interval
        self._learned_limit = learned_limit
        self._learned: dict[str, LearnedMacs] = {}    # lab -> its learned MACs advertised
        self._learn_failed: set[str] = set()
        self._learn_plans: dict[str, tuple[int, dict[int, str], dict[str, float]]] = {}
        self._learn_due: dict[str, float] = {}          # lab -> when to read its table next
        self.overlay_sync = OverlaySync(self.overlay)   # one converge at a time per network
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._supervised("bus session", self._session)),
                       loop.create_task(self._supervised("bus worker", self._worker))]

    async def stop(self) -> None:
        """Say ``offline`` and disconnect (no Will), then end the tasks."""
        self._stopping = True
        if self.bus is not None:
            await self.bus.stop()
        await cancel_and_wait(self._tasks)
        await self.overlay_sync.stop()

    async def _supervised(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        delay = self._backoff[0]
        while not self._stopping:
            started = self._clock()
            try:
                await body()
            except Exception:
                log.exception("%s: internal error; starting it again", name)
                self.restarts += 1
            if self._stopping:
                return
            if self._clock() - started > 60:
                delay = self._backoff[0]
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff[1])

    # -- one session: a connection and a view built from what it brings -----------------------

    async def _session(self) -> None:
        view, bus = BusView(self.host, will_grace=self.will_grace), self._connect()
        self.view, self.bus = view, bus
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._ticker(bus, view))]
        if self._read_fdb is not None:
            helpers.append(loop.create_task(self._learner(bus, view)))
        try:
            await bus.start()
            async for event in bus:
                await self._event(bus, view, event)
        finally:
            await cancel_and_wait(helpers)
            await bus.stop()

    async def _event(self, bus: Bus, view: BusView, event: BusEvent) -> None:
        if isinstance(event, Disconnected):
            view.disconnected()
            await self._notify()
            return
        if isinstance(event, Connected):
            effects = view.connected(event.epoch, event.at)
            for lab, macs in sorted(self._advertised.items()):
                for network, mac in sorted(macs):
                    _combine(effects, view.local_learn(lab, network, mac, event.at))
            for lab, learned in sorted(self._learned.items()):   # the snapshot has them too
                for sighting in learned.sightings():
                    _combine(effects, view.local_learn(lab, sighting.network, sighting.mac,
                                                       event.at, sighting.seen))
            await bus.publish_status(self.realised)
        else:
            assert isinstance(event, Received)
            try:
                effects = view.receive(event.message, event.at, retained=event.retained)
            except BusError as err:
                bus.stats.drop(err)
                return
            self._rearm.set()                     # a Will's grace: the ticker's next timer
        await self._apply(bus, view, effects)

    async def _ticker(self, bus: Bus, view: BusView) -> None:
        """``view.tick`` when its next timer is due (an event may bring an earlier one: a
        Will's grace), and at least once a second."""
        regular = self._clock() + 1.0
        while True:
            now = self._clock()
            due = min(view.next_timer(now), regular)
            if due > now:
                self._rearm.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due - now):   # not wait_for: see _poll_learned
                        await self._rearm.wait()
                continue
            regular = now + 1.0
            if not bus.connected:   # its Disconnected may still wait behind other events
                view.disconnected()
            effects = view.tick(now)
            for lab, macs in sorted(self._advertised.items()):   # they never age out here
                for network, mac in sorted(macs):
                    _combine(effects, view.local_learn(lab, network, mac, now))
            await self._apply(bus, view, effects)

    async def _apply(self, bus: Bus, view: BusView, effects: Effects) -> None:
        for message in effects.publish:
            await bus.publish(message)
        for transition in effects.transitions:
            self.since[transition.host] = self._wall()
            log.info("bus: host %s is %s (was %s), epoch %d", transition.host,
                     transition.after or "gone", transition.before or "unknown",
                     transition.epoch)
        for changes in effects.changes:
            for duplicate in changes.duplicates:
                log.warning("bus: MAC %s in %s/%s is claimed by %s at sequence %d",
                            duplicate.mac, duplicate.lab, duplicate.network,
                            ", ".join(duplicate.hosts), duplicate.seq)
            for refused in changes.refusals:
                log.warning("bus: %s claims MAC %s in %s/%s, which the topology places on "
                            "%s; refused", refused.host, refused.mac, refused.lab,
                            refused.network, refused.owner)
        for lab, desired in effects.desired.items():
            self._pending[lab] = desired
            self._work.set()
        await self._sync_overlay(view)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- realising what the bus wants ---------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while self._pending:
                lab = next(iter(self._pending))
                await self._realise(lab, self._pending.pop(lab))

    async def _realise(self, lab: str, desired: DesiredLab | LabDeleted | None) -> None:
        if isinstance(desired, DesiredLab) and not desired.topology.hosts:
            log.warning("bus: lab %s's desired state has no hosts; a lab without hosts is "
                        "realised only by a local vnet up: ignored", lab)
            return
        if isinstance(desired, DesiredLab) and self.host in {h.name for h in
                                                             desired.topology.hosts}:
            async with self.overlay_sync.held(lab):   # then it starts from the static plan
                report = await self._attempt(lab, desired.generation, "realise",
                                             self.realiser.realise_part(desired.topology))
            self.reconciles += 1
            self.realised[lab] = report
            if report.error is None:
                await self._advertise(lab, local_macs(desired.topology, self.host))
        else:   # a tombstone, a cleared topic, or a generation without this host
            generation = (desired.generation if desired is not None
                          else self.realised.get(lab, LabRealised(0)).generation)
            async with self.overlay_sync.held(lab):
                removal = self.realiser.remove_part(lab)
                report = await self._attempt(lab, generation, "take down", removal)
            if report.error is None:
                self.realised.pop(lab, None)
            else:
                self.realised[lab] = report
            self._advertised.pop(lab, None)
            self._learned.pop(lab, None)
            self._learn_plans.pop(lab, None)
            self._learn_due.pop(lab, None)
        if self.bus is not None:
            await self.bus.publish_status(self.realised)
        await self._sync_overlay(self.view)
        await self._notify()

    async def _attempt(self, lab: str, generation: int, what: str,
                       work: Awaitable[Any]) -> LabRealised:
        try:
            await work
        except VnetError as err:
            log.warning("bus: could not %s lab %s generation %d: %s", what, lab, generation,
                        err)
            return LabRealised(generation, str(err))
        except Exception:
            log.exception("bus: could not %s lab %s generation %d", what, lab, generation)
            return LabRealised(generation, INTERNAL_ERROR)
        log.info("bus: %s lab %s generation %d: done", what, lab, generation)
        return LabRealised(generation)

    async def _advertise(self, lab: str, macs: frozenset[tuple[str, str]]) -> None:
        view, now = self.view, self._clock()
        effects = Effects()
        for network, mac in sorted(self._advertised.get(lab, frozenset()) - macs):
            _combine(effects, view.local_forget(lab, network, mac))
        for network, mac in sorted(macs):
            _combine(effects, view.local_learn(lab, network, mac, now))
        self._advertised[lab] = macs
        if self.bus is not None:
            for message in effects.publish:
                await self.bus.publish(message)

    # -- MACs learned on local ports ----------------------------------------------------------

    async def _learner(self, bus: Bus, view: BusView) -> None:
        """Every ``learn_interval``: read each realised lab's MAC table from the datapath and
        advertise what its switch learned on local ports (``vnet.daemon.learned``)."""
        while True:
            await asyncio.sleep(self._learn_interval)
            for lab, desired in sorted(view.desired.items()):
                report = self.realised.get(lab)
                if (report is None or report.error is not None or lab not in self._advertised
                        or report.generation != desired.generation
                        or self._clock() < self._learn_due.get(lab, 0.0)):
                    continue
                try:
                    effects = await self._poll_learned(view, desired)
                    if effects:
                        await self._apply(bus, view, effects)
                except Exception:       # a bug: logged, and the next poll tries again
                    log.exception("bus: lab %s: learned MACs not advertised", lab)

    def _learning_plan(self, desired: DesiredLab) -> tuple[dict[int, str], dict[str, float]]:
        """VLAN -> network and network -> mac_aging of the lab's overlay networks here."""
        cached = self._learn_plans.get(desired.lab)
        if cached is not None and cached[0] == desired.generation:
            return cached[1], cached[2]
        topology = desired.topology
        networks = sorted(self._plan(topology, self.host))
        vlans = {topology.vlan_of(n): n for n in networks}
        aging = {n: topology.network(n).mac_aging for n in networks}
        self._learn_plans[desired.lab] = (desired.generation, vlans, aging)
        return vlans, aging

    async def _poll_learned(self, view: BusView, desired: DesiredLab) -> Effects:
        lab, effects = desired.lab, Effects()
        assert self._read_fdb is not None
        try:
            vlans, aging = self._learning_plan(desired)
            now = self._clock()         # before the read: an entry's age counts from here
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that comes as the read completes, and the learner polled on for ever, so the
            # bus service's stop (and vnetd's) hung.
            async with asyncio.timeout(FDB_TIMEOUT):
                rows = await self._read_fdb(lab)
            self._learn_due[lab] = next_poll(now, len(rows), self._learn_interval)
            sightings = local_sightings(rows, vlans, now)
        except Exception as err:
            if lab not in self._learn_failed:
                self._learn_failed.add(lab)
                log.warning("bus: lab %s: the MACs its switch learned are not read (will "
                            "retry every %.0f s): %s", lab, self._learn_interval,
                            err or type(err).__name__,
                            exc_info=not isinstance(err, VnetError | TimeoutError))
            return effects
        self._learn_failed.discard(lab)
        if view.desired.get(lab) is not desired or lab not in self._advertised:
            return effects              # the lab changed while the datapath answered
        learned = self._learned.setdefault(lab, LearnedMacs(self._learned_limit))
        update = learned.update(sightings, now, aging, self._advertised[lab])
        for network, mac in update.forget:
            _combine(effects, view.local_forget(lab, network, mac))
        for sighting in update.learn:
            _combine(effects, view.local_learn(lab, sighting.network, sighting.mac, now,
                                               sighting.seen))
        for network in update.newly_left_out:
            log.warning("bus: %s/%s: more than %d MACs learned on local ports; the others "
                        "are not advertised until places free (vnet status counts them)",
                        lab, network, learned.limit)
        return effects

    # -- the overlay --------------------------------------------------------------------------

    async def _sync_overlay(self, view: BusView) -> None:
        """Tell the overlay what each realised network's flood peers and remote MACs are
        now; ``OverlaySync`` converges each network to the latest of these, one call at a
        time, and retries a failed one at the next event or tick."""
        down = {peer.host for peer in view.peers if not peer.alive}
        for lab, desired in sorted(view.desired.items()):
            report, topology = self.realised.get(lab), desired.topology
            if (report is None or report.error is not None
                    or report.generation != desired.generation):
                continue
            alive = [h.name for h in topology.hosts if h.name not in down]
            try:
                plan = self._plan(topology, self.host)
            except Exception:
                log.exception("bus: no overlay plan for lab %s", lab)
                continue
            live = live_overlay(topology, plan, alive, view.location.remote_fdb(lab))
            for network, target in sorted(live.items()):
                self.overlay_sync.want(lab, network, target)

    # -- vnet up / vnet down of a multi-host lab ---------------------------------------------

    def knows(self, lab: str) -> bool:
        """Whether the bus holds desired state of ``lab`` (then down goes through it)."""
        return lab in self.view.desired

    def last_generation(self, lab: str) -> int:
        seen = [self.view.generation(lab)]
        seen += [r.generation for name, r in self.realised.items() if name == lab]
        seen += [p.labs[lab].generation for p in self.view.peers if lab in p.labs]
        return max(seen)

    async def publish_up(self, topology: Topology, timeout: float = ROLLOUT_TIMEOUT
                         ) -> dict[str, Any]:
        """Publish ``topology`` as the lab's next generation; wait for every host."""
        lab = topology.name
        generation = self.last_generation(lab) + 1
        await self._publish_desired(DesiredLab(lab, generation, topology))
        return await self._rollout(lab, generation, [h.name for h in topology.hosts],
                                   deleting=False, timeout=timeout)

    async def publish_down(self, lab: str, timeout: float = ROLLOUT_TIMEOUT) -> dict[str, Any]:
        """Publish the lab's tombstone; wait until every host took its part down."""
        desired = self.view.desired.get(lab)
        if desired is None:
            raise DaemonError(f"lab {lab!r} has no desired state on the bus")
        generation = self.last_generation(lab) + 1
        await self._publish_desired(LabDeleted(lab, generation))
        return await self._rollout(lab, generation, [h.name for h in desired.topology.hosts],
                                   deleting=True, timeout=timeout)

    async def _publish_desired(self, message: DesiredLab | LabDeleted) -> None:
        bus = self.bus
        if bus is None or not bus.connected:
            why = bus.stats.last_error if bus is not None else None
            raise DaemonError(f"lab {message.lab}: this vnetd is not connected to the bus"
                              f"{f' ({why})' if why else ''}, so the other hosts cannot be "
                              "told; try again once it is (vnet status shows the bus)")
        refused_before = bus.stats.refused
        if not await bus.publish(message):
            refusal = bus.stats.last_refusal
            if bus.stats.refused > refused_before and refusal is not None:
                raise DaemonError(
                    f"lab {message.lab}: the broker refused generation {message.generation} "
                    f"({refusal.reason}, MQTT reason {refusal.code}): a host's vnetd may "
                    f"publish desired state only where the broker's ACL lets its user "
                    f"{self.host!r} write ROOT/labs/# (docs/bus.md, 'Broker configuration')")
            raise DaemonError(f"lab {message.lab}: publishing generation {message.generation} "
                              f"failed ({bus.stats.last_error or 'the broker did not confirm'})"
                              "; try again")
        if not await self._wait(lambda: self.view.generation(message.lab) >= message.generation,
                                ECHO_TIMEOUT):   # a broker that drops it without a PUBACK code
            raise DaemonError(
                f"lab {message.lab}: the broker did not pass generation {message.generation} "
                f"on within {ECHO_TIMEOUT:.0f} s, so it most likely refused it: a host's vnetd "
                f"may publish desired state only where the broker's ACL lets its user "
                f"{self.host!r} write ROOT/labs/# (docs/bus.md, 'Broker configuration')")

    async def _rollout(self, lab: str, generation: int, hosts: list[str], *, deleting: bool,
                       timeout: float) -> dict[str, Any]:
        started = self._clock()

        def now() -> list[HostOutcome]:
            return outcomes(lab, generation, hosts, self.host, self.realised, self.view.peers,
                            deleting=deleting)

        await self._wait(lambda: all(r.settled for r in now()), timeout)
        results = now()
        if not all(r.ok for r in results):
            raise DaemonError(summary(lab, generation, results, deleting=deleting,
                                      waited=self._clock() - started))
        return {"lab": lab, "generation": generation, "hosts": [r.as_dict() for r in results]}

    async def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(condition)
            except TimeoutError:
                return condition()
        return True

    # -- status -------------------------------------------------------------------------------

    def describe(self, lab: str | None = None) -> dict[str, Any]:
        """The bus part of ``vnet status``: the connection, and every host's liveness and
        realised generations (of ``lab`` only, if given)."""
        def labs(reports: Mapping[str, LabRealised]) -> dict[str, Any]:
            return {name: {"generation": r.generation, "error": r.error}
                    for name, r in sorted(reports.items()) if lab in (None, name)}

        bus = self.bus
        stats = bus.stats.as_dict() if bus is not None else {"state": "starting"}
        hosts = [{"host": self.host, "local": True,
                  "state": "online" if bus is not None and bus.connected else stats["state"],
                  "epoch": bus.epoch if bus is not None else 0, "since": None,
                  "labs": labs(self.realised)}]
        hosts += [{"host": p.host, "local": False, "state": p.state, "epoch": p.epoch,
                   "since": self.since.get(p.host), "labs": labs(p.labs)}
                  for p in self.view.peers]
        desired = {name: {"generation": self.view.generation(name),
                          "deleted": name not in self.view.desired,
                          "hosts": [h.name for h in d.topology.hosts] if d else []}
                   for name in sorted(set(self.view.desired) | set(self.view.deleted))
                   if lab in (None, name) for d in [self.view.desired.get(name)]}
        applied = self.overlay_sync
        overlay = {f"{key[0]}/{key[1]}": {"flood_peers": sorted(peers),
                                          "remote_macs": len(applied.macs.get(key, {}))}
                   for key, peers in sorted(applied.peers.items()) if lab in (None, key[0])}
        learned = {f"{name}/{network}": {**counts, "limit": macs.limit}
                   for name, macs in sorted(self._learned.items()) if lab in (None, name)
                   for network, counts in macs.counts().items()}
        return {"host": self.host, "connection": stats, "hosts": hosts, "desired": desired,
                "overlay": overlay, "learned": learned, "restarts": self.restarts}


def _combine(into: Effects, more: Effects) -> Effects:
    into.changes.extend(more.changes)
    into.transitions.extend(more.transitions)
    into.publish.extend(more.publish)
    into.desired.update(more.desired)
    return into
