"""A datapath that dies is restarted and re-programmed, and nothing else changes: a VM the
user stopped stays stopped, a crashed one stays crashed, a running one keeps running."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import needs_root
from vnet.errors import DaemonError
from vnet.testing import Lab, wait_until

pytestmark = [needs_root,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="needs /dev/kvm"),
              pytest.mark.vnet_topology("topologies/replay.yaml")]

def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_until(predicate, timeout, predicate.__doc__ or "the condition")


def vms(lab: Lab) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in lab.status()["nodes"] if n["kind"] == "vm"}


def ping(lab: Lab, node: str, address: str) -> bool:
    return lab.exec(node, ["ping", "-c", "1", "-W", "1", address]).returncode == 0


def test_a_datapath_restart_changes_no_vm_state(vnet_lab: Lab) -> None:
    host = vnet_lab.host
    for address in ("10.10.0.11", "10.10.0.12", "10.10.0.13"):
        wait_for(lambda a=address: ping(vnet_lab, "c1", a))  # type: ignore[misc]
    assert "vm vm1: stopped" in host.cli("vm", "stop", "vm1").stdout
    os.kill(int(vms(vnet_lab)["vm2"]["pid"]), signal.SIGKILL)

    def vm2_crashed() -> bool:
        """vm2 (restart: no) is crashed"""
        return bool(vms(vnet_lab)["vm2"]["state"] == "crashed")

    wait_for(vm2_crashed)
    vm3_pid = vms(vnet_lab)["vm3"]["pid"]
    old = host.call("ping")
    os.kill(old["datapath_pid"], signal.SIGKILL)

    def reprogrammed() -> bool:
        """a new datapath forwards between c1 and c2 and to vm3 again"""
        try:
            now = host.call("ping")
        except DaemonError:
            return False
        return (now["datapath_pid"] not in (None, old["datapath_pid"])
                and now["datapath_restarts"] == old["datapath_restarts"] + 1
                and ping(vnet_lab, "c1", "10.10.0.2") and ping(vnet_lab, "c1", "10.10.0.13"))

    wait_for(reprogrammed)
    # Before the fix the replay itself started vm1 and vm2 again, before it re-added the
    # ports: they are running by the time the ports are back.  Stopped and crashed are
    # states no timer leads out of (vnet.daemon.vmlifecycle.TABLE: only a user's start
    # does), so seeing them now, with no restart counted, is seeing them for good.
    states = vms(vnet_lab)
    assert (states["vm1"]["state"], states["vm1"]["pid"]) == ("stopped", None), states
    assert (states["vm2"]["state"], states["vm2"]["pid"]) == ("crashed", None), states
    assert (states["vm3"]["state"], states["vm3"]["pid"]) == ("running", vm3_pid), states
    assert states["vm2"]["restarts"] == 0, states
    assert not ping(vnet_lab, "c1", "10.10.0.11")
    assert ping(vnet_lab, "c1", "10.10.0.13")
    # The user's start still works, on the re-programmed port.
    assert "vm vm1: running" in host.cli("vm", "start", "vm1").stdout
    wait_for(lambda: ping(vnet_lab, "c1", "10.10.0.11"))
