"""Lab records across a vnetd upgrade, and the status rendered from them (no root).

``data/state-before-issue-11.json`` was written by vnetd as it was before issue 11 (its
records held the topology as a dict, and the status read the networks from it) for
``data/upgrade.yaml``; ``data/status-before-issue-11.json`` is what that vnetd's status
said of it.  A vnetd upgrade must not lose a lab, rebuild it, or say other things of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from vnet.daemon.drivers import host_drivers
from vnet.daemon.reconciler import Drivers
from vnet.daemon.resources import NetworkResource, desired_resources, plan
from vnet.daemon.state import LabRecord, RecordJournal, StateStore
from vnet.daemon.status import lab_status
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.daemon.vms import VmSupervisor
from vnet.host import netns
from vnet.topology import Topology, parse_topology

DATA = Path(__file__).parent / "data"
STATS = {"n1.eth0": {"rx_frames": 3}, "@uplink.eth2": {"rx_frames": 5},
         "@gw-inside.port": {"rx_frames": 1}}  # what the old status was rendered with


def topology() -> Topology:
    return parse_topology((DATA / "upgrade.yaml").read_text(), source="/labs/upgrade.yaml")


def old_status() -> dict[str, Any]:
    """What the vnetd before issue 11 said, plus what was added since: each namespace NIC's
    MTU and each VM NIC's (1500 off the overlay; multi-host labs set less), and the lab's
    ``failed`` (None: it is all there)."""
    status: dict[str, Any] = json.loads((DATA / "status-before-issue-11.json").read_text())
    status["failed"] = None
    for node in status["nodes"]:
        for nic in node["nics"]:
            nic["mtu"] = 1500
    return status


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path)
    shutil.copy(DATA / "state-before-issue-11.json", store.path("upgrade"))
    return store


@pytest.fixture
def drivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Drivers:
    monkeypatch.setattr(netns, "is_live", lambda name: True)  # the nodes' namespaces are up
    datapath = DatapathSupervisor(tmp_path / "dp.sock", tmp_path / "dp.log",
                                  lambda: None)  # type: ignore[arg-type,return-value]
    return host_drivers(tmp_path, datapath, VmSupervisor(tmp_path))


def test_an_old_record_is_read_with_its_networks(store: StateStore) -> None:
    record = store.load("upgrade")
    assert record is not None and record.pending() == []
    networks = [r for r in record.resources if isinstance(r, NetworkResource)]
    assert networks == [NetworkResource("upgrade", "inside", 20, "nat", "eth1"),
                        NetworkResource("upgrade", "lan", 30, "bridged", "eth2"),
                        NetworkResource("upgrade", "office", 10, "isolated")]


def test_the_first_up_after_an_upgrade_changes_nothing(store: StateStore) -> None:
    record = store.load("upgrade")
    assert record is not None
    assert plan(desired_resources(topology()), record.ready()).empty


def test_the_status_of_an_old_record_says_what_the_old_vnetd_said(
        store: StateStore, drivers: Drivers) -> None:
    record = store.load("upgrade")
    assert record is not None
    assert lab_status(record, drivers, STATS) == old_status()


def test_the_status_of_a_new_record_says_the_same(drivers: Drivers) -> None:
    """Rendered from resources and their drivers, not from a recorded topology."""
    record = LabRecord("upgrade", "/labs/upgrade.yaml",
                       dict.fromkeys(desired_resources(topology()), "ready"))
    assert lab_status(record, drivers, STATS) == old_status()


def test_an_old_record_saved_again_is_in_the_new_format(store: StateStore) -> None:
    record = store.load("upgrade")
    assert record is not None
    store.save(record)
    saved = json.loads(store.path("upgrade").read_text())
    assert "topology" not in saved
    assert store.load("upgrade") == record


def test_the_journal_saves_every_step(store: StateStore) -> None:
    record = store.load("upgrade")
    assert record is not None
    journal = RecordJournal(store, record)
    new = NetworkResource("upgrade", "extra", 99, "isolated")
    journal.mark_pending(new)
    loaded = store.load("upgrade")
    assert loaded is not None and loaded.pending() == [new]
    journal.mark_ready(new)
    loaded = store.load("upgrade")
    assert loaded is not None and loaded.pending() == [] and new in loaded.ready()
    journal.forget(new)
    loaded = store.load("upgrade")
    assert loaded is not None and new not in loaded.resources
