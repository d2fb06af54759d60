"""A restart without loss: vnetd stops or is killed -9, its datapath and VM runners keep
forwarding and running, and the next vnetd adopts them (``docs/service.md``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import needs_root
from vnet.testing import Lab, TestHost, leftovers, process_alive, run_in_netns, wait_until

pytestmark = needs_root
TOPOLOGIES = Path(__file__).parent / "topologies"
needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                               reason="needs /dev/kvm")
BOOT_WAIT = 60.0


def pings(lab: Lab, node: str, address: str) -> bool:
    """By the node's namespace name, known without vnetd (which may be down)."""
    ping = ["ping", "-c", "1", "-W", "1", address]
    return run_in_netns(lab.host.netns_name(lab.name, node), ping).returncode == 0


def rx_frames(lab: Lab) -> int:
    return int(lab.counters("right:eth0")["rx_frames"])


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_the_datapath_forwards_while_vnetd_is_down_and_is_adopted(how: str) -> None:
    with TestHost() as host:
        lab = host.up(TOPOLOGIES / "pair.yaml")
        wait_until(lambda: pings(lab, "left", "10.2.0.2"), message="left pings right")
        datapath = host.call("ping")["datapath_pid"]
        wait_until(lambda: rx_frames(lab) > 0, message="right's port to count frames")
        counted = rx_frames(lab)

        if how == "kill -9":
            host.kill_daemon()
        else:
            host.terminate_daemon()
        assert process_alive(datapath), "the datapath died with vnetd"
        # vnetd is gone; the switch is not: frames flow.
        wait_until(lambda: pings(lab, "left", "10.2.0.2"),
                   message="left to ping right while vnetd is down")
        assert host.process is not None and host.process.poll() is not None

        host.start_daemon()
        answer = host.call("ping")
        assert answer["datapath_pid"] == datapath, answer
        assert answer["datapath"]["adopted"] is True, answer
        assert answer["datapath"]["restarts"] == 0, answer
        status = lab.status()
        assert status["failed"] is None and status["pending"] == [], status
        assert {n["name"]: n["state"] for n in status["nodes"]} == {"left": "running",
                                                                     "right": "running"}
        assert rx_frames(lab) >= counted, "a counter went down across vnetd's restart"
        wait_until(lambda: pings(lab, "left", "10.2.0.2"), message="left pings right after")

        # The adopted datapath is supervised: a crash is restarted and replayed as ever.
        os.kill(datapath, 9)
        wait_until(lambda: host.call("ping")["datapath_pid"] not in (None, datapath),
                   message="a new datapath after the adopted one's kill")
        wait_until(lambda: pings(lab, "left", "10.2.0.2"), message="left pings right again")
        assert rx_frames(lab) >= counted

        host.down("pair")
        assert host.lab_namespaces("pair") == set()
        assert host.call("status")["labs"] == []


def test_shutdown_all_stops_the_datapath_and_plain_shutdown_does_not() -> None:
    with TestHost() as host:
        lab = host.up(TOPOLOGIES / "pair.yaml")
        datapath = host.call("ping")["datapath_pid"]
        assert "keep running" in host.cli("shutdown").stdout
        assert host.process is not None
        host.process.wait(30)
        assert process_alive(datapath)
        wait_until(lambda: pings(lab, "left", "10.2.0.2"), message="pings with vnetd gone")

        host.start_daemon()
        assert host.call("ping")["datapath_pid"] == datapath
        assert "with its datapath" in host.cli("shutdown", "--all").stdout
        host.process.wait(30)
        wait_until(lambda: not process_alive(datapath), message="the datapath to stop")
        assert leftovers(host.state_dir) == []

        host.start_daemon()   # a new datapath, given the lab from its record
        assert host.call("ping")["datapath_pid"] != datapath
        assert host.call("ping")["datapath"]["adopted"] is False
        wait_until(lambda: pings(lab, "left", "10.2.0.2"), message="pings after a new start")
        host.down("pair")


@needs_kvm
def test_a_vm_runner_keeps_running_across_a_vnetd_restart_and_is_adopted() -> None:
    with TestHost() as host:
        lab = host.up(TOPOLOGIES / "adopt.yaml")
        wait_until(lambda: pings(lab, "c1", "10.30.0.11"), BOOT_WAIT,
                   message="c1 pings the VM")
        runner = host.call("node", node="vm1")["pid"]
        assert isinstance(runner, int)

        host.kill_daemon()
        assert process_alive(runner), "the VM runner died with vnetd"
        wait_until(lambda: pings(lab, "c1", "10.30.0.11"),
                   message="c1 to ping the VM while vnetd is down")

        host.start_daemon()
        node = host.call("node", node="vm1")
        assert (node["state"], node["pid"], node["adopted"]) == ("running", runner, True), node
        wait_until(lambda: host.call("node", node="vm1")["runner"]["answering"],
                   message="the adopted runner's control socket to answer in vnet status")
        assert "vm1" in host.cli("status").stdout
        console = host.cli("console", "vm1", "--no-follow").stdout
        assert console, "the adopted VM's console log is empty"

        # vnet vm stop stops an adopted runner; a restart of vnetd then leaves it stopped.
        assert "vm vm1: stopped" in host.cli("vm", "stop", "vm1").stdout
        wait_until(lambda: not process_alive(runner), message="the adopted runner to stop")
        host.terminate_daemon()
        host.start_daemon()
        assert host.call("node", node="vm1")["state"] == "stopped"
        assert "vm vm1: running" in host.cli("vm", "start", "vm1").stdout
        wait_until(lambda: pings(lab, "c1", "10.30.0.11"), BOOT_WAIT,
                   message="c1 pings the VM started again")

        host.down("adopt")
        assert host.lab_namespaces("adopt") == set()
        assert host.process is not None
        runners = [p for p in leftovers(host.state_dir) if p != host.process.pid
                   and b"vnet.kvm" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert runners == []


def test_a_crash_of_an_adopted_datapath_is_heard_through_its_new_lifeline() -> None:
    """vnetd stopped and started again adopts the datapath and asks it for a lifeline; the
    adopted datapath killed -9 is reported (how it died, from /proc while it was dying:
    heard before its exit) and restarted, and the lab forwards again."""
    with TestHost() as host:
        lab = host.up(TOPOLOGIES / "pair.yaml")
        wait_until(lambda: pings(lab, "left", "10.2.0.2"), message="left pings right")
        datapath = host.call("ping")["datapath_pid"]
        host.terminate_daemon()
        host.start_daemon()
        health = host.call("ping")["datapath"]
        assert (health["pid"], health["adopted"], health["lifeline"]) == (datapath, True,
                                                                          True), health
        assert f"adopted the running datapath, pid {datapath} (run 1), with a lifeline" in \
            host.log()

        os.kill(datapath, 9)
        wait_until(lambda: f"the datapath (pid {datapath}) was killed by SIGKILL" in host.log(),
                   message="vnetd's log to report the adopted datapath's death")
        wait_until(lambda: host.call("ping")["datapath"]["state"] == "running"
                   and host.call("ping")["datapath_pid"] not in (None, datapath),
                   message="a new datapath after the adopted one's kill")
        health = host.call("ping")["datapath"]
        assert health["restarts"] == 1 and "killed by SIGKILL" in str(health["last_failure"]), \
            health
        assert (health["adopted"], health["lifeline"]) == (False, True), health
        wait_until(lambda: pings(lab, "left", "10.2.0.2"), message="left pings right again")
        host.down("pair")
