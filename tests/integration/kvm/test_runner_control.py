"""The runner's control socket and supervisor, on /dev/kvm with the tiny guest: status
counters against frames really sent, pause/resume, shutdown with a deadline, thread failures
and their exit statuses, bad requests."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vnet.kvm.control import ExitStatus
from vnet.testing import wait_until

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")
GUEST_MAC = "02:00:00:00:30:02"
BOOT = 120  # seconds: the guest's ring-0 start is emulated on nested KVM


class Runner:
    def __init__(self, tmp_path: Path, cmdline: str, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, netns_name: str | None = None) -> None:
        self.console = tmp_path / "console.log"
        self.control = tmp_path / "control.sock"
        command = [sys.executable, "-m", "vnet.kvm.runner", "--name", "t", "--memory", "16M",
                   "--cmdline", cmdline, "--console-log", str(self.console),
                   "--console-socket", str(tmp_path / "console.sock"),
                   "--control-socket", str(self.control), *(extra or [])]
        environment = {**os.environ, "VNET_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
        if netns_name is None:
            self.process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE,
                                            text=True)
        else:
            from vnet.testing import popen_in_netns
            self.process = popen_in_netns(netns_name, command, env=environment,
                                          stderr=subprocess.PIPE, text=True)

    def text(self) -> str:
        return self.console.read_text() if self.console.exists() else ""

    def wait_for_console(self, needle: str, timeout: float = BOOT) -> None:
        def seen() -> bool:
            assert self.process.poll() is None or needle in self.text(), self.stderr()
            return needle in self.text()
        wait_until(seen, timeout, lambda: f"{needle!r} on the console: {self.text()[-400:]!r}")

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(running)"
        return self.process.stderr.read()

    def call(self, request: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.control))
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = sock.makefile("rb").readline()
        decoded: dict[str, Any] = json.loads(reply)
        return decoded

    def last_count(self) -> int:
        counts = re.findall(r"count (\d+)\n", self.text())
        return int(counts[-1]) if counts else 0

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[Runner]:
    runner = Runner(tmp_path, "count")
    try:
        runner.wait_for_console("count 3\n")
        yield runner
    finally:
        runner.close()


def test_status_pause_and_resume_stop_and_start_the_guest(counting: Runner) -> None:
    mode = stat.S_IMODE(os.stat(counting.control).st_mode)
    assert mode == 0o600
    status = counting.call({"op": "status"})
    assert status["ok"] and status["result"]["state"] == "running"
    assert status["result"]["vcpus"] == [{"index": 0, "state": "running"}]
    assert status["result"]["devices"] == [] and status["result"]["console_clients"] == 0
    with socket.socket(socket.AF_UNIX) as watcher:  # a console client is counted
        watcher.connect(str(counting.control.with_name("console.sock")))
        wait_until(lambda: counting.call({"op": "status"})["result"]["console_clients"] == 1,
                   30, "the console client in status")
        watcher.settimeout(30)
        seen = bytearray()

        def output_seen() -> bool:
            seen.extend(watcher.recv(4096))
            return b"count" in seen

        wait_until(output_seen, 60, "the guest's output on the console socket")

    start, before = time.monotonic(), counting.last_count()
    wait_until(lambda: counting.last_count() >= before + 5, 60, "five more counts")
    five_counts = time.monotonic() - start

    paused = counting.call({"op": "pause"})
    assert paused["ok"], paused
    assert paused["result"]["state"] == "paused"
    assert paused["result"]["vcpus"] == [{"index": 0, "state": "paused"}]
    frozen = counting.text()
    # The guest printed five counts in `five_counts` seconds while running; paused, it must
    # print none in four times that (and at least a second).
    window_end = time.monotonic() + max(4 * five_counts, 1.0)
    while time.monotonic() < window_end:
        assert counting.text() == frozen, "the guest ran while paused"
        assert counting.call({"op": "status"})["result"]["state"] == "paused"
    again = counting.call({"op": "pause"})
    assert not again["ok"] and "already paused" in again["error"]

    resumed = counting.call({"op": "resume"})
    assert resumed["ok"] and resumed["result"]["state"] == "running"
    at_pause = counting.last_count()
    wait_until(lambda: counting.last_count() > at_pause + 2, 60, "counting after resume")
    assert not counting.call({"op": "resume"})["ok"]


def test_bad_requests_get_clear_errors_and_a_silent_client_is_dropped(
        counting: Runner) -> None:
    cases = {b"not json\n": "not a JSON line", b"[1]\n": "must be a JSON object",
             b'{"op": "reboot"}\n': "unknown op 'reboot'",
             b'{"verb": "status"}\n': 'needs "op"',
             b'{"op": "status", "x": 1}\n': "status takes no 'x'",
             b'{"op": "shutdown", "deadline": -1}\n': "deadline -1",
             b'{"op": "shutdown", "deadline": "soon"}\n': "deadline 'soon'"}
    with socket.socket(socket.AF_UNIX) as sock:  # one connection, many requests
        sock.settimeout(30)
        sock.connect(str(counting.control))
        lines = sock.makefile("rb")
        for request, error in cases.items():
            sock.sendall(request)
            reply = json.loads(lines.readline())
            assert reply["ok"] is False and error in reply["error"], (request, reply)
            assert "Errno" not in reply["error"] and "Traceback" not in reply["error"]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(counting.control))
        sock.sendall(b"x" * 10000)
        reply = json.loads(sock.makefile("rb").readline())
        assert "at most 4096 bytes" in reply["error"]
    with socket.socket(socket.AF_UNIX) as silent:
        silent.settimeout(60)
        silent.connect(str(counting.control))
        # While it says nothing the runner serves others and the guest runs on.
        before = counting.last_count()
        assert counting.call({"op": "status"})["ok"]
        wait_until(lambda: counting.last_count() > before + 2, 60, "counting meanwhile")
        reply = json.loads(silent.makefile("rb").readline())
        assert reply["ok"] is False and "no request within" in reply["error"]
        assert silent.recv(1) == b""  # and closed
    assert counting.process.poll() is None


def test_shutdown_the_guest_powers_off_before_the_deadline(tmp_path: Path) -> None:
    runner = Runner(tmp_path, "count")
    try:
        runner.wait_for_console("count 2\n")
        runner.call({"op": "pause"})
        reply = runner.call({"op": "shutdown", "deadline": 120})  # a paused guest is resumed
        assert reply["ok"] and reply["result"]["state"] == "shutting-down"
        assert 0 < reply["result"]["shutdown_deadline_in"] <= 120
        assert runner.process.wait(BOOT) == ExitStatus.OK, runner.stderr()
        assert "shutdown requested, powering off" in runner.text()
        assert not runner.control.exists()
        assert not runner.control.with_name("console.sock").exists()
    finally:
        runner.close()


def test_a_guest_that_ignores_shutdown_is_forced_off_at_the_deadline(tmp_path: Path) -> None:
    runner = Runner(tmp_path, "count ignore-shutdown")
    try:
        runner.wait_for_console("count 2\n")
        asked = time.monotonic()
        assert runner.call({"op": "shutdown", "deadline": 3})["ok"]
        assert runner.process.wait(BOOT) == ExitStatus.SHUTDOWN_FORCED
        assert time.monotonic() - asked >= 3, "forced off before its deadline"
        assert "did not power off by the shutdown deadline" in runner.stderr()
    finally:
        runner.close()


def test_a_vcpu_failure_ends_the_runner_with_its_status(tmp_path: Path) -> None:
    runner = Runner(tmp_path, "crash")  # hlt at CPL 3 with no IDT: a triple fault
    try:
        assert runner.process.wait(BOOT) == ExitStatus.VCPU_FAILED
        assert "vCPU 0 failed" in runner.stderr()
    finally:
        runner.close()


@pytest.fixture
def tap_namespace() -> Iterator[str]:
    from vnet.host import netns, tap

    name = f"vnt-ctl-{os.getpid()}"
    netns.create(name)
    try:
        with netns.entered(name):
            tap.create_persistent_tap("vmtap0")
        for command in (["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                        ["sysctl", "-qw", "net.ipv6.conf.vmtap0.disable_ipv6=1"],
                        ["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "vmtap0", "up"],
                        ["ip", "addr", "add", "10.30.0.1/24", "dev", "vmtap0"]):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield name
    finally:
        netns.remove(name)


def net_queues(runner: Runner) -> dict[str, dict[str, int]]:
    device, = runner.call({"op": "status"})["result"]["devices"]
    assert device["kind"] == "virtio-net" and device["tap"] == "vmtap0"
    return {q["queue"]: q for q in device["queues"]}


def test_status_counts_the_frames_sent_to_and_from_the_guest(tmp_path: Path,
                                                             tap_namespace: str) -> None:
    from vnet.host import netns
    from vnet.testing import run_in_netns

    runner = Runner(tmp_path, "", ["--nic", f"tap=vmtap0,mac={GUEST_MAC},ip=10.30.0.2/24"],
                    netns_name=tap_namespace)
    try:
        runner.wait_for_console(" up\n")
        with netns.entered(tap_namespace):
            capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            capture.bind(("vmtap0", 0))
        with capture:
            before = net_queues(runner)
            frame = bytes.fromhex(GUEST_MAC.replace(":", "")) + bytes.fromhex(
                "020000003001") + b"\x88\xb5" + bytes(86)  # 100 bytes, a local ethertype
            for _ in range(7):
                capture.send(frame)
            wait_until(lambda: net_queues(runner)["rx"]["frames"] >= before["rx"]["frames"] + 7,
                       60, "the guest to receive seven frames")
            after = net_queues(runner)
            assert after["rx"]["frames"] == before["rx"]["frames"] + 7
            assert after["rx"]["bytes"] == before["rx"]["bytes"] + 7 * 100
            assert after["rx"]["drops"] == before["rx"]["drops"]

            ping = run_in_netns(tap_namespace, ["ping", "-c", "3", "-i", "0.2", "-W", "5",
                                                "10.30.0.2"])
            assert ping.returncode == 0, ping.stdout
            capture.setblocking(False)
            sent = []  # what the TAP saw coming from the guest
            try:
                while True:
                    data = capture.recv(65536)
                    if data[6:12] == bytes.fromhex(GUEST_MAC.replace(":", "")):
                        sent.append(len(data))
            except BlockingIOError:
                pass
            final = net_queues(runner)
            assert final["tx"]["frames"] - before["tx"]["frames"] == len(sent) >= 3
            assert final["tx"]["bytes"] - before["tx"]["bytes"] == sum(sent)
    finally:
        runner.close()


def test_a_device_thread_failure_ends_the_runner_with_its_status(
        tmp_path: Path, tap_namespace: str) -> None:
    runner = Runner(tmp_path, "", ["--nic", f"tap=vmtap0,mac={GUEST_MAC},ip=10.30.0.2/24"],
                    env={"VNET_KVM_TEST_FAIL_DEVICE": "virtio-net-io"},  # the test hook
                    netns_name=tap_namespace)
    try:
        assert runner.process.wait(BOOT) == ExitStatus.DEVICE_FAILED
        assert "device thread virtio-net-io failed" in runner.stderr()
    finally:
        runner.close()


def test_sigterm_stops_the_runner_with_status_0_and_removes_its_sockets(
        counting: Runner) -> None:
    counting.process.terminate()
    assert counting.process.wait(BOOT) == ExitStatus.OK, counting.stderr()
    assert not counting.control.exists()
    assert not counting.control.with_name("console.sock").exists()


def test_a_console_client_that_does_not_read_never_stalls_the_guest(tmp_path: Path) -> None:
    runner = Runner(tmp_path, "flood")  # console output as fast as the guest can write it
    try:
        runner.wait_for_console("count 2\n")
        with socket.socket(socket.AF_UNIX) as silent:  # connects, never reads
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            silent.connect(str(tmp_path / "console.sock"))
            wait_until(lambda: runner.call({"op": "status"})["result"]["console_clients"] == 1,
                       30, "the silent client to be counted")
            size = runner.console.stat().st_size
            # Far more than the socket buffers hold: a guest stalled by the client stops early.
            wait_until(lambda: runner.console.stat().st_size > size + (512 << 10), 240,
                       lambda: f"512 KiB more console output; it grew by "
                       f"{runner.console.stat().st_size - size} bytes")
            assert runner.call({"op": "status"})["result"]["console_clients"] == 0, \
                "the client that fell behind was not dropped"
    finally:
        runner.close()
