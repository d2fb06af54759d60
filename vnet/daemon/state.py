"""vnetd's record of what it created, one JSON file per lab, written before every change.

The record is the proof of ownership: ``vnet down`` deletes exactly what a record names, and
``vnet up`` refuses to take over a namespace or interface that no record names.  A resource
is recorded as ``pending`` before it is created and ``ready`` after, so a crash half-way
leaves a record from which the next ``up`` or ``down`` can finish the job.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vnet.daemon.naming import NETNS_PREFIX
from vnet.daemon.resources import NetworkResource, Resource, from_dict, to_dict
from vnet.errors import DaemonError

log = logging.getLogger("vnet.state")

Status = Literal["pending", "ready"]
RunState = Literal["running", "stopped"]


@dataclass
class LabRecord:
    """A lab's resources and the file it came from, and the run state its user chose for
    each VM node (by node name; not named: running).  Records written before issue 11 also
    held the topology as a dict; ``from_json`` turns its networks into resources."""

    lab: str
    source: str
    resources: dict[Resource, Status] = field(default_factory=dict)
    vm_run: dict[str, RunState] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()   # a multi-host lab's hosts (this vnetd realises one part)

    def ready(self) -> list[Resource]:
        return [r for r, status in self.resources.items() if status == "ready"]

    def pending(self) -> list[Resource]:
        return [r for r, status in self.resources.items() if status == "pending"]

    def to_json(self) -> dict[str, Any]:
        return {"lab": self.lab, "source": self.source,
                "resources": [{**to_dict(r), "status": s} for r, s in self.resources.items()],
                "vm_run": self.vm_run, "hosts": list(self.hosts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabRecord:
        resources: dict[Resource, Status] = {}
        for item in data["resources"]:
            item = dict(item)
            status = item.pop("status")
            resources[from_dict(item)] = status
        if "topology" in data and not any(isinstance(r, NetworkResource) for r in resources):
            networks = _networks_of(data["lab"], data["topology"])
            resources = {**dict.fromkeys(networks, "ready"), **resources}
        return cls(data["lab"], data["source"], resources, dict(data.get("vm_run", {})),
                   tuple(data.get("hosts", ())))


def _networks_of(lab: str, topology: dict[str, Any]) -> list[NetworkResource]:
    """The network resources of a lab recorded before they existed, from the topology dict
    such a record holds (``topology_to_dict``: a bridged network's ``uplink`` is a host ->
    interface map in a lab with hosts), so that the first ``up`` after an upgrade finds
    them recorded and changes nothing."""
    networks = []
    for name, network in topology.get("networks", {}).items():
        uplink = network.get("uplink")
        networks.append(NetworkResource(
            lab, name, network["vlan"], network["mode"],
            uplink if isinstance(uplink, str) else None,
            tuple(sorted(uplink.items())) if isinstance(uplink, dict) else ()))
    return networks


class RecordJournal:
    """The reconciler's journal (``reconciler.Journal``) over one lab record: every step is
    saved to the lab's state file before the next one is taken."""

    def __init__(self, store: StateStore, record: LabRecord) -> None:
        self.store = store
        self.record = record

    def pending(self) -> list[Resource]:
        return self.record.pending()

    def mark_pending(self, *resources: Resource) -> None:
        self.record.resources.update(dict.fromkeys(resources, "pending"))
        self.store.save(self.record)

    def mark_ready(self, *resources: Resource) -> None:
        self.record.resources.update(dict.fromkeys(resources, "ready"))
        self.store.save(self.record)

    def forget(self, *resources: Resource) -> None:
        for resource in resources:
            del self.record.resources[resource]
        self.store.save(self.record)


class StateStore:
    """Lab records under ``STATE_DIR/labs/``, replaced atomically (write, fsync, rename)."""

    def __init__(self, state_dir: Path, netns_prefix: str = NETNS_PREFIX) -> None:
        self.dir = state_dir / "labs"
        self.netns_prefix = netns_prefix   # named in the advice on an unreadable record
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, lab: str) -> Path:
        return self.dir / f"{lab}.json"

    def save(self, record: LabRecord) -> None:
        tmp = self.path(record.lab).with_suffix(".tmp")
        with open(tmp, "w") as f:
            # Unindented: json's C encoder, ~10x the pure-Python one that ``indent`` takes;
            # this runs on vnetd's loop twice per wave of a lab's bring-up.
            f.write(json.dumps(record.to_json(), sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path(record.lab))

    def load(self, lab: str) -> LabRecord | None:
        """The lab's record (None: there is none); ``DaemonError`` if it cannot be read."""
        path = self.path(lab)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return LabRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DaemonError(
                f"the record of lab {lab!r} ({path}) cannot be read ({type(err).__name__}: "
                f"{str(err)[:100]}); move it away and remove what it names by hand "
                f"(namespaces {self.netns_prefix}-{lab}-*, links marked vnet:{lab}:*)") from None

    def load_all(self) -> list[LabRecord]:
        """Every lab's record that can be read; one that cannot is logged and left out, so
        that it keeps no other lab (nor vnetd's start) from working."""
        records = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = self.load(path.stem)
            except DaemonError as err:
                log.error("%s", err)
                continue
            if record is not None:
                records.append(record)
        return records

    def remove(self, lab: str) -> None:
        self.path(lab).unlink(missing_ok=True)
