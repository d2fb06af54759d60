"""KVM guests as lab nodes: the tiny guest on a TAP that is a port of the switch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_root
from vnet.testing import Lab, TestHost

pytestmark = [needs_root,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="needs /dev/kvm"),
              pytest.mark.vnet_topology("topologies/vms.yaml")]

UDP_ECHO = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            "s.settimeout(2); s.sendto(b'vnet', (sys.argv[1], 7)); print(s.recvfrom(64)[0])")


def ping(lab: Lab, node: str, address: str, count: int = 1) -> bool:
    return lab.exec(node, ["ping", "-c", str(count), "-W", "1", address]).returncode == 0


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def vm_status(lab: Lab, name: str) -> dict[str, object]:
    return next(n for n in lab.status()["nodes"] if n["name"] == name)


def test_vms_answer_ping_and_udp_echo_in_their_vlan_only(vnet_lab: Lab) -> None:
    assert wait_for(lambda: ping(vnet_lab, "c1", "10.10.0.11"))
    assert ping(vnet_lab, "c1", "10.10.0.12", count=2)
    echo = vnet_lab.exec("c1", [sys.executable, "-c", UDP_ECHO, "10.10.0.11"])
    assert echo.stdout.strip() == "b'vnet'", echo.stderr
    assert not ping(vnet_lab, "c3", "10.10.0.11")    # same subnet, other VLAN
    counters = vm_status(vnet_lab, "vm1")["nics"][0]["counters"]  # type: ignore[index]
    assert counters["rx_frames"] > 0 and counters["tx_frames"] > 0


def test_a_killed_runner_is_restarted_and_harms_nobody_else(vnet_lab: Lab) -> None:
    assert wait_for(lambda: ping(vnet_lab, "c1", "10.10.0.11"))
    first = vm_status(vnet_lab, "vm1")
    os.kill(int(first["pid"]), signal.SIGKILL)       # type: ignore[call-overload]
    assert ping(vnet_lab, "c1", "10.10.0.12")         # the other VM and the switch go on
    assert wait_for(lambda: vm_status(vnet_lab, "vm1")["pid"] not in (None, first["pid"]))
    again = vm_status(vnet_lab, "vm1")
    assert again["state"] == "running" and again["restarts"] == 1
    assert again["last_exit"] == "exit status -9"
    assert wait_for(lambda: ping(vnet_lab, "c1", "10.10.0.11"))


def test_restart_no_leaves_a_crashed_vm_until_started(vnet_lab: Lab) -> None:
    assert wait_for(lambda: ping(vnet_lab, "c1", "10.10.0.12"))
    os.kill(int(vm_status(vnet_lab, "vm2")["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    assert wait_for(lambda: vm_status(vnet_lab, "vm2")["state"] == "crashed")
    out = vnet_lab.host.cli("vm", "start", "vm2").stdout
    assert "vm vm2: running" in out
    assert wait_for(lambda: ping(vnet_lab, "c1", "10.10.0.12"))
    assert "vm vm2: stopped" in vnet_lab.host.cli("vm", "stop", "vm2").stdout
    assert not ping(vnet_lab, "c1", "10.10.0.12")


def test_console_shows_the_guest_banner(vnet_lab: Lab) -> None:
    assert wait_for(lambda: "up" in vnet_lab.host.cli("console", "vm1", "--no-follow").stdout)
    console = vnet_lab.host.cli("console", "vm1", "--no-follow").stdout
    assert "vnet tiny guest 1: cmdline=ping=10.10.0.12 ip=10.10.0.11/24" in console
    assert "tiny guest: eth0 " in console and "ip 10.10.0.11 up" in console


def test_a_vm_with_two_nics_has_two_switch_ports_and_answers_on_the_first(
        vnet_lab: Lab) -> None:
    vm2 = vm_status(vnet_lab, "vm2")
    nics = vm2["nics"]
    assert [(n["name"], n["vlans"]) for n in nics] == [("eth0", [10]), ("eth1", [20])]  # type: ignore[attr-defined]
    assert all(n["counters"] is not None for n in nics)  # type: ignore[attr-defined]
    assert wait_for(lambda: ping(vnet_lab, "c1", "10.10.0.12"))
    out = vnet_lab.host.exec(["ip", "-o", "link"]).stdout
    assert all(f" {n['ifname']}:" in out for n in nics)  # type: ignore[attr-defined]


def test_down_leaves_no_tap_and_no_runner(vnet_host: TestHost) -> None:
    topology = Path(__file__).parent / "topologies" / "vms.yaml"
    lab = vnet_host.up(topology)
    pids = [vm_status(lab, n)["pid"] for n in ("vm1", "vm2")]
    taps = {n["ifname"] for node in lab.status()["nodes"] for n in node["nics"]}
    vnet_host.down(lab.name)
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    out = vnet_host.exec(["ip", "-o", "link"]).stdout  # the host namespace's links
    assert not [t for t in taps if f" {t}:" in out or f" {t}@" in out]
    assert not list(Path(vnet_host.state_dir).glob("console-*.sock"))  # no console socket
    assert list(Path(vnet_host.state_dir).glob("console-vms-vm1.log"))  # the log is kept


def test_two_vms_reach_each_other(vnet_lab: Lab) -> None:
    """vm1's command line tells the tiny guest to ping vm2; its console shows the replies."""
    def replies() -> int:
        return vnet_lab.host.cli("console", "vm1", "--no-follow").stdout.count(
            "tiny guest: reply from 10.10.0.12 seq")
    assert wait_for(lambda: replies() >= 3, timeout=15)


def test_a_trunk_nic_on_a_vm_carries_tagged_frames(vnet_lab: Lab) -> None:
    """vm3 sits on a trunk of VLAN 10 and speaks only 802.1Q-tagged frames: a namespace node
    on the VLAN's access port reaches it, so the tags went both ways through the switch."""
    assert wait_for(lambda: ping(vnet_lab, "c1", "10.10.0.13"))
    console = vnet_lab.host.cli("console", "vm3", "--no-follow").stdout
    assert "ip 10.10.0.13 vlan 10 up" in console
    vm3 = vm_status(vnet_lab, "vm3")
    assert vm3["nics"][0]["mode"] == "trunk"  # type: ignore[index]
    assert not ping(vnet_lab, "c3", "10.10.0.13")


def test_console_socket_carries_output_and_input(vnet_lab: Lab) -> None:
    """What is typed on the console reaches the guest's UART (the tiny guest echoes it)."""
    import socket

    node = vnet_lab.host.call("node", node="vm2", lab=vnet_lab.name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
        console.settimeout(5)
        console.connect(node["console_socket"])
        console.sendall(b"hello vm2")
        seen = b""
        while b"hello vm2" not in seen:
            seen += console.recv(4096)
    detach = subprocess.run([sys.executable, "-m", "vnet.cli", "--socket",
                             vnet_lab.host.socket, "console", "vm2"], input=b"\x1d",
                            capture_output=True, timeout=30)
    assert detach.returncode == 0 and b"[detached]" in detach.stderr
    assert b"vnet tiny guest 1:" in detach.stdout          # the log first, then live


LINUX_KERNELS = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))


@pytest.mark.slow
@pytest.mark.skipif(not LINUX_KERNELS, reason="no Debian cloud kernel: apt-get install "
                    "linux-image-cloud-amd64 (.ci/install does)")
def test_a_linux_node_boots_under_vnetd_with_its_nic_announced(vnet_host: TestHost,
                                                                  tmp_path: Path) -> None:
    """A node with a Linux kernel: vnetd makes its TAP a switch port and runs the runner,
    which announces the NIC on the kernel's command line.  (Here the guest then stops at its
    first emulation failure, docs/kvm.md; on a VT-x/AMD-V host it boots on.)"""
    topology = tmp_path / "linux.yaml"
    topology.write_text(
        "name: linuxvm\nnetworks: {office: {vlan: 10}, lab: {vlan: 20}}\nnodes:\n"
        f"  lx: {{kind: vm, memory: 256M, vcpus: 2, kernel: {LINUX_KERNELS[-1]}, restart: "
        '"no", cmdline: "console=ttyS0 earlyprintk=serial,ttyS0,115200 vnet-node=lx",\n'
        "       nics: [{name: eth0, network: office}, {name: eth1, network: lab}]}\n")
    lab = vnet_host.up(topology)
    console = ""

    def booted() -> bool:
        nonlocal console
        console = vnet_host.cli("console", "lx", "--no-follow").stdout
        return "smpboot: Allowing 2 CPUs" in console

    assert wait_for(booted, timeout=90), console[-2000:]
    assert ("vnet-node=lx virtio_mmio.device=4K@0xd0000000:5 "
            "virtio_mmio.device=4K@0xd0002000:16") in console  # two NICs
    lx = vm_status(lab, "lx")
    assert [n["counters"] is not None for n in lx["nics"]] == [True, True]  # type: ignore[attr-defined]
    taps = {n["ifname"] for n in lx["nics"]}  # type: ignore[attr-defined]
    vnet_host.down(lab.name)
    out = vnet_host.exec(["ip", "-o", "link"]).stdout
    assert not [t for t in taps if f" {t}:" in out or f" {t}@" in out]
