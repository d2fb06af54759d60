"""What a command run in a node sees, and what vnet says when it cannot enter one.

``vnet exec`` (and the test helpers ``Lab.exec``, ``run_in_netns``, ``popen_in_netns``) enter
a node as ``ip netns exec`` does: the node's own /sys (its interfaces, MACs and counters) and
/etc/netns/NAMESPACE/* bound over /etc, in a mount namespace of the command's own, so that
nothing leaks back to the machine.  A vnetd started under ``ip netns exec`` (a private mount
namespace) would create namespaces nobody else can see: it refuses, naming ``--netns``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from tests.conftest import needs_root
from vnet.host import netns
from vnet.testing import Lab, TestHost, popen_in_netns
from vnet.topology import load_topology

pytestmark = needs_root

DECLARED_MAC = "02:aa:bb:cc:dd:01"
TOPOLOGY = """name: {lab}
networks:
  net: {{vlan: 100}}
nodes:
  left:  {{kind: netns, nics: [{{name: eth0, network: net, ip: 10.7.0.1/24}}]}}
  right: {{kind: netns, nics: [{{name: eth0, network: net, ip: 10.7.0.2/24,
                               mac: "{mac}"}}]}}
"""


@pytest.fixture
def topology(tmp_path: Path) -> Path:
    """A lab of its own name, so that /etc/netns/<its namespaces> are certainly ours."""
    path = tmp_path / "view.yaml"
    path.write_text(TOPOLOGY.format(lab=f"xv{secrets.token_hex(3)}", mac=DECLARED_MAC))
    return path


@pytest.fixture
def host() -> Iterator[TestHost]:
    with TestHost() as h:
        yield h


@pytest.fixture
def lab(host: TestHost, topology: Path) -> Lab:
    return host.up(topology)


def tx_packets(namespace: str) -> int:
    with IPRoute(netns=namespace) as ipr:
        link = ipr.link_lookup(ifname="eth0")[0]
        return int(ipr.get_links(link)[0].get("IFLA_STATS64")["tx_packets"])


def test_exec_sees_the_nodes_macs(host: TestHost, lab: Lab, topology: Path) -> None:
    nodes = {n.name: n for n in load_topology(topology).nodes}
    derived = nodes["left"].nics[0].mac
    assert nodes["right"].nics[0].mac == DECLARED_MAC
    for node, mac in (("left", derived), ("right", DECLARED_MAC)):
        out = host.cli("exec", node, "--", "cat", "/sys/class/net/eth0/address").stdout
        assert out.strip() == mac, f"vnet exec {node} sees another eth0 than the node's"
        # The test helpers enter a node the same way.
        assert lab.exec(node, ["cat", "/sys/class/net/eth0/address"]).stdout.strip() == mac
    with popen_in_netns(lab.netns("left"), ["cat", "/sys/class/net/eth0/address"],
                        stdout=subprocess.PIPE, text=True) as process:
        assert process.communicate(timeout=30)[0].strip() == derived


def test_exec_sees_the_nodes_counters(host: TestHost, lab: Lab) -> None:
    namespace = lab.netns("left")
    counter = ["cat", "/sys/class/net/eth0/statistics/tx_packets"]
    below = tx_packets(namespace)
    seen = int(host.cli("exec", "left", "--", *counter).stdout)
    above = tx_packets(namespace)
    assert below <= seen <= above, f"tx_packets {seen} is not the node's ({below}..{above})"
    host.cli("exec", "left", "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.7.0.2")
    after = int(host.cli("exec", "left", "--", *counter).stdout)
    assert after >= seen + 3, f"tx_packets went from {seen} to {after} after 3 pings"


def test_exec_binds_etc_netns_over_etc(host: TestHost, lab: Lab) -> None:
    namespace = lab.netns("left")
    etc = Path("/etc/netns") / namespace
    assert not etc.exists(), f"{etc} exists already: not this test's to change"
    machine_hosts = Path("/etc/hosts").read_text()
    marker = f"10.7.0.9 only-in-{namespace}\n"
    made_parent = not etc.parent.exists()
    etc.mkdir(parents=True)
    try:
        (etc / "hosts").write_text(marker)
        assert host.cli("exec", "left", "--", "cat", "/etc/hosts").stdout == marker
        assert lab.exec("left", ["cat", "/etc/hosts"]).stdout == marker
        # Another node has no such directory: it sees the machine's file.
        assert host.cli("exec", "right", "--", "cat", "/etc/hosts").stdout == machine_hosts
    finally:
        shutil.rmtree(etc)
        if made_parent:
            etc.parent.rmdir()
    # Nothing the command's mount namespace did came back to the machine.
    assert Path("/etc/hosts").read_text() == machine_hosts
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point, source = line.split()[4], line.split(" - ")[1].split()[1]
        assert point != "/etc/hosts" and source != namespace, f"leaked to the machine: {line}"


def test_exec_of_a_node_whose_namespace_is_gone_says_what_to_do(host: TestHost, lab: Lab
                                                                 ) -> None:
    # The file is there but the namespace is not (the bind mount is gone).
    unmounted = lab.netns("left")
    subprocess.run(["umount", str(netns.netns_path(unmounted))], check=True)
    # Removed altogether behind vnet's back.
    removed = lab.netns("right")
    subprocess.run(["ip", "netns", "del", removed], check=True)
    for node, namespace in (("left", unmounted), ("right", removed)):
        failed = host.cli("exec", node, "--", "true", check=False)
        assert failed.returncode == 1, failed
        assert "Errno" not in failed.stderr, failed.stderr
        assert namespace in failed.stderr and "vnet up" in failed.stderr, failed.stderr
    host.down(lab.name)  # goes down cleanly all the same
    assert not netns.netns_path(unmounted).exists()


@pytest.mark.parametrize("wrapper", ["ip netns exec", "unshare -m"])
def test_vnetd_in_a_private_mount_namespace_refuses_and_names_netns(tmp_path: Path,
                                                                    wrapper: str) -> None:
    name = f"vnt-mnt-{secrets.token_hex(3)}"
    netns.create(name)
    socket_path = tmp_path / "vnetd.sock"
    vnetd = [sys.executable, "-m", "vnet.daemon.main", "--socket", str(socket_path),
             "--state-dir", str(tmp_path / "state")]
    # ip netns exec leaves /run/netns a slave mount; unshare -m makes every mount private.
    command = (["ip", "netns", "exec", name, *vnetd] if wrapper == "ip netns exec"
               else ["unshare", "-m", *vnetd, "--netns", name])
    try:
        daemon = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        try:
            _, stderr = daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.communicate()
            pytest.fail(f"vnetd kept running under {wrapper}: the namespaces it creates "
                        "would be invisible to the rest of the machine")
        assert daemon.returncode == 1, stderr
        assert f"'vnetd --netns {name} ...'" in stderr, stderr
        assert "mount namespace of its own" in stderr and "Traceback" not in stderr, stderr
        assert not socket_path.exists()
    finally:
        netns.remove(name)


def test_vnet_up_under_ip_netns_exec_says_why_vnetd_did_not_start(tmp_path: Path,
                                                                  topology: Path) -> None:
    """``vnet up`` starts vnetd for the user: when that vnetd refuses, the user reads its
    reason (and the --netns advice), not just "see the log"."""
    name = f"vnt-mnt-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        result = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-m", "vnet.cli",
             "--socket", str(tmp_path / "vnetd.sock"), "--state-dir", str(tmp_path / "state"),
             "up", str(topology)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert result.returncode != 0
        assert "vnetd did not start: this vnetd runs in a mount namespace of its own" \
            in result.stderr, result.stderr
        assert f"'vnetd --netns {name} ...'" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "[Errno" not in result.stderr
    finally:
        netns.remove(name)
