"""The CLI and vnetd on one host: check, up (idempotent, rolled back on failure), status, fdb,
exec, down (removes exactly what the lab created), datapath restarts."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from tests.conftest import needs_root
from vnet.daemon import naming
from vnet.host import netns
from vnet.testing import TestHost, wait_until

pytestmark = needs_root
HERE = Path(__file__).parent
PAIR = HERE / "topologies" / "pair.yaml"
OTHER = HERE / "topologies" / "other.yaml"
BAD = """name: bad
networks:
  net: {vlan: 5000}
nodes:
  n1: {kind: netns, nics: [{name: eth0, network: nett}]}
"""


def links_in(host: TestHost) -> set[str]:
    with IPRoute(netns=host.name) as ipr:
        return {str(link.get("IFLA_IFNAME")) for link in ipr.get_links()}


@pytest.fixture
def host():
    with TestHost() as h:
        yield h


def test_check_prints_ok_or_the_errors(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "vnet.cli", "check", str(PAIR)],
                        capture_output=True, text=True)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "ok\n", "")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    out = subprocess.run([sys.executable, "-m", "vnet.cli", "check", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
    assert f"{bad}:3:" in out.stderr and "5000" in out.stderr
    assert f"{bad}:5:" in out.stderr and "nett" in out.stderr


def test_up_is_idempotent_and_down_removes_everything(host: TestHost) -> None:
    before_links = links_in(host)
    first = host.cli("up", str(PAIR))
    assert "up (created" in first.stdout
    assert host.lab_namespaces("pair") == {host.netns_name("pair", n) for n in ("left", "right")}
    created_links = links_in(host) - before_links
    assert created_links == {naming.host_ifname("pair", n, "eth0") for n in ("left", "right")}
    again = host.cli("up", str(PAIR))
    assert "already up, nothing changed" in again.stdout
    assert links_in(host) - before_links == created_links
    down = host.cli("down", str(PAIR))
    assert "down" in down.stdout
    assert host.lab_namespaces("pair") == set()
    assert links_in(host) == before_links
    assert not list(Path(host.state_dir, "labs").iterdir())


def test_status_table_and_json(host: TestHost) -> None:
    host.cli("up", str(PAIR))
    host.cli("exec", "left", "--", "ping", "-c", "1", "-W", "2", "10.2.0.2")
    table = host.cli("status").stdout
    assert table.splitlines()[0].split()[:5] == ["LAB", "NODE", "KIND", "STATE", "NIC"]
    assert "left" in table and "right" in table and "100" in table
    status = json.loads(host.cli("status", "--json").stdout)
    (lab,) = status["labs"]
    nodes = {n["name"]: n for n in lab["nodes"]}
    nic = nodes["left"]["nics"][0]
    assert nic["vlans"] == [100] and nic["mode"] == "access" and nic["ip"] == ["10.2.0.1/24"]
    assert nic["counters"]["rx_frames"] >= 2 and nic["counters"]["tx_frames"] >= 2
    fdb = host.cli("fdb", "pair").stdout
    assert fdb.splitlines()[0].split() == ["VLAN", "MAC", "PORT", "AGE", "TYPE"]
    assert nic["mac"] in fdb and "learned" in fdb
    host.cli("down", str(PAIR))


def test_exec_runs_inside_the_node(host: TestHost) -> None:
    host.cli("up", str(PAIR))
    out = host.cli("exec", "right", "--", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert "10.2.0.2/24" in out
    failed = host.cli("exec", "nosuch", "--", "true", check=False)
    assert failed.returncode == 1 and "no node 'nosuch'" in failed.stderr
    host.cli("down", str(PAIR))


def test_down_leaves_other_labs_and_strangers_alone(host: TestHost) -> None:
    host.cli("up", str(PAIR))
    host.cli("up", str(OTHER))
    # A stranger's namespace and interface with names like ours.
    leftover = host.netns_name("pair", "leftover")
    netns.create(leftover)
    try:
        with IPRoute(netns=host.name) as ipr:
            ipr.link("add", ifname="vn0000000000", kind="veth", peer={"ifname": "vn0000000001"})
        host.cli("down", str(PAIR))
        assert host.lab_namespaces("pair") == {leftover}
        assert host.lab_namespaces("other") == {host.netns_name("other", "o1")}
        assert {"vn0000000000", "vn0000000001"} <= links_in(host)
        assert host.cli("exec", "o1", "--", "true").returncode == 0
        host.cli("down", str(OTHER))
    finally:
        netns.remove(leftover)


def test_failure_half_way_rolls_back(host: TestHost) -> None:
    clash = naming.host_ifname("pair", "right", "eth0")
    with IPRoute(netns=host.name) as ipr:  # somebody else's interface with the name we need
        ipr.link("add", ifname=clash, kind="veth", peer={"ifname": "stranger1"})
    before = links_in(host)
    out = host.cli("up", str(PAIR), check=False)
    assert out.returncode == 1
    assert f"interface {clash} already exists" in out.stderr
    assert host.lab_namespaces("pair") == set()     # left was created, then rolled back
    assert links_in(host) == before                 # the stranger's link is still there
    assert host.call("status")["labs"] == []


def test_a_strangers_namespace_of_our_name_is_refused_and_left_alone(host: TestHost) -> None:
    """The rollback of a refused up deletes what the up made, never the stranger's object
    that made it fail (it once removed the namespace it had refused to take over)."""
    stranger = host.netns_name("pair", "right")
    netns.create(stranger)
    try:
        out = host.cli("up", str(PAIR), check=False)
        assert out.returncode == 1
        assert f"network namespace {stranger!r} already exists" in out.stderr
        assert host.lab_namespaces("pair") == {stranger}, "left rolled back, the stranger's kept"
        assert host.call("status")["labs"] == []
    finally:
        netns.remove(stranger)


def test_a_lab_comes_up_beside_a_namespace_of_the_default_name(host: TestHost) -> None:
    """A test host's vnetd names its nodes with a prefix of its own, so the default name
    (vnet-pair-left: left by an earlier, killed test run, or another vnetd's) is no clash,
    and vnet leaves that namespace alone (every later up once refused on such leftovers)."""
    stranger = naming.netns_name("pair", "left")
    made = not netns.exists(stranger)     # a real leftover is a stranger too: keep it
    if made:
        netns.create(stranger)
    try:
        inode = os.stat(netns.netns_path(stranger)).st_ino
        lab = host.up(PAIR)
        assert lab.netns("left") == host.netns_name("pair", "left") != stranger
        assert lab.exec("left", ["ping", "-c", "1", "-W", "2", "10.2.0.2"]).returncode == 0
        host.down("pair")
        assert host.lab_namespaces("pair") == set()
        assert os.stat(netns.netns_path(stranger)).st_ino == inode
    finally:
        if made:
            netns.remove(stranger)


def test_a_failed_change_puts_back_what_it_had_removed(host: TestHost, tmp_path: Path) -> None:
    """The change re-addresses left (its node is deleted and made anew) and adds a node that
    cannot be created: the rollback removes the new left and restores the old one."""
    host.cli("up", str(PAIR))
    clash = naming.host_ifname("pair", "third", "eth0")
    with IPRoute(netns=host.name) as ipr:
        ipr.link("add", ifname=clash, kind="veth", peer={"ifname": "stranger2"})
    changed = tmp_path / "pair.yaml"
    changed.write_text(PAIR.read_text().replace("10.2.0.1/24", "10.2.0.11/24") + (
        "  third: {kind: netns, nics: [{name: eth0, network: net, ip: 10.2.0.3/24}]}\n"))
    out = host.cli("up", str(changed), check=False)
    assert out.returncode == 1 and f"interface {clash} already exists" in out.stderr
    assert host.lab_namespaces("pair") == {host.netns_name("pair", n) for n in ("left", "right")}
    left = next(n for n in host.call("status", lab="pair")["labs"][0]["nodes"]
                if n["name"] == "left")
    assert left["nics"][0]["ip"] == ["10.2.0.1/24"]   # the old address, recorded
    ping = host.cli("exec", "right", "--", "ping", "-c", "1", "-W", "2", "10.2.0.1")
    assert ping.returncode == 0, ping.stdout         # and really there, through the switch
    host.cli("down", str(PAIR))
    assert clash in links_in(host)                   # the stranger's link is still there


def test_vnet_up_starts_a_vnetd_that_leaves_with_the_last_lab(tmp_path: Path) -> None:
    host_ns = f"vnt-auto-{os.getpid()}"
    # That vnetd has the default prefix: a lab name of this run's own keeps its namespaces
    # (vnet-LAB-NODE) clear of any other run's.
    lab = f"auto-{secrets.token_hex(3)}"
    topology = tmp_path / "pair.yaml"
    topology.write_text(PAIR.read_text().replace("name: pair", f"name: {lab}", 1))
    netns.create(host_ns)
    cli = [sys.executable, "-m", "vnet.cli", "--netns", host_ns, "--socket",
           str(tmp_path / "s.sock"), "--state-dir", str(tmp_path / "state")]
    try:
        subprocess.run([*cli, "up", str(topology)], check=True, capture_output=True)
        pid = json.loads(subprocess.run([*cli, "status", "--json"], check=True,
                                        capture_output=True).stdout)["daemon"]["pid"]
        subprocess.run([*cli, "down", str(topology)], check=True, capture_output=True)
        assert not Path(f"/proc/{pid}").exists(), "vnetd stayed after the last lab went down"
        assert not (tmp_path / "s.sock").exists()
        prefix = naming.netns_name(lab, "")
        assert not [n for n in netns.list_names() if n.startswith(prefix)]
    finally:
        subprocess.run([*cli, "down", "--lab", lab], capture_output=True)
        netns.remove(host_ns)


def test_datapath_killed_is_restarted_and_ports_replayed(host: TestHost) -> None:
    lab = host.up(PAIR)
    assert lab.exec("left", ["ping", "-c", "1", "-W", "2", "10.2.0.2"]).returncode == 0
    first = host.call("ping")
    os.kill(first["datapath_pid"], signal.SIGKILL)
    wait_until(lambda: host.call("ping")["datapath_pid"] not in (None, first["datapath_pid"]),
               message="vnetd to restart its datapath")
    assert host.call("ping")["datapath_restarts"] == 1
    # The replay of bridges and ports runs in the background right after the restart.
    wait_until(lambda: lab.exec("left", ["ping", "-c", "1", "-W", "1", "10.2.0.2"]
                                ).returncode == 0,
               message="forwarding after the datapath restart (left pings right)")


def test_up_with_a_changed_file_changes_only_what_changed(host: TestHost, tmp_path: Path) -> None:
    changed = tmp_path / "pair.yaml"
    changed.write_text(PAIR.read_text().replace("10.2.0.1/24", "10.2.0.11/24"))
    host.cli("up", str(PAIR))
    right = netns.netns_path(host.netns_name("pair", "right"))
    right_netns_inode = os.stat(right).st_ino
    out = host.cli("up", str(changed)).stdout
    assert "created 2, removed 2" in out     # left's node and its port, nothing else
    assert os.stat(right).st_ino == right_netns_inode
    ping = host.cli("exec", "right", "--", "ping", "-c", "1", "-W", "2", "10.2.0.11")
    assert ping.returncode == 0
    host.cli("down", str(changed))
