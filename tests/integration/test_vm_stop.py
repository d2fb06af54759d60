"""A VM its user stopped stays stopped when vnetd itself restarts; one started runs again.

(Before, the stop was not recorded: a restarted vnetd started every VM of its records.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from vnet.testing import Lab, TestHost, wait_until

pytestmark = [needs_root,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="needs /dev/kvm"),
              pytest.mark.vnet_topology("topologies/replay.yaml")]

BOOT_WAIT = 60.0  # a tiny guest's ring-0 start is emulated (docs/kvm.md): slow on some hosts


def vms(lab: Lab) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in lab.status()["nodes"] if n["kind"] == "vm"}


def ping(lab: Lab, address: str) -> bool:
    return lab.exec("c1", ["ping", "-c", "1", "-W", "1", address]).returncode == 0


def answers(lab: Lab, address: str) -> None:
    wait_until(lambda: ping(lab, address), BOOT_WAIT, message=f"{address} to answer c1")


def restart_vnetd(host: TestHost) -> None:
    """Stop vnetd as systemd would (SIGTERM: its VMs keep running, its labs stay) and start
    it again on the same state, which adopts the runners; it answers once it has started
    or adopted what it should."""
    assert host.process is not None
    pid = host.process.pid
    host.process.terminate()
    host.process.wait(30)
    host._start_daemon()
    assert host.call("ping")["pid"] != pid


def test_a_stopped_vm_stays_stopped_across_a_vnetd_restart(vnet_lab: Lab) -> None:
    host = vnet_lab.host
    answers(vnet_lab, "10.10.0.11")
    assert "vm vm1: stopped" in host.cli("vm", "stop", "vm1").stdout
    restart_vnetd(host)
    states = vms(vnet_lab)
    assert (states["vm1"]["state"], states["vm1"].get("pid")) == ("stopped", None), states
    assert states["vm3"]["state"] == "running", states   # the others were started again
    answers(vnet_lab, "10.10.0.13")
    assert not ping(vnet_lab, "10.10.0.11")

    assert "vm vm1: running" in host.cli("vm", "start", "vm1").stdout
    answers(vnet_lab, "10.10.0.11")
    restart_vnetd(host)
    assert vms(vnet_lab)["vm1"]["state"] == "running"
    answers(vnet_lab, "10.10.0.11")


def console_log(lab: Lab, node: str) -> str:
    return Path(vms(lab)[node]["console"]).read_text(errors="replace")


def test_vm_stop_asks_the_guest_to_power_off_and_force_does_not(vnet_lab: Lab) -> None:
    """`vnet vm stop` is a shutdown (the guest is asked through the runner's control socket,
    and powers off itself); `--force` turns it off at once, as libvirt's destroy."""
    host = vnet_lab.host
    answers(vnet_lab, "10.10.0.11")
    answers(vnet_lab, "10.10.0.13")
    assert "vm vm1: stopped" in host.cli("vm", "stop", "vm1").stdout
    assert "tiny guest: shutdown requested, powering off" in console_log(vnet_lab, "vm1")
    assert "vm vm3: stopped" in host.cli("vm", "stop", "--force", "vm3").stdout
    assert "shutdown requested" not in console_log(vnet_lab, "vm3")
    assert vms(vnet_lab)["vm1"]["state"] == vms(vnet_lab)["vm3"]["state"] == "stopped"
    for node, address in (("vm1", "10.10.0.11"), ("vm3", "10.10.0.13")):
        host.cli("vm", "start", node)
        answers(vnet_lab, address)
