"""vnetd speaks systemd's notify protocol: a real vnetd, a real AF_UNIX datagram socket.

The test plays systemd: it binds the socket, hands vnetd ``NOTIFY_SOCKET`` (and
``WATCHDOG_USEC``) and reads what arrives.  vnetd runs in a namespace of the test's own
(``--netns``), with a config file the test writes and rewrites (reload).  No assertion is on
speed: each waits for a message with a generous deadline; the one negative check (a wedged
loop sends no ping) waits a bounded window after the loop is known to be wedged.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vnet import jsonlines
from vnet.daemon.readiness import BUS_READY_WAIT
from vnet.host import netns
from vnet.testing import kill_leftovers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")

DEADLINE = 60.0          # s: generous; only ever waited for until the message arrives
WATCHDOG_USEC = 400_000  # 0.2 s between pings
QUIET_WINDOW = 3.0       # s (15 ping periods) in which a wedged vnetd must not ping


class Systemd:
    """The receiving end of $NOTIFY_SOCKET: every datagram, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):   # BlockingIOError: timeout 0, nothing queued
            return None
        message = data.decode()
        self.messages.append(message)
        return message

    def wait_for(self, condition: Callable[[str], bool], what: str,
                 deadline: float = DEADLINE) -> list[str]:
        """Receive until a message satisfies ``condition``; the messages up to it."""
        seen: list[str] = []
        end = time.monotonic() + deadline
        while (left := end - time.monotonic()) > 0:
            message = self.receive(left)
            if message is None:
                break
            seen.append(message)
            if condition(message):
                return seen
        raise AssertionError(f"no {what} within {deadline} s; got {seen}")

    def close(self) -> None:
        self.sock.close()


def statuses(messages: list[str]) -> list[str]:
    return [m.removeprefix("STATUS=") for m in messages if m.startswith("STATUS=")]


class Service:
    """A vnetd started the way systemd would: a notify socket, maybe a watchdog."""

    def __init__(self, workdir: Path, config: str, *, watchdog: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.name = f"vns-{secrets.token_hex(3)}"
        self.config = workdir / "vnetd.yaml"
        self.config.write_text(config)
        self.systemd = Systemd(workdir / "notify.sock")
        self.socket = workdir / "vnetd.sock"
        self.logfile = workdir / "vnetd.log"
        env = {**os.environ, "NOTIFY_SOCKET": str(self.systemd.path), **(extra_env or {})}
        if watchdog:
            env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
        netns.create(self.name)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        with open(self.logfile, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vnet.daemon.main", "--config", str(self.config),
                 "--socket", str(self.socket), "--state-dir", str(workdir / "state"),
                 "--netns", self.name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def ping(self) -> dict[str, object]:
        reply = jsonlines.call(str(self.socket), {"op": "ping"})
        assert reply.get("ok"), reply
        result: dict[str, object] = reply["result"]
        return result

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_leftovers(self.workdir / "state")   # SIGTERM leaves the datapath running
        self.systemd.close()
        netns.remove(self.name)


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(config: str = "# every default\n", **kwargs: object) -> Service:
        directory = tmp_path / f"s{len(started)}"
        directory.mkdir()
        service = Service(directory, config, **kwargs)  # type: ignore[arg-type]
        started.append(service)
        return service

    yield start
    for service in started:
        service.close()


def test_ready_only_after_the_datapath_answers_then_status_and_stopping(
        service_factory: Callable[..., Service]) -> None:
    service = service_factory()
    before = service.systemd.wait_for(lambda m: m == "READY=1", "READY=1")
    # At READY the datapath answers (vnetd pinged it just before), and so does the API.
    answer = service.ping()
    assert isinstance(answer["datapath_pid"], int)
    assert statuses(before)[0] == "starting", before
    assert statuses(before)[-1] == "0 labs, 0 ports", before   # said just before READY
    service.process.terminate()
    service.systemd.wait_for(lambda m: m == "STOPPING=1", "STOPPING=1")
    assert service.process.wait(DEADLINE) == 0, service.log()


def test_no_ready_when_the_datapath_cannot_start(service_factory: Callable[..., Service]
                                                ) -> None:
    service = service_factory("datapath:\n  python: /bin/false\n")
    assert service.process.wait(DEADLINE) != 0
    while service.systemd.receive(0) is not None:   # what it said before it exited
        pass
    assert "READY=1" not in service.systemd.messages, service.systemd.messages
    assert "the datapath exited with status 1 at its start" in service.log()


def test_watchdog_pings_come_from_the_event_loop(service_factory: Callable[..., Service],
                                                 tmp_path: Path) -> None:
    wedge = tmp_path / "wedge"
    service = service_factory(watchdog=True, extra_env={"VNETD_TEST_WEDGE_FILE": str(wedge)})
    service.systemd.wait_for(lambda m: m == "READY=1", "READY=1")
    pings = 0

    def counted(message: str) -> bool:
        nonlocal pings
        pings += message == "WATCHDOG=1"
        return pings >= 5

    service.systemd.wait_for(counted, "5 watchdog pings")
    # Wedge the loop (the test hook blocks it in time.sleep while the file exists).
    wedge.touch()
    service.process.send_signal(signal.SIGUSR2)
    service.systemd.wait_for(lambda m: m == "STATUS=wedged (test hook)", "the wedge")
    quiet_until = time.monotonic() + QUIET_WINDOW
    while (left := quiet_until - time.monotonic()) > 0:
        message = service.systemd.receive(left)
        assert message != "WATCHDOG=1", "a ping came from a wedged event loop"
    wedge.unlink()
    service.systemd.wait_for(lambda m: m == "WATCHDOG=1", "pings again after the wedge")
    service.ping()


def test_reload_applies_log_level_reports_restart_settings_and_refuses_a_bad_file(
        service_factory: Callable[..., Service]) -> None:
    service = service_factory("log_level: info\n")
    service.systemd.wait_for(lambda m: m == "READY=1", "READY=1")
    pid = service.ping()["pid"]

    # A good file: the log level changes live; a new datapath setting waits for a restart.
    service.config.write_text("log_level: debug\ndatapath:\n  io: socket\n")
    service.process.send_signal(signal.SIGHUP)
    reloading = service.systemd.wait_for(lambda m: m.startswith("RELOADING=1"), "RELOADING=1")
    lines = reloading[-1].split("\n")
    assert lines[1].startswith("MONOTONIC_USEC=") and lines[1].split("=")[1].isdigit(), lines
    seen = service.systemd.wait_for(lambda m: m == "READY=1", "READY=1 after the reload")
    assert any("needs a restart" in s and "datapath.io" in s for s in statuses(seen)), seen
    log = service.log()
    assert "applied log_level: info -> debug" in log, log
    assert "datapath.io: ring -> socket waits for a restart" in log, log

    # A bad file: refused with its error in the log and the status; vnetd runs on.
    service.config.write_text("log_level: loud\n")
    service.process.send_signal(signal.SIGHUP)
    service.systemd.wait_for(lambda m: m.startswith("RELOADING=1"), "RELOADING=1")
    seen = service.systemd.wait_for(lambda m: m == "READY=1", "READY=1 after a refused reload")
    refused = [s for s in statuses(seen) if "reload refused" in s]
    assert refused and "vnetd.yaml:1: log_level" in refused[-1], seen
    assert "reload refused" in service.log() and "loud" in service.log()
    assert service.ping()["pid"] == pid

    # The first file again: nothing waits for a restart any more, the note goes.
    service.config.write_text("log_level: info\n")
    service.process.send_signal(signal.SIGHUP)
    seen = service.systemd.wait_for(lambda m: m == "READY=1", "READY=1 after the last reload")
    assert statuses(seen)[-1] == "0 labs, 0 ports", seen
    assert service.process.poll() is None


def test_an_unreachable_broker_delays_ready_only_a_bounded_time(
        service_factory: Callable[..., Service]) -> None:
    # Port 1 on the namespace's own loopback: refused at once, and nothing leaves it.
    service = service_factory("host: h1\nbus:\n  broker: mqtt://127.0.0.1:1\n")
    seen = service.systemd.wait_for(lambda m: m == "READY=1", "READY=1",
                                    deadline=DEADLINE + BUS_READY_WAIT)
    assert f"waiting up to {BUS_READY_WAIT:g} s for the bus" in statuses(seen), seen
    assert statuses(seen)[-1] == "0 labs, 0 ports, bus not connected", seen
    service.ping()
