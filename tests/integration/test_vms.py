"""KVM guests as lab nodes: the tiny guest on a TAP that is a port of the switch."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from vnet.bench.vmbringup import smaps_rollup
from vnet.testing import Lab, TestHost, wait_until

pytestmark = [needs_root,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="needs /dev/kvm"),
              pytest.mark.vnet_topology("topologies/vms.yaml")]

UDP_ECHO = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            "s.settimeout(10); s.sendto(b'vnet', (sys.argv[1], 7)); print(s.recvfrom(64)[0])")
BOOT_WAIT = 60.0  # a tiny guest's ring-0 start is emulated (docs/kvm.md): slow on some hosts


def ping(lab: Lab, node: str, address: str, count: int = 1) -> bool:
    return lab.exec(node, ["ping", "-c", str(count), "-W", "1", address]).returncode == 0


def answers(lab: Lab, node: str, address: str) -> None:
    """Wait until ``address`` answers ``node``'s ping (a guest that is still booting does
    not)."""
    wait_until(lambda: ping(lab, node, address), BOOT_WAIT,
               message=f"{address} to answer {node}'s ping")


def console(lab: Lab, vm: str) -> str:
    return str(lab.host.cli("console", vm, "--no-follow").stdout)


def console_saying(lab: Lab, vm: str, text: str, timeout: float = BOOT_WAIT) -> str:
    """``vm``'s console log, once it contains ``text``."""
    log = ""

    def says() -> bool:
        nonlocal log
        log = console(lab, vm)
        return text in log

    wait_until(says, timeout,
               message=lambda: f"{vm}'s console to say {text!r}; it shows:\n{log[-2000:]}")
    return log


def vm_status(lab: Lab, name: str) -> dict[str, object]:
    return next(n for n in lab.status()["nodes"] if n["name"] == name)


def test_vms_answer_ping_and_udp_echo_in_their_vlan_only(vnet_lab: Lab) -> None:
    answers(vnet_lab, "c1", "10.10.0.11")
    answers(vnet_lab, "c1", "10.10.0.12")
    echo = vnet_lab.exec("c1", [sys.executable, "-c", UDP_ECHO, "10.10.0.11"])
    assert echo.stdout.strip() == "b'vnet'", echo.stderr
    assert not ping(vnet_lab, "c3", "10.10.0.11")    # same subnet, other VLAN
    counters = vm_status(vnet_lab, "vm1")["nics"][0]["counters"]  # type: ignore[index]
    assert counters["rx_frames"] > 0 and counters["tx_frames"] > 0


def test_status_shows_the_runners_own_counters_and_a_runner_that_does_not_answer(
        vnet_lab: Lab) -> None:
    answers(vnet_lab, "c1", "10.10.0.11")

    def counting_runner() -> dict[str, Any] | None:
        runner: dict[str, Any] = vm_status(vnet_lab, "vm1")["runner"]  # type: ignore[assignment]
        if not runner["answering"]:
            return None
        queues = {q["queue"]: q for q in runner["devices"][0]["queues"]}
        return runner if queues["rx"]["frames"] > 0 and queues["tx"]["frames"] > 0 else None

    runner = wait_until(counting_runner, 30, "vm1's runner to report its NIC's frames")
    assert runner is not None
    assert runner["state"] == "running" and runner["vcpus"] == [{"index": 0,
                                                                 "state": "running"}]
    assert runner["devices"][0]["kind"] == "virtio-net"
    pid = int(vm_status(vnet_lab, "vm1")["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGSTOP)  # a wedged runner: its control socket cannot answer
    try:
        stuck = wait_until(lambda: not vm_status(vnet_lab, "vm1")["runner"][  # type: ignore[index]
            "answering"] and vm_status(vnet_lab, "vm1")["runner"], 30,
            "status to show vm1's runner as not answering")
        assert "no answer within" in stuck["why"]  # type: ignore[index]
        assert vm_status(vnet_lab, "vm1")["pid"] == pid
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: vm_status(vnet_lab, "vm1")["runner"]["answering"],  # type: ignore[index]
               30, "vm1's runner to answer again")


def test_runners_are_forked_from_one_warm_parent_and_share_its_pages(vnet_lab: Lab) -> None:
    """A runner exec'd on its own imports everything again and holds ~17 MiB of its own
    (USS); one forked from the warm parent shares the interpreter's pages."""
    answers(vnet_lab, "c1", "10.10.0.11")
    answers(vnet_lab, "c1", "10.10.0.12")
    pids = [int(vm_status(vnet_lab, vm)["pid"]) for vm in ("vm1", "vm2")]  # type: ignore[call-overload]
    parents = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
               for pid in pids}
    assert len(parents) == 1
    parent_cmdline = Path(f"/proc/{parents.pop()}/cmdline").read_bytes()
    assert b"vnet.kvm.forkserver" in parent_cmdline
    for pid in pids:
        uss, _pss = smaps_rollup(pid)
        assert uss < 12 << 20, f"runner {pid}: {uss >> 20} MiB of its own"


def test_a_killed_runner_is_restarted_and_harms_nobody_else(vnet_lab: Lab) -> None:
    answers(vnet_lab, "c1", "10.10.0.11")
    answers(vnet_lab, "c1", "10.10.0.12")
    first, other = vm_status(vnet_lab, "vm1"), vm_status(vnet_lab, "vm2")
    os.kill(int(first["pid"]), signal.SIGKILL)       # type: ignore[call-overload]
    assert ping(vnet_lab, "c1", "10.10.0.12")         # the other VM and the switch go on
    wait_until(lambda: vm_status(vnet_lab, "vm1")["pid"] not in (None, first["pid"]),
               message="vm1's runner to be started again")
    again = vm_status(vnet_lab, "vm1")
    assert again["state"] == "running" and again["restarts"] == 1
    assert again["last_exit"] == "exit status -9"
    answers(vnet_lab, "c1", "10.10.0.11")
    assert vm_status(vnet_lab, "vm2")["pid"] == other["pid"]  # never restarted


def test_restart_no_leaves_a_crashed_vm_until_started(vnet_lab: Lab) -> None:
    answers(vnet_lab, "c1", "10.10.0.12")
    os.kill(int(vm_status(vnet_lab, "vm2")["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    wait_until(lambda: vm_status(vnet_lab, "vm2")["state"] == "crashed",
               message=lambda: f"vm2 to be left crashed; it is "
                               f"{vm_status(vnet_lab, 'vm2')['state']}")
    out = vnet_lab.host.cli("vm", "start", "vm2").stdout
    assert "vm vm2: running" in out
    answers(vnet_lab, "c1", "10.10.0.12")
    assert "vm vm2: stopped" in vnet_lab.host.cli("vm", "stop", "vm2").stdout
    assert not ping(vnet_lab, "c1", "10.10.0.12")


def test_console_shows_the_guest_banner(vnet_lab: Lab) -> None:
    log = console_saying(vnet_lab, "vm1", "ip 10.10.0.11 up")
    assert "vnet tiny guest 1: cmdline=ping=10.10.0.12 ip=10.10.0.11/24" in log
    assert "tiny guest: eth0 " in log


def test_a_vm_with_two_nics_has_two_switch_ports_and_answers_on_the_first(
        vnet_lab: Lab) -> None:
    vm2 = vm_status(vnet_lab, "vm2")
    nics = vm2["nics"]
    assert [(n["name"], n["vlans"]) for n in nics] == [("eth0", [10]), ("eth1", [20])]  # type: ignore[attr-defined]
    assert all(n["counters"] is not None for n in nics)  # type: ignore[attr-defined]
    answers(vnet_lab, "c1", "10.10.0.12")
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
        return console(vnet_lab, "vm1").count("tiny guest: reply from 10.10.0.12 seq")
    wait_until(lambda: replies() >= 3, BOOT_WAIT,
               message=lambda: f"3 replies from vm2 in vm1's console; it shows {replies()}")


def test_a_trunk_nic_on_a_vm_carries_tagged_frames(vnet_lab: Lab) -> None:
    """vm3 sits on a trunk of VLAN 10 and speaks only 802.1Q-tagged frames: a namespace node
    on the VLAN's access port reaches it, so the tags went both ways through the switch."""
    answers(vnet_lab, "c1", "10.10.0.13")
    assert "ip 10.10.0.13 vlan 10 up" in console(vnet_lab, "vm3")
    vm3 = vm_status(vnet_lab, "vm3")
    assert vm3["nics"][0]["mode"] == "trunk"  # type: ignore[index]
    assert not ping(vnet_lab, "c3", "10.10.0.13")


def test_console_socket_carries_output_and_input(vnet_lab: Lab) -> None:
    """What is typed on the console reaches the guest's UART (the tiny guest echoes it)."""
    import socket

    console_saying(vnet_lab, "vm2", "ip 10.10.0.12 up")  # it echoes its input from then on
    node = vnet_lab.host.call("node", node="vm2", lab=vnet_lab.name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.connect(node["console_socket"])
        live.settimeout(0.05)
        live.sendall(b"hello vm2")
        seen = b""

        def echoed() -> bool:
            nonlocal seen
            with contextlib.suppress(TimeoutError):
                seen += live.recv(4096)
            return b"hello vm2" in seen

        wait_until(echoed, message=lambda: f"vm2 to echo 'hello vm2'; it sent {seen[-300:]!r}")
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
    # Its early boot is emulated here (about a minute): a generous deadline.
    log = console_saying(lab, "lx", "smpboot: Allowing 2 CPUs", timeout=300)
    assert ("vnet-node=lx virtio_mmio.device=4K@0xd0000000:5 "
            "virtio_mmio.device=4K@0xd0002000:16") in log  # two NICs
    lx = vm_status(lab, "lx")
    assert [n["counters"] is not None for n in lx["nics"]] == [True, True]  # type: ignore[attr-defined]
    taps = {n["ifname"] for n in lx["nics"]}  # type: ignore[attr-defined]
    vnet_host.down(lab.name)
    out = vnet_host.exec(["ip", "-o", "link"]).stdout
    assert not [t for t in taps if f" {t}:" in out or f" {t}@" in out]
