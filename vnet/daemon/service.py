"""vnetd: owns the desired state of its host's labs and reconciles the kernel to it.

Requests arrive as JSON lines on a Unix socket (see ``vnet.jsonlines``) from the ``vnet``
CLI.  Changes are serialised by one lock; each runs ``plan`` (pure) and applies it, recording
every step in the lab's state file first so that a crash or a failure can be finished or
rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from vnet import __version__, jsonlines
from vnet.daemon import realize
from vnet.daemon.resources import (
    KIND_ORDER,
    BridgeResource,
    GatewayResource,
    NetnsNodeResource,
    PortResource,
    Resource,
    VmNodeResource,
    desired_resources,
    plan,
)
from vnet.daemon.state import LabRecord, StateStore
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.daemon.vms import VmSupervisor
from vnet.datapath import protocol
from vnet.errors import DaemonError, VnetError
from vnet.topology import Topology, parse_topology, topology_to_dict

log = logging.getLogger("vnet.daemon")

Handler = Callable[..., Coroutine[Any, Any, Any]]


class Vnetd:
    def __init__(self, socket_path: Path, state_dir: Path, exit_when_idle: bool = False,
                 datapath_python: str = sys.executable) -> None:
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.exit_when_idle = exit_when_idle
        self.store = StateStore(state_dir)
        self.lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self.datapath = DatapathSupervisor(state_dir / "datapath.sock",
                                           state_dir / "datapath.log", self.replay,
                                           datapath_python)
        self.vms = VmSupervisor(state_dir)
        self.server: asyncio.AbstractServer | None = None
        self.ops: dict[str, Handler] = {
            "ping": self.op_ping, "up": self.op_up, "down": self.op_down,
            "status": self.op_status, "fdb": self.op_fdb, "node": self.op_node,
            "vm": self.op_vm, "shutdown": self.op_shutdown}

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.datapath.start()
        await self.replay()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(self._client, path=str(self.socket_path),
                                                      limit=jsonlines.MAX_LINE)
        os.chmod(self.socket_path, 0o600)
        log.info("vnetd %s listening on %s, state in %s", __version__, self.socket_path,
                 self.state_dir)

    async def replay(self) -> None:
        """Give a (new) datapath every bridge and port the records say are realised, and
        start the VM runners that are not running (at vnetd's start)."""
        for record in self.store.load_all():
            for resource in sorted(record.ready(), key=lambda r: KIND_ORDER[r.kind]):
                if isinstance(resource, BridgeResource | PortResource):
                    await self._create(resource)
                elif isinstance(resource, VmNodeResource):
                    await self.vms.start(resource)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.vms.stop_all()
        await self.datapath.stop()
        self.socket_path.unlink(missing_ok=True)
        self.stopped.set()

    # ---- the API ----------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(jsonlines.encode(await self.handle(line)))
                await writer.drain()
        except (ConnectionError, ValueError) as err:  # ValueError: a line over the limit
            log.warning("dropping a client: %s", err)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = jsonlines.decode(line)
            op = request.pop("op", None)
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise DaemonError(f"unknown operation {op!r}; this vnetd knows: "
                                  f"{', '.join(sorted(self.ops))}")
            return jsonlines.ok(await handler(**request))
        except TypeError as err:
            return jsonlines.failed(f"bad arguments: {err}")
        except (VnetError, jsonlines.ProtocolError) as err:
            return jsonlines.failed(str(err))
        except Exception as err:
            log.exception("internal error")
            return jsonlines.failed(f"internal error in vnetd: {err!r} (see vnetd's log)")

    async def op_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "datapath_pid": self.datapath.pid,
                "datapath_restarts": self.datapath.restarts}

    async def op_up(self, text: str, source: str) -> dict[str, Any]:
        topology = parse_topology(text, source=source, base_dir=Path(source).parent)
        await asyncio.to_thread(realize.check_host, topology)
        async with self.lock:
            return await self._reconcile(topology)

    async def op_down(self, lab: str) -> dict[str, Any]:
        async with self.lock:
            record = self.store.load(lab)
            if record is None:
                raise DaemonError(f"lab {lab!r} is not up on this host")
            removed = await self._remove_all(record)
            self.store.remove(lab)
            if self.exit_when_idle and not self.store.load_all():
                asyncio.get_running_loop().call_soon(lambda: asyncio.create_task(self.stop()))
                return {"lab": lab, "removed": removed, "daemon_exiting": os.getpid()}
        return {"lab": lab, "removed": removed}

    async def op_status(self, lab: str | None = None) -> dict[str, Any]:
        stats = await self.datapath.call(protocol.GetStats())
        labs = [self._lab_status(r, stats.get(r.lab, {})) for r in self.store.load_all()
                if lab is None or r.lab == lab]
        if lab is not None and not labs:
            raise DaemonError(f"lab {lab!r} is not up on this host")
        return {"daemon": await self.op_ping(), "labs": labs}

    async def op_fdb(self, lab: str) -> list[dict[str, Any]]:
        if self.store.load(lab) is None:
            raise DaemonError(f"lab {lab!r} is not up on this host")
        result: list[dict[str, Any]] = await self.datapath.call(protocol.GetFdb(lab))
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

    async def op_node(self, node: str, lab: str | None = None) -> dict[str, Any]:
        """Where a node lives, for ``vnet exec``, ``vnet console`` and the test helpers."""
        res = self._find_node(node, lab)
        if isinstance(res, VmNodeResource):
            process = self.vms.get(res.lab, res.node)
            return {"lab": res.lab, "node": node, "kind": "vm",
                    **(process.status() if process else {"state": "stopped"}),
                    "nics": {t.nic: {"mac": t.mac, "host_ifname": t.ifname} for t in res.taps}}
        return {"lab": res.lab, "node": node, "kind": "netns", "netns": res.netns,
                "nics": {n.nic: {"mac": n.mac, "host_ifname": n.host_ifname} for n in res.nics}}

    async def op_vm(self, action: str, node: str, lab: str | None = None) -> dict[str, Any]:
        """``vnet vm start|stop|restart NODE``."""
        res = self._find_node(node, lab)
        if not isinstance(res, VmNodeResource):
            raise DaemonError(f"node {node!r} is a namespace node, not a VM")
        if action not in ("start", "stop", "restart"):
            raise DaemonError(f"unknown VM action {action!r}: say start, stop or restart")
        async with self.lock:
            if action in ("stop", "restart"):
                process = self.vms.get(res.lab, res.node)
                if process is not None:
                    await process.stop()
            if action in ("start", "restart"):
                await self.vms.start(res)
        return await self.op_node(node, res.lab)

    async def op_shutdown(self) -> None:
        asyncio.get_running_loop().call_soon(lambda: asyncio.create_task(self.stop()))

    # ---- reconciliation -------------------------------------------------------------------

    async def _reconcile(self, topology: Topology) -> dict[str, Any]:
        lab = topology.name
        source = str(topology.source or "")
        previous = self.store.load(lab)
        record = previous or LabRecord(lab, source, {})
        work = plan(desired_resources(topology), record.ready())
        # Leftovers of a crash half-way: they are ours (recorded), finish deleting them first.
        stale = sorted(record.pending(), key=lambda r: -KIND_ORDER[r.kind])
        if work.empty and not stale:
            return {"lab": lab, "created": 0, "removed": 0, "changed": False}
        created: list[Resource] = []
        deleted: list[Resource] = []  # by this change (not crash leftovers): restored on failure
        try:
            for resource in stale + work.delete:
                await self._delete(resource)
                del record.resources[resource]
                if resource not in stale:
                    deleted.append(resource)
                self.store.save(record)
            for resource in work.create:
                record.resources[resource] = "pending"
                self.store.save(record)
                await self._create(resource)
                record.resources[resource] = "ready"
                created.append(resource)
                self.store.save(record)
        except BaseException as err:
            log.error("bringing up %s failed (%s); rolling back to what was there", lab, err)
            await self._rollback(record, created, deleted, had_previous=previous is not None)
            raise
        record.source = source
        record.topology = topology_to_dict(topology)
        self.store.save(record)
        return {"lab": lab, "created": len(work.create), "removed": len(stale + work.delete),
                "changed": True}

    async def _rollback(self, record: LabRecord, created: list[Resource],
                        deleted: list[Resource], had_previous: bool) -> None:
        """Undo a failed change: delete what it created, then re-create what it deleted, so
        the lab is as it was (a resource that cannot be restored is logged and left out)."""
        undo = [r for r, s in record.resources.items() if s == "pending"] + created[::-1]
        for resource in sorted(undo, key=lambda r: -KIND_ORDER[r.kind]):
            try:
                await self._delete(resource)
                del record.resources[resource]
            except Exception:
                log.exception("rollback could not delete %s; it stays recorded", resource.key)
        for resource in sorted(deleted, key=lambda r: KIND_ORDER[r.kind]):
            record.resources[resource] = "pending"
            self.store.save(record)
            try:
                await self._create(resource)
                record.resources[resource] = "ready"
            except Exception:
                log.exception("rollback could not restore %s", resource.key)
                with contextlib.suppress(Exception):
                    await self._delete(resource)
                del record.resources[resource]
        if record.resources or had_previous:
            self.store.save(record)
        else:
            self.store.remove(record.lab)

    async def _remove_all(self, record: LabRecord) -> int:
        resources = sorted(record.resources, key=lambda r: -KIND_ORDER[r.kind])
        for resource in resources:
            await self._delete(resource)
            del record.resources[resource]
            self.store.save(record)
        return len(resources)

    async def _create(self, resource: Resource) -> None:
        """Datapath resources are control calls; the rest are kernel work, off the loop."""
        if isinstance(resource, BridgeResource):
            await self.datapath.call(protocol.AddBridge(resource.lab, resource.vlans))
        elif isinstance(resource, PortResource):
            await self.datapath.call(protocol.AddPort(
                resource.lab, resource.name, resource.ifname, resource.mode,
                vlan=resource.vlan, allowed=resource.allowed, native=resource.native))
        elif isinstance(resource, VmNodeResource):
            await asyncio.to_thread(realize.create_vm_taps, resource, self.state_dir)
            await self.vms.start(resource)
        else:
            await asyncio.to_thread(realize.CREATE[type(resource)], resource, self.state_dir)

    async def _delete(self, resource: Resource) -> None:
        if isinstance(resource, BridgeResource):
            await self.datapath.call(protocol.DelBridge(resource.lab))
        elif isinstance(resource, PortResource):
            await self.datapath.call(protocol.DelPort(resource.lab, resource.name))
        elif isinstance(resource, VmNodeResource):
            await self.vms.stop(resource)
            await asyncio.to_thread(realize.delete_vm_taps, resource, self.state_dir)
        else:
            await asyncio.to_thread(realize.DELETE[type(resource)], resource, self.state_dir)

    # ---- status -----------------------------------------------------------------------------

    def _lab_status(self, record: LabRecord, stats: dict[str, Any]) -> dict[str, Any]:
        ports = {r.name: r for r in record.resources if isinstance(r, PortResource)}

        def nic(node: str, name: str, mac: str, ips: list[str], ifname: str) -> dict[str, Any]:
            port = ports.get(f"{node}.{name}")
            return {"name": name, "mac": mac, "ip": ips, "ifname": ifname,
                    "port": port.name if port else None, "mode": port.mode if port else None,
                    "vlans": _port_vlans(port) if port else [],
                    "native": port.native if port else None,
                    "counters": stats.get(port.name) if port else None}

        nodes: list[dict[str, Any]] = []
        for res in record.resources:
            if isinstance(res, VmNodeResource):
                process = self.vms.get(res.lab, res.node)
                nodes.append({
                    "name": res.node, "kind": "vm",
                    **(process.status() if process else {"state": "stopped"}),
                    "nics": [nic(res.node, t.nic, t.mac, [t.ip] if t.ip else [], t.ifname)
                             for t in res.taps]})
            elif isinstance(res, NetnsNodeResource):
                nodes.append({
                    "name": res.node, "kind": "netns", "netns": res.netns,
                    "state": "running" if realize.netns_node_alive(res) else "missing",
                    "nics": [nic(res.node, n.nic, n.mac,
                                 ["dhcp"] if n.dhcp else list(n.addresses), n.host_ifname)
                             for n in res.nics]})
        pending = [f"{r.kind}:{r.key[1]}" for r in record.pending()]
        gateways = {r.network: r for r in record.resources if isinstance(r, GatewayResource)}
        networks = [{"name": name, "vlan": n["vlan"], "mode": n["mode"],
                     "gateway": gateways[name].address if name in gateways else None,
                     "uplink": n.get("uplink")}
                    for name, n in record.topology.get("networks", {}).items()]
        uplinks = [{"port": p.name, "ifname": p.ifname, "vlans": _port_vlans(p),
                    "counters": stats.get(p.name)}
                   for p in ports.values() if p.name.startswith("uplink.")]
        return {"name": record.lab, "source": record.source, "networks": networks,
                "nodes": nodes, "uplinks": uplinks, "pending": pending}


def _port_vlans(port: PortResource) -> list[int]:
    if port.mode == "access":
        return [port.vlan] if port.vlan is not None else []
    return sorted(set(port.allowed) | ({port.native} if port.native else set()))
