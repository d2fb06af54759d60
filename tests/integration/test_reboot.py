"""vnetd after a reboot: its records stay, the kernel's objects are gone.

A reboot is played on a test host: vnetd is stopped, then everything the kernel held for
the lab is taken away (its namespaces, every link marked as its own, the host's nftables
tables, its dnsmasq, IP forwarding), and vnetd is started again.  It must start, bring the
lab back as its record says (frames flow again, VMs that ran run again), and where a lab
cannot come back, say why in ``vnet status`` and still let ``vnet down`` finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tests.conftest import needs_root
from tests.integration.test_networks import External
from vnet.host import netns
from vnet.testing import Lab, TestHost, wait_until

pytestmark = needs_root
TOPOLOGIES = Path(__file__).parent / "topologies"
needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                               reason="needs /dev/kvm")


def nft_tables(host: TestHost) -> set[str]:
    listed = host.exec(["nft", "list", "tables"], check=True).stdout
    return {line.removeprefix("table ").strip() for line in listed.splitlines() if line}


def take_everything_away(host: TestHost, lab: str) -> None:
    """What a reboot does to a lab while vnetd is down (its record is on disk and stays)."""
    for pid_file in Path(host.state_dir).glob(f"dhcp-{lab}-*.pid"):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)   # its dnsmasq
    for name in host.lab_namespaces(lab):
        netns.remove(name)
    with IPRoute(netns=host.name) as ipr:
        for link in ipr.get_links():
            if (link.get("IFLA_IFALIAS") or "").startswith(f"vnet:{lab}:"):
                with contextlib.suppress(NetlinkError):   # gone with its veth peer
                    ipr.link("del", index=link["index"])
    host.exec(["nft", "flush", "ruleset"], check=True)   # in the test's host namespace only
    netns.write_sysctl(host.name, "net.ipv4.ip_forward", "0")


def pings(lab: Lab, node: str, address: str) -> bool:
    return lab.exec(node, ["ping", "-c", "1", "-W", "1", address]).returncode == 0


def test_a_lab_comes_back_after_a_reboot(tmp_path: Path) -> None:
    """Namespaces, veths, the gateway, the NAT table, dnsmasq and the DHCP lease are gone
    when vnetd starts: it rebuilds them all, and the nodes talk again."""
    with TestHost() as host:
        lab = host.up(TOPOLOGIES / "reboot.yaml")
        wait_until(lambda: pings(lab, "a", "10.10.0.2"), message="a pings b before the reboot")
        host.stop_daemon()
        take_everything_away(host, "reboot")
        assert host.lab_namespaces("reboot") == set() and nft_tables(host) == set()

        host.start_daemon()   # before the fix: "datapath add_port: ... No such device"
        status = lab.status()
        assert status["failed"] is None and status["pending"] == [], status
        assert {n["name"]: n["state"] for n in status["nodes"]} == dict.fromkeys(
            ("a", "b", "g1", "d1"), "running")
        wait_until(lambda: pings(lab, "a", "10.10.0.2"), message="a pings b after the reboot")
        wait_until(lambda: pings(lab, "g1", "192.168.20.1"),
                   message="g1 pings its rebuilt gateway")
        wait_until(lambda: pings(lab, "g1", "192.168.20.50"),
                   message="g1 pings d1 at the static lease the new dnsmasq gave it again")
        assert "ip vnet-reboot" in nft_tables(host)
        assert netns.read_sysctl(host.name, "net.ipv4.ip_forward") == "1"
        host.down("reboot")
        assert host.lab_namespaces("reboot") == set()
        assert not [t for t in nft_tables(host) if "vnet" in t]


@needs_kvm
def test_vms_that_ran_run_again_after_a_reboot_and_a_stopped_one_stays_stopped() -> None:
    with TestHost() as host:
        lab = host.up(TOPOLOGIES / "replay.yaml")
        for address in ("10.10.0.11", "10.10.0.13"):
            wait_until(lambda a=address: pings(lab, "c1", a),  # type: ignore[misc]
                       timeout=60, message=f"c1 pings the VM at {address}")
        assert "vm vm1: stopped" in host.cli("vm", "stop", "vm1").stdout
        host.stop_daemon()
        take_everything_away(host, "replay")   # the TAPs too (they carry the lab's mark)

        host.start_daemon()
        status = lab.status()
        assert status["failed"] is None and status["pending"] == [], status
        states = {n["name"]: n["state"] for n in status["nodes"] if n["kind"] == "vm"}
        assert states == {"vm1": "stopped", "vm2": "running", "vm3": "running"}, states
        wait_until(lambda: pings(lab, "c1", "10.10.0.13"), timeout=60,
                   message="c1 pings vm3, running again on its rebuilt TAP")
        wait_until(lambda: pings(lab, "c1", "10.10.0.2"), message="c1 pings c2")
        assert not pings(lab, "c1", "10.10.0.11"), "vm1 was stopped by its user"


@pytest.fixture
def bridged_host() -> Iterator[tuple[TestHost, External, External]]:
    with TestHost() as host:
        lan = External(host, "eth2", "198.51.100.1/24")
        tagged_lan = External(host, "eth3", None)
        try:
            yield host, lan, tagged_lan
        finally:
            lan.close()
            tagged_lan.close()


def test_a_lab_that_cannot_come_back_is_failed_with_why_and_down_finishes(
        bridged_host: tuple[TestHost, External, External]) -> None:
    """The reboot also took the bridged network's uplink eth2 away (a NIC renamed, a
    missing USB adapter): vnetd starts, the rest of the lab is back, the status says what
    is missing and how to go on, and down removes the lab."""
    host, lan, _tagged = bridged_host
    lab = host.up(TOPOLOGIES / "bridged.yaml")
    host.stop_daemon()
    take_everything_away(host, "brlab")
    lan.close()    # and eth2 with it

    host.start_daemon()   # before the fix: vnetd did not start at all
    status = lab.status()
    assert status["failed"] is not None and "interface eth2 does not exist" in status["failed"]
    assert "vnet down --lab brlab" in status["failed"]
    assert status["pending"] == ["port:brlab/@uplink.eth2"]
    assert {n["name"]: n["state"] for n in status["nodes"]} == {"b1": "running",
                                                                 "b2": "running"}
    shown = host.cli("status")
    assert "lab brlab: could not be restored at vnetd's start" in shown.stderr
    assert "Traceback" not in shown.stderr and "Errno" not in shown.stderr

    # As the status says: once eth2 is back, vnet up brings the rest of the lab back.
    lan = External(host, "eth2", "198.51.100.1/24")
    try:
        host.cli("up", str(TOPOLOGIES / "bridged.yaml"))
        status = lab.status()
        assert status["failed"] is None and status["pending"] == [], status
        wait_until(lambda: lan.run("ping", "-c", "1", "-W", "1", "198.51.100.10"
                                   ).returncode == 0, message="the LAN pings b1 through eth2")
    finally:
        lan.close()
    down = host.cli("down", "--lab", "brlab")
    assert "lab brlab: down" in down.stdout
    assert host.lab_namespaces("brlab") == set()
    assert not [t for t in nft_tables(host) if "vnet" in t]
    assert not list(Path(host.state_dir, "labs").iterdir())
    assert host.call("status")["labs"] == []


def test_down_of_a_lab_whose_namespaces_vanished_leaves_nothing(tmp_path: Path) -> None:
    """The namespaces went away under vnetd (unmounted, as those of a vnetd that ran under
    'ip netns exec' did when it stopped), leaving empty files in /run/netns and the port
    tables of the dead veths.  After vnetd's start, down removes the record, the tables and
    the files of vnet's own names, and not a stranger's file next to them."""
    with TestHost() as host:   # its close removes the files of its prefix a failure left
        stranger = netns.netns_path(host.netns_name("pair", "stranger"))
        stranger.touch()
        ours = [host.netns_name("pair", n) for n in ("left", "right")]
        host.up(TOPOLOGIES / "pair.yaml")
        host.stop_daemon()
        for name in ours:
            subprocess.run(["umount", str(netns.netns_path(name))], check=True)
            assert netns.netns_path(name).exists() and not netns.is_live(name)
        assert len([t for t in nft_tables(host) if "vnet-port-" in t]) == 2

        host.start_daemon()
        host.cli("down", "--lab", "pair")
        assert host.lab_namespaces("pair") == {stranger.name}
        assert not [t for t in nft_tables(host) if "vnet" in t]
        assert not list(Path(host.state_dir, "labs").iterdir())


def vnetd_processes(state_dir: Path) -> list[int]:
    """vnetd and its datapath, found by the state directory on their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(state_dir).encode() in cmdline and b"vnet." in cmdline:
                found.append(int(entry.name))
    return found


def test_a_refused_up_stops_the_vnetd_it_started(tmp_path: Path) -> None:
    """vnet up starts vnetd, which refuses the lab (its uplink eth2 does not exist): that
    vnetd and its datapath leave again, as after the last down.  One that holds a lab
    stays."""
    host_ns = f"vnt-refuse-{os.getpid()}"
    # That vnetd has the default prefix: a lab name of this run's own keeps its namespaces
    # (vnet-LAB-NODE) clear of any other run's.
    lab = f"refuse-{secrets.token_hex(3)}"
    pair = tmp_path / "pair.yaml"
    pair.write_text((TOPOLOGIES / "pair.yaml").read_text().replace("name: pair", f"name: {lab}"))
    netns.create(host_ns)
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "vnet.cli", "--netns", host_ns, "--socket",
           str(tmp_path / "s.sock"), "--state-dir", str(state)]
    try:
        refused = subprocess.run([*cli, "up", str(TOPOLOGIES / "bridged.yaml")],
                                 capture_output=True, text=True)
        assert refused.returncode == 1 and "uplink eth2 does not exist" in refused.stderr
        assert vnetd_processes(state) == [], "the vnetd vnet up started is still there"
        assert not (tmp_path / "s.sock").exists()

        subprocess.run([*cli, "up", str(pair)], check=True, capture_output=True)
        pid = json.loads(subprocess.run([*cli, "status", "--json"], check=True,
                                        capture_output=True).stdout)["daemon"]["pid"]
        refused = subprocess.run([*cli, "up", str(TOPOLOGIES / "bridged.yaml")],
                                 capture_output=True, text=True)
        assert refused.returncode == 1 and "uplink eth2 does not exist" in refused.stderr
        assert pid in vnetd_processes(state), "a vnetd holding a lab must stay"
        subprocess.run([*cli, "down", "--lab", lab], check=True, capture_output=True)
        assert vnetd_processes(state) == []
    finally:
        subprocess.run([*cli, "down", "--lab", lab], capture_output=True)
        for pid in vnetd_processes(state):   # only what this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        netns.remove(host_ns)
