"""The pure parts of vnetd as a service: watchdog period, notify messages, the status line,
the reload diff; and the Notifier and ServiceLink against a real datagram socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from vnet.daemon.config import parse_config
from vnet.daemon.readiness import ServiceLink, ServiceStatus, counts, status_line
from vnet.daemon.reload import apply_live, refusal, reload_plan
from vnet.daemon.resources import BridgeResource, PortResource
from vnet.daemon.sdnotify import Notifier, reloading_message, status_message, watchdog_period

# ---- the watchdog period ------------------------------------------------------------------

def test_watchdog_pings_at_half_the_interval() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "42"}, 42) == 0.2


@pytest.mark.parametrize("environ", [
    {}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "soon"},
    {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "41"},     # meant for another process
    {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"},
])
def test_no_watchdog_when_off_invalid_or_someone_elses(environ: dict[str, str]) -> None:
    assert watchdog_period(environ, 42) is None


def test_notify_messages() -> None:
    assert reloading_message(123456) == "RELOADING=1\nMONOTONIC_USEC=123456"
    assert status_message("a.yaml:1: x: bad\na.yaml:2: y: worse") == (
        "STATUS=a.yaml:1: x: bad; a.yaml:2: y: worse")


# ---- the status line ----------------------------------------------------------------------

def test_status_line() -> None:
    assert status_line(ServiceStatus(3, 41, True)) == "3 labs, 41 ports, bus connected"
    assert status_line(ServiceStatus(1, 1, False)) == "1 lab, 1 port, bus not connected"
    assert status_line(ServiceStatus(0, 0, None)) == "0 labs, 0 ports"
    assert status_line(ServiceStatus(2, 4, None, note="reload refused")) == (
        "2 labs, 4 ports; reload refused")
    assert status_line(ServiceStatus(2, 4, True, phase="starting")) == "starting"


def port(name: str) -> PortResource:
    return PortResource("l", name, f"if-{name}", "access", vlan=1)


def test_counts_ports_of_every_lab() -> None:
    status = counts([[BridgeResource("l", ()), port("a"), port("b")], [port("c")], []], bus=True)
    assert (status.labs, status.ports, status.bus) == (3, 3, True)


# ---- reload --------------------------------------------------------------------------------

def test_reload_plan_splits_live_and_restart_settings() -> None:
    running = parse_config("log_level: info\nsocket: /run/a.sock\n", hostname="h1")
    reread = parse_config("log_level: debug\nsocket: /run/b.sock\ndatapath:\n  io: socket\n",
                          hostname="h1")
    plan = reload_plan(running, reread)
    assert [str(c) for c in plan.live] == ["log_level: info -> debug"]
    assert [c.key for c in plan.needs_restart] == ["datapath.io", "socket"]
    assert plan.summary() == ("reloaded: applied log_level: info -> debug; needs a restart "
                              "(systemctl restart vnetd) for datapath.io, socket")
    after = apply_live(running, reread)
    assert after.log_level == "debug" and str(after.socket) == "/run/a.sock"
    assert after.datapath.io == "ring"


def test_reload_plan_of_a_section_given_or_removed_is_one_change() -> None:
    without = parse_config("", hostname="h1")
    with_bus = parse_config("bus:\n  broker: mqtt://broker.example\n", hostname="h1")
    given = reload_plan(without, with_bus)
    assert [(c.key, c.old, c.new) for c in given.needs_restart] == [("bus", "(unset)", "(set)")]
    removed = reload_plan(with_bus, without)
    assert [(c.key, c.old, c.new) for c in removed.needs_restart] == [("bus", "(set)", "(unset)")]
    changed = reload_plan(with_bus, parse_config("bus:\n  broker: mqtts://broker.example\n",
                                                 hostname="h1"))
    assert [str(c) for c in changed.needs_restart] == [
        "bus.broker: mqtt://broker.example:1883 -> mqtts://broker.example:8883"]


def test_a_reload_changes_the_roles_live() -> None:
    running = parse_config("access:\n  roles:\n    viewer: [daemon]\n", hostname="h1")
    reread = parse_config("access:\n  roles:\n    admin: [daemon]\n", hostname="h1")
    plan = reload_plan(running, reread)
    assert plan.needs_restart == ()
    assert [c.key.split(".")[0] for c in plan.live] and all(
        c.key.startswith("access") for c in plan.live)
    assert apply_live(running, reread).access == reread.access


def test_reload_of_the_same_file_changes_nothing() -> None:
    text = "log_level: warning\naccess:\n  roles:\n    viewer: [daemon]\n"
    plan = reload_plan(parse_config(text, hostname="h1"), parse_config(text, hostname="h1"))
    assert plan.live == () and plan.needs_restart == ()
    assert plan.summary() == "reloaded: no change"


def test_refusal_names_the_first_problem_and_counts_the_rest() -> None:
    assert refusal(["f:1: a: bad"]) == (
        "reload refused, running on the previous config: f:1: a: bad")
    assert refusal(["f:1: a: bad", "f:2: b: bad", "f:3: c: bad"]).endswith(
        "f:1: a: bad (and 2 more: see the log)")


# ---- against a real datagram socket --------------------------------------------------------

@pytest.fixture
def systemd_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    return sock


def test_notifier_sends_datagrams_and_nothing_without_a_socket(
        systemd_socket: socket.socket) -> None:
    notifier = Notifier(systemd_socket.getsockname())
    assert notifier.send("READY=1") and notifier.send("STATUS=ok")
    assert systemd_socket.recv(100) == b"READY=1" and systemd_socket.recv(100) == b"STATUS=ok"
    notifier.close()
    assert not Notifier(None).send("READY=1")


def test_notifier_survives_a_socket_that_went_away(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert not notifier.send("READY=1")   # logged, not raised


def test_ready_waits_for_the_bus_a_bounded_time(systemd_socket: socket.socket) -> None:
    link = ServiceLink(Notifier(systemd_socket.getsockname()), None,
                       lambda: ServiceStatus(0, 0, False))
    answered: list[bool] = []

    async def datapath() -> None:
        answered.append(True)

    async def scenario() -> bool:
        return await link.ready(datapath, lambda: False, bus_wait=0.2)

    assert asyncio.run(scenario()) is False
    messages = [systemd_socket.recv(200).decode() for _ in range(3)]
    assert messages == ["STATUS=waiting up to 0.2 s for the bus",
                        "STATUS=0 labs, 0 ports, bus not connected", "READY=1"]
    assert answered == [True]


def test_no_ready_when_the_datapath_does_not_answer(systemd_socket: socket.socket) -> None:
    link = ServiceLink(Notifier(systemd_socket.getsockname()), None, ServiceStatus)

    async def datapath() -> None:
        raise OSError("no datapath")

    with pytest.raises(OSError):
        asyncio.run(link.ready(datapath, lambda: None))
    systemd_socket.settimeout(0)
    with pytest.raises(BlockingIOError):
        systemd_socket.recv(100)
