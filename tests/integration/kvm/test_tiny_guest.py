"""Boot the tiny guest on /dev/kvm and read its console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vnet.testing import wait_until

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")


def boot(tmp_path: Path, cmdline: str) -> tuple[int, str]:
    console = tmp_path / "console.log"
    result = subprocess.run(
        [sys.executable, "-m", "vnet.kvm.runner", "--name", "t1", "--memory", "16M",
         "--cmdline", cmdline, "--console-log", str(console)], capture_output=True, text=True,
        timeout=60, env={**os.environ, "VNET_CACHE_DIR": str(tmp_path / "cache")})
    return result.returncode, console.read_text()


def test_tiny_guest_prints_its_command_line_and_exits(tmp_path: Path) -> None:
    status, console = boot(tmp_path, "hello=world")
    assert status == 0
    assert console == ("vnet tiny guest 1: cmdline=hello=world\n"
                       "tiny guest: no ip= on the command line, done\n")


def test_tiny_guest_without_a_nic_says_so_and_fails(tmp_path: Path) -> None:
    status, console = boot(tmp_path, "ip=10.10.0.11/24")
    assert status == 1
    assert "no virtio-mmio v2 network device at 0xd0000000" in console


def test_runner_says_what_is_wrong_with_a_kernel(tmp_path: Path) -> None:
    missing = subprocess.run([sys.executable, "-m", "vnet.kvm.runner", "--kernel",
                              str(tmp_path / "nope")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and "No such file" in missing.stderr
    junk = tmp_path / "junk"
    junk.write_bytes(b"MZ" + bytes(4096))
    bad = subprocess.run([sys.executable, "-m", "vnet.kvm.runner", "--kernel", str(junk)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "64-bit little-endian ELF" in bad.stderr


@pytest.fixture
def guest_on_tap(tmp_path: Path):
    """The tiny guest on a TAP inside a namespace of the test's own, the TAP holding the
    other end of a /24: the namespace talks to the guest as a neighbour would."""
    from vnet.host import netns, tap
    from vnet.testing import popen_in_netns

    name = f"vnt-kvm-{os.getpid()}"
    netns.create(name)
    runner = None
    try:
        with netns.entered(name):
            tap.create_persistent_tap("vmtap0")
        for command in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "vmtap0", "up"],
                        ["ip", "addr", "add", "10.20.0.1/24", "dev", "vmtap0"]):
            subprocess.run(["ip", "-n", name, *command[1:]], check=True)
        console = tmp_path / "console.log"
        runner = popen_in_netns(
            name, [sys.executable, "-m", "vnet.kvm.runner", "--memory", "16M", "--nic",
                   "tap=vmtap0,mac=02:00:00:00:20:02,ip=10.20.0.2/24", "--console-log",
                   str(console)],
            env={**os.environ, "VNET_CACHE_DIR": str(tmp_path / "cache")},
            stderr=subprocess.PIPE, text=True)
        started = runner

        def guest_is_up() -> bool:
            assert started.poll() is None, started.stderr.read() if started.stderr else ""
            return "up\n" in (console.read_text() if console.exists() else "")

        wait_until(guest_is_up, 60, lambda: f"the tiny guest to say up; console: "
                   f"{console.read_text() if console.exists() else '(none yet)'!r}")
        yield name, console
    finally:
        if runner is not None:
            runner.kill()
            runner.wait()
        netns.remove(name)


def test_guest_answers_arp_ping_and_udp_echo(guest_on_tap) -> None:
    from vnet.testing import run_in_netns

    name, console = guest_on_tap
    assert "tiny guest: eth0 02:00:00:00:20:02 ip 10.20.0.2 up" in console.read_text()
    ping = run_in_netns(name, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.20.0.2"])
    assert ping.returncode == 0, ping.stdout
    neighbour = run_in_netns(name, ["ip", "neigh", "show", "10.20.0.2"]).stdout
    assert "02:00:00:00:20:02" in neighbour                    # it answered ARP
    echo = run_in_netns(name, [sys.executable, "-c", (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10);"
        "s.sendto(b'vnet', ('10.20.0.2', 7)); print(s.recvfrom(64)[0].decode())")])
    assert echo.stdout.strip() == "vnet", echo.stderr
    other_port = run_in_netns(name, [sys.executable, "-c", (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1);"
        "s.sendto(b'vnet', ('10.20.0.2', 9)); s.recvfrom(64)")])
    assert other_port.returncode != 0                         # only port 7 echoes


def test_an_acpi_soft_off_ends_the_runner(tmp_path: Path) -> None:
    log = tmp_path / "off.log"
    result = subprocess.run(
        [sys.executable, "-m", "vnet.kvm.runner", "--memory", "16M", "--cmdline", "poweroff",
         "--console-log", str(log)], timeout=60,
        env={**os.environ, "VNET_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0
    text = log.read_text()
    assert text.count("tiny guest: powering off") == 1
    assert "done" not in text, "the guest ran on after its power-off request"


def test_a_guest_reset_exits_or_boots_again_per_policy(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "vnet.kvm.runner", "--memory", "16M", "--cmdline",
               "reboot", "--console-log", str(tmp_path / "exit.log"), "--on-reboot", "exit"]
    env = {**os.environ, "VNET_CACHE_DIR": str(tmp_path / "cache")}
    assert subprocess.run(command, timeout=60, env=env).returncode == 0
    assert (tmp_path / "exit.log").read_text().count("tiny guest: rebooting") == 1
    restart = [*command[:-4], "--console-log", str(tmp_path / "again.log"), "--on-reboot",
               "restart"]
    runner = subprocess.Popen(restart, env=env)
    try:
        log = tmp_path / "again.log"
        wait_until(lambda: log.exists() and log.read_text().count("vnet tiny guest 1:") >= 3,
                   60, "the guest to boot three times in one runner")
    finally:
        runner.kill()
        runner.wait()
