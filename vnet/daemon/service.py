"""vnetd: owns the desired state of its host's labs and reconciles the kernel to it.

The daemon composes its parts and keeps their lifecycle: the lab records (``state``) and the
one lock that serialises changes, the drivers of each resource kind (``drivers``), the
reconciler that applies a plan through them (``reconciler``), the datapath and VM
supervisors, the API server (``api``) and the status renderer (``status``).  Each ``op_*``
handler is one API operation; its request was checked at the edge (``requests``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from vnet import __version__
from vnet.bus.client import open_bus
from vnet.daemon import capture, metrics, naming, preflight, sessions, tracing
from vnet.daemon.adoption import VmAction, stale, vm_action
from vnet.daemon.api import ApiServer, Streaming
from vnet.daemon.attach import NodeView
from vnet.daemon.audit import FILE_NAME as AUDIT_FILE
from vnet.daemon.audit import AuditLog
from vnet.daemon.bus_overlay import DriverOverlay
from vnet.daemon.bus_service import BusService, client_config
from vnet.daemon.config import AccessConfig, BusConfig, MetricsConfig
from vnet.daemon.drivers import host_drivers
from vnet.daemon.metricsserver import MetricsServer
from vnet.daemon.reconciler import apply, remove_all, restore
from vnet.daemon.recovery import recovery_plan
from vnet.daemon.requests import (
    CaptureRequest,
    ConsoleRequest,
    DownRequest,
    FdbRequest,
    NodeRequest,
    PingRequest,
    ShutdownRequest,
    StatusRequest,
    TraceRequest,
    UpRequest,
    VmRequest,
)
from vnet.daemon.resources import (
    NetnsNodeResource,
    OverlayResource,
    Resource,
    VmNodeResource,
    desired_resources,
    is_datapath_kind,
    keep_recorded_namespaces,
    plan,
)
from vnet.daemon.state import LabRecord, RecordJournal, StateStore
from vnet.daemon.status import lab_status
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.daemon.vms import VmSupervisor
from vnet.datapath import protocol
from vnet.errors import DaemonError, DatapathError
from vnet.topology import Topology, parse_topology

log = logging.getLogger("vnet.daemon")
CONSOLE_LOG_MAX = 1 << 20   # bytes of a console log sent to `vnet console` (its tail)

SCRAPE_DATAPATH_TIMEOUT = 3.0   # s a scrape waits for the datapath before it shows the last
                                # counters read (and vnet_datapath_up 0)


class Vnetd:
    def __init__(self, socket_path: Path, state_dir: Path, exit_when_idle: bool = False,
                 datapath_python: str = sys.executable, *, host: str | None = None,
                 bus: BusConfig | None = None, access: AccessConfig | None = None,
                 config_file: Path | None = None, stop_all: bool = False,
                 netns_prefix: str = naming.NETNS_PREFIX,
                 metrics_config: MetricsConfig | None = None) -> None:
        """``stop_all``: a stop (SIGTERM) stops the datapath and VM runners too; by
        default they keep running for the next vnetd to adopt (``docs/service.md``).
        ``netns_prefix``: of new nodes' namespaces; a recorded node keeps its name.
        ``metrics_config``: serve Prometheus metrics there (None: no endpoint)."""
        self.socket_path = socket_path
        self.stop_all = stop_all
        self.host = host
        self.netns_prefix = netns_prefix
        self.state_dir = state_dir
        self.exit_when_idle = exit_when_idle
        self.store = StateStore(state_dir, netns_prefix)
        self.lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self.datapath = DatapathSupervisor(state_dir / "datapath.sock",
                                           state_dir / "datapath.log", self.program_datapath,
                                           datapath_python, lock=self.lock)
        self.vms = VmSupervisor(state_dir)
        self.drivers = host_drivers(state_dir, self.datapath, self.vms)
        self.api = ApiServer(socket_path, {
            "ping": self.op_ping, "up": self.op_up, "down": self.op_down,
            "status": self.op_status, "fdb": self.op_fdb, "node": self.op_node,
            "vm": self.op_vm, "trace": self.op_trace, "capture": self.op_capture,
            "shutdown": self.op_shutdown, "console": self.op_console_log},
            access_config=access, audit=AuditLog(state_dir / AUDIT_FILE),
            config_file=config_file, sessions={
                "exec": lambda request, peer, channel, record: sessions.run_exec(
                    request, peer, channel, self._node_view, record),
                "console.attach": lambda request, peer, channel, record:
                    sessions.run_console_attach(request, channel, self._node_view, record)})
        self.failures: dict[str, str] = {}   # lab -> why it is not all there (vnet status)
        self.metrics = (MetricsServer(metrics_config.listen, self.metrics_snapshot)
                        if metrics_config is not None else None)
        self.bus: BusService | None = None
        if bus is not None:
            if host is None:
                raise DaemonError("a vnetd with a bus needs its host name (host: in its config)")
            settings = client_config(bus, host, str(state_dir))
            self.bus = BusService(host, lambda: open_bus(settings, host), realiser=self,
                                  overlay=DriverOverlay(self._recorded_overlay),
                                  read_fdb=self._read_fdb)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.metrics is not None:
            await self.metrics.start()   # first: an address it cannot have changes nothing
        async with self.lock:
            await self.datapath.start()     # adopts the one an earlier vnetd left running
            await self._restore_labs()
            if self.datapath.adopted:
                await self._remove_stale()
            await self._start_vms()
        await self.api.start()
        if self.bus is not None:
            await self.bus.start()     # connects in the background: start does not wait
        log.info("vnetd %s listening on %s, state in %s", __version__, self.socket_path,
                 self.state_dir)

    async def _restore_labs(self) -> None:
        """Make each lab what its record says again, from what the kernel really has: after
        a reboot (or anyone's hand) its namespaces, links, TAPs, tables and dnsmasqs may be
        gone, and the new datapath has no bridge or port.  What is missing is rebuilt
        (``recovery``); a lab that cannot be rebuilt whole is marked failed, with why, and
        the others, and vnetd, start all the same.  An adopted datapath is given its
        bridges and ports again, which changes only what differs from the records."""
        adopted = self.datapath.adopted
        for record in self.store.load_all():
            try:
                ready = record.ready()
                present = [r for r in ready if not is_datapath_kind(r) and await self._exists(r)]
                recovery = recovery_plan(ready, present, record.pending(), adopted=adopted)
                gone = [f"{r.kind} {r.key[1]}" for r in ready
                        if not is_datapath_kind(r) and r not in present]
                if gone:
                    log.warning("lab %s: gone from the kernel while vnetd was away: %s; "
                                "rebuilding them", record.lab, ", ".join(gone))
                problems = await restore(recovery, RecordJournal(self.store, record),
                                         self.drivers)
            except Exception:   # a bug: it must not keep vnetd (and every other lab) down
                log.exception("restoring lab %s failed", record.lab)
                problems = ["internal error in vnetd (see its log)"]
            self._note_failure(record.lab, problems, record.source, "at vnetd's start")

    async def _exists(self, resource: Resource) -> bool:
        try:
            return await self.drivers[resource].exists(resource)
        except Exception as err:  # whatever cannot be looked at is rebuilt
            log.warning("cannot tell whether %s exists (%s); rebuilding it", resource.key, err)
            return False

    def _note_failure(self, lab: str, problems: list[str], source: str, when: str) -> None:
        if not problems:
            return
        how = f"'vnet up {source}'" if source else "'vnet up FILE'"
        self.failures[lab] = (
            f"could not be restored {when}: {'; '.join(problems)}; once that is fixed, {how} "
            f"brings it back, and 'vnet down --lab {lab}' removes what there is of it")
        log.error("lab %s %s", lab, self.failures[lab])

    async def program_datapath(self) -> None:
        """Give a (new) datapath every bridge and port the records say are realised.

        The datapath's tables and nothing else: a VM's state changes only by the user or its
        restart policy, so a datapath restart must not start one that was stopped.  Called
        with the lock held (by the supervisor when it restarts the datapath), so no up, down
        or ``vnet vm`` sees a half-programmed datapath or races the replay.  A port whose
        netdev is gone is left out (and its lab marked failed), not the rest."""
        assert self.lock.locked(), "the datapath is programmed under the daemon's lock"
        for record in self.store.load_all():
            ready = record.ready()
            # The kernel's part is taken as it is: the replay touches only the datapath.
            recovery = recovery_plan(ready, ready, record.pending())
            problems = await restore(recovery, RecordJournal(self.store, record), self.drivers)
            self._note_failure(record.lab, problems, record.source,
                               "after the datapath's restart")

    async def _remove_stale(self) -> None:
        """What the adopted datapath holds that no lab record has is deleted."""
        try:
            held = await self.datapath.call(protocol.GetStats())
            found = stale(held, (r for record in self.store.load_all()
                                 for r in record.resources))
            for bridge in found.bridges:
                log.warning("the adopted datapath holds bridge %s, which no lab has: deleting "
                            "it", bridge)
                await self.datapath.call(protocol.DelBridge(bridge))
            for bridge, port in found.ports:
                log.warning("the adopted datapath holds port %s/%s, which no lab has: "
                            "deleting it", bridge, port)
                await self.datapath.call(protocol.DelPort(bridge, port))
        except DatapathError as err:
            log.error("cannot clean the adopted datapath: %s", err)

    async def _start_vms(self) -> None:
        """At vnetd's start: a runner an earlier vnetd left running is adopted, one that is
        gone is started again, unless its user had stopped it (``vnet vm stop``)."""
        for record in self.store.load_all():
            for resource in record.ready():
                if not isinstance(resource, VmNodeResource):
                    continue
                action = vm_action(record.vm_run.get(resource.node),
                                   self.vms.found(resource))
                if action is VmAction.ADOPT and await self.vms.adopt(resource):
                    continue
                if action is VmAction.STOP:
                    log.info("VM %s/%s: its user stopped it; stopping the runner that still "
                             "runs", record.lab, resource.node)
                    await self.vms.stop_pid(resource)
                elif action is VmAction.STAY_STOPPED:
                    log.info("VM %s/%s stays stopped, as its user left it", record.lab,
                             resource.node)
                else:
                    await self.vms.start(resource)

    async def stop(self, everything: bool | None = None) -> None:
        """vnetd leaves.  ``everything`` (default: ``stop_all``): the datapath and the VM
        runners stop too; else they keep forwarding and running, and the next vnetd adopts
        them (as libvirtd's guests outlive it)."""
        if everything is None:
            everything = self.stop_all
        if self.bus is not None:
            await self.bus.stop()      # offline first: peers stop flooding to this host
        await self.api.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if everything:
            await self.vms.stop_all()
        else:
            await self.vms.release_all()
        await self.datapath.stop(keep_running=not everything)
        self.stopped.set()

    # ---- the API operations ---------------------------------------------------------------

    async def op_ping(self, request: PingRequest) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "datapath_pid": self.datapath.pid,
                "datapath_restarts": self.datapath.restarts,
                "datapath": self.datapath.health()}

    async def op_up(self, request: UpRequest) -> dict[str, Any]:
        try:
            return await self._up(request)
        except Exception:
            await self._exit_if_idle()
            raise

    async def _exit_if_idle(self) -> None:
        """A vnetd that ``vnet up`` started (``--exit-when-idle``) leaves when it holds no
        lab: after the last down, and after a refused first up, which would otherwise leave
        it and its datapath running for nothing."""
        async with self.lock:
            if self.exit_when_idle and not self.store.load_all():
                log.info("no lab is up: exiting, as a vnetd started by vnet up does")
                asyncio.get_running_loop().call_soon(
                    lambda: asyncio.create_task(self.stop(everything=True)))

    async def _up(self, request: UpRequest) -> dict[str, Any]:
        topology = await asyncio.to_thread(   # seconds for a big file: not on the loop
            parse_topology, request.text, source=request.source,
            base_dir=Path(request.source).parent)
        if topology.hosts and self.bus is not None:
            return await self.bus.publish_up(topology)   # every host realises its part
        result = await self.realise_part(topology)
        others = [h.name for h in topology.hosts if h.name != self.host]
        if others:
            result["note"] = (f"this vnetd has no bus (bus: in its config), so only host "
                              f"{self.host}'s part is up; run 'vnet up {request.source}' on "
                              f"{', '.join(others)} too")
        return result

    async def realise_part(self, topology: Topology) -> dict[str, Any]:
        """This host's part of ``topology``, as ``vnet up`` or the bus asks (the lock
        serialises it with every other change)."""
        facts = await asyncio.to_thread(preflight.check_host, topology, self.host)
        async with self.lock:
            await self.datapath.revive()   # if its supervision gave up: a deliberate start
            return await self._reconcile(topology, facts)

    async def remove_part(self, lab: str) -> bool:
        """Take down this host's part of a multi-host lab (the bus's vnet down); a lab of
        the same name brought up here without hosts is not the bus's and stays."""
        async with self.lock:
            record = self.store.load(lab)
            if record is None or not record.hosts:
                return False
            await remove_all(list(record.resources), RecordJournal(self.store, record),
                             self.drivers)
            self.store.remove(lab)
            self.failures.pop(lab, None)
            return True

    def _recorded_overlay(self, lab: str, network: str) -> OverlayResource | None:
        """The network's overlay as this host's record of the lab has it, if any."""
        record = self.store.load(lab)
        return next((r for r in record.ready() if isinstance(r, OverlayResource)
                     and r.network == network), None) if record else None

    async def op_down(self, request: DownRequest) -> dict[str, Any]:
        lab = request.lab
        if self.bus is not None and self.bus.knows(lab):
            return await self.bus.publish_down(lab)
        async with self.lock:
            record = self.store.load(lab)
            if record is None:
                raise DaemonError(f"lab {lab!r} is not up on this host")
            removed = await remove_all(list(record.resources), RecordJournal(self.store, record),
                                       self.drivers)
            self.store.remove(lab)
            self.failures.pop(lab, None)
            answer: dict[str, Any] = {"lab": lab, "removed": removed}
            others = [h for h in record.hosts if h != self.host]
            if others:
                answer["note"] = (f"this vnetd has no bus (bus: in its config), so only this "
                                  f"host's part is down; run 'vnet down --lab {lab}' on "
                                  f"{', '.join(others)} too")
            if self.exit_when_idle and not self.store.load_all():
                asyncio.get_running_loop().call_soon(
                    lambda: asyncio.create_task(self.stop(everything=True)))
                answer["daemon_exiting"] = os.getpid()
        return answer

    async def op_status(self, request: StatusRequest) -> dict[str, Any]:
        lab = request.lab
        stats = await self.datapath.counters()   # the last known if it cannot tell now
        labs = [lab_status(r, self.drivers, stats.get(r.lab, {}), self.failures.get(r.lab))
                for r in self.store.load_all() if lab is None or r.lab == lab]
        on_bus = self.bus is not None and lab is not None and lab in (
            self.bus.describe(lab)["desired"])
        if lab is not None and not labs and not on_bus:
            raise DaemonError(f"lab {lab!r} is not up on this host")
        answer = {"daemon": await self.op_ping(PingRequest()), "labs": labs}
        if self.bus is not None:
            answer["bus"] = self.bus.describe(lab)
        return answer

    async def metrics_snapshot(self) -> metrics.Snapshot:
        """What a scrape of the metrics endpoint shows, as of now: the counters and MAC
        table sizes the datapath tells within ``SCRAPE_DATAPATH_TIMEOUT`` (else the last
        counters read, and no MAC tables), the VMs' and the bus's state."""
        stats, up = await self.datapath.read_counters(SCRAPE_DATAPATH_TIMEOUT)
        fdb: list[tuple[str, int]] = []
        if up:
            labs = sorted(stats)
            try:
                async with asyncio.timeout(SCRAPE_DATAPATH_TIMEOUT):
                    sizes = await asyncio.gather(
                        *(self.datapath.call(protocol.GetFdbSize(lab)) for lab in labs),
                        return_exceptions=True)
            except TimeoutError:
                sizes, up = [], False
            fdb = [(lab, size) for lab, size in zip(labs, sizes, strict=False)
                   if isinstance(size, int)]   # a bridge deleted meanwhile is left out
        records = self.store.load_all()
        vms = []
        for record in records:
            for res in record.ready():
                if isinstance(res, VmNodeResource):
                    process = self.vms.get(res.lab, res.node)
                    vms.append(metrics.VmSample(
                        res.lab, res.node,
                        process.lifecycle.state.value if process else "stopped",
                        process.lifecycle.restarts_total if process else 0))
        health = self.datapath.health()
        bus = None
        if self.bus is not None:
            client = self.bus.bus
            bus = metrics.bus_sample(client.stats.as_dict() if client else {"state": "starting"},
                                     connected=client is not None and client.connected,
                                     session_restarts=self.bus.restarts)
        return metrics.Snapshot(
            version=__version__,
            datapath=metrics.DatapathSample(up=up, state=health["state"],
                                            restarts=health["restarts"],
                                            adopted=health["adopted"]),
            labs=len(records), ports=metrics.port_samples(stats), fdb=tuple(fdb),
            vms=tuple(vms), bus=bus)

    async def _read_fdb(self, lab: str) -> list[dict[str, Any]]:
        """The lab's MAC table, for the bus's learned MACs (``vnet.daemon.learned``)."""
        result: list[dict[str, Any]] = await self.datapath.call(protocol.GetFdb(lab))
        return result

    async def op_fdb(self, request: FdbRequest) -> list[dict[str, Any]]:
        if self.store.load(request.lab) is None:
            raise DaemonError(f"lab {request.lab!r} is not up on this host")
        result: list[dict[str, Any]] = await self.datapath.call(
            protocol.GetFdb(request.lab))
        return result

    def _find_node(self, node: str, lab: str | None) -> NetnsNodeResource | VmNodeResource:
        found = [res for r in self.store.load_all() if lab in (None, r.lab) for res in r.ready()
                 if isinstance(res, NetnsNodeResource | VmNodeResource) and res.node == node]
        if not found:
            raise DaemonError(f"no node {node!r} is up" + (f" in lab {lab!r}" if lab else ""))
        if len(found) > 1:
            raise DaemonError(f"node {node!r} exists in labs {', '.join(f.lab for f in found)}; "
                              f"say which with --lab")
        return found[0]

    async def op_node(self, request: NodeRequest) -> dict[str, Any]:
        """Where a node lives, for ``vnet exec``, ``vnet console`` and the test helpers."""
        node = request.node
        res = self._find_node(node, request.lab)
        if isinstance(res, VmNodeResource):
            return {"lab": res.lab, "node": node, "kind": "vm", **self.vms.status(res.lab, node),
                    "nics": {t.nic: {"mac": t.mac, "host_ifname": t.ifname} for t in res.taps}}
        return {"lab": res.lab, "node": node, "kind": "netns", "netns": res.netns,
                "nics": {n.nic: {"mac": n.mac, "host_ifname": n.host_ifname} for n in res.nics}}

    def _node_view(self, node: str, lab: str | None) -> NodeView:
        """What exec and console attach check a request against (``attach``)."""
        res = self._find_node(node, lab)
        if isinstance(res, VmNodeResource):
            status = self.vms.status(res.lab, node)
            return NodeView(res.lab, node, "vm", state=str(status["state"]),
                            console_socket=str(status.get("console_socket") or "") or None)
        return NodeView(res.lab, node, "netns", netns=res.netns)

    async def op_console_log(self, request: ConsoleRequest) -> dict[str, Any]:
        """``vnet console``'s first part: what the VM printed so far (its last
        ``CONSOLE_LOG_MAX`` bytes), in base64 (a serial console's bytes need not be text)."""
        res = self._find_node(request.node, request.lab)
        if not isinstance(res, VmNodeResource):
            raise DaemonError(f"node {request.node!r} is a namespace node: it has no console;"
                              f" use 'vnet exec {request.node} -- sh'")
        path = self.state_dir / f"console-{res.lab}-{res.node}.log"
        data, size = b"", 0
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as log_file:
            size = os.fstat(log_file.fileno()).st_size
            log_file.seek(max(0, size - CONSOLE_LOG_MAX))
            data = log_file.read(CONSOLE_LOG_MAX)
        return {"lab": res.lab, "node": res.node,
                "state": self.vms.status(res.lab, res.node)["state"],
                "log": base64.b64encode(data).decode(), "skipped": max(0, size - len(data))}

    async def op_vm(self, request: VmRequest) -> dict[str, Any]:
        """``vnet vm start|stop|restart NODE``."""
        action, node = request.action, request.node
        res = self._find_node(node, request.lab)
        if not isinstance(res, VmNodeResource):
            raise DaemonError(f"node {node!r} is a namespace node, not a VM")
        async with self.lock:
            record = self.store.load(res.lab)
            if record is None:
                raise DaemonError(f"lab {res.lab!r} is not up on this host")
            # What the user wants is recorded first: a vnetd that restarts honours it.
            record.vm_run[res.node] = "stopped" if action == "stop" else "running"
            self.store.save(record)
            if action in ("stop", "restart"):
                process = self.vms.get(res.lab, res.node)
                if process is not None:
                    await process.stop(power_off=not request.force)
            if action in ("start", "restart"):
                await self.vms.start(res)
        return await self.op_node(NodeRequest(node, res.lab))

    async def op_trace(self, request: TraceRequest) -> dict[str, Any]:
        """``vnet trace``: the datapath explains (or injects) a frame on a NIC's port."""
        call = tracing.datapath_request(self._find_node(request.node, request.lab), request)
        result: dict[str, Any] = await self.datapath.call(call)
        return {"lab": call.bridge, "node": request.node, "nic": call.port.split(".", 1)[1],
                **result}

    async def op_capture(self, request: CaptureRequest) -> Streaming:
        """``vnet capture``: a mirror of a NIC's port, relayed (``vnet.daemon.capture``)."""
        nodes = [res for r in self.store.load_all() for res in r.ready()
                 if isinstance(res, NetnsNodeResource | VmNodeResource)]
        node, nic = capture.find_port(nodes, request)
        mirror = capture.mirror_request(node, nic, request.direction)
        relay = await capture.Relay.open(self.datapath.control_path, mirror)
        return Streaming(capture.describe(node, nic, mirror), relay.run, relay.close)

    async def op_shutdown(self, request: ShutdownRequest) -> None:
        """As SIGTERM; ``all``: the datapath and every VM runner stop too."""
        everything = True if request.all else None
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.create_task(self.stop(everything)))

    # ---- reconciliation -------------------------------------------------------------------

    async def _reconcile(self, topology: Topology, facts: preflight.HostFacts
                         ) -> dict[str, Any]:
        """Parse, plan, apply: the reconciler journals every step in the lab's record and
        rolls a failed change back, so the lab is left as it was."""
        lab = topology.name
        previous = self.store.load(lab)
        record = previous or LabRecord(lab, str(topology.source or ""))
        journal = RecordJournal(self.store, record)
        desired = keep_recorded_namespaces(desired_resources(
            topology, self.host, facts.underlay_mtu, netns_prefix=self.netns_prefix),
            record.ready())
        preflight.refuse_vni_clashes(lab, desired, self.store.load_all())  # under the lock
        work = plan(desired, record.ready())
        if work.empty and not journal.pending():
            return {"lab": lab, "created": 0, "removed": 0, "changed": False}
        try:
            applied = await apply(work, journal, self.drivers)
        except BaseException as err:
            log.error("bringing up %s failed (%s); rolled back to what was there", lab, err)
            if not record.resources and previous is None:
                self.store.remove(lab)
            raise
        record.source = str(topology.source or "")
        record.hosts = tuple(h.name for h in topology.hosts)
        # Recorded in the file's order (a changed node would otherwise move to the end).
        in_order = {r: record.resources[r] for r in desired if r in record.resources}
        record.resources = {**in_order, **record.resources}
        # A VM this change created was started; one it removed has no run state to keep.
        started = {r.node for r in applied.created if isinstance(r, VmNodeResource)}
        vms = {r.node for r in record.resources if isinstance(r, VmNodeResource)}
        record.vm_run = {node: run for node, run in record.vm_run.items()
                         if node in vms and node not in started}
        self.store.save(record)
        self.failures.pop(lab, None)   # it is what its file says now
        return {"lab": lab, "created": len(applied.created), "removed": len(applied.deleted),
                "changed": True}
