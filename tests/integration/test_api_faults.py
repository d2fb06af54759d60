"""vnetd's API under faults and load, with a real vnetd: killed (SIGKILL) in the middle of an
``up`` and of a ``down`` (the CLI says so and the next ``up``/``down`` finishes the job); a
big ``up`` being parsed while hundreds of clients connect and are answered; idle clients
hung up on."""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from vnet import jsonlines
from vnet.daemon import naming
from vnet.daemon.api import IDLE_TIMEOUT
from vnet.daemon.defaults import API_VERSION
from vnet.host import netns
from vnet.testing import TestHost, wait_until

pytestmark = needs_root
NODES = 8


def lab_namespaces(lab: str) -> set[str]:
    """The namespaces of ``lab`` under a CLI-started vnetd (the default prefix)."""
    return {n for n in netns.list_names() if n.startswith(naming.netns_name(lab, ""))}


def topology(lab: str, nodes: int) -> str:
    lines = [f"name: {lab}", "networks:", "  net: {vlan: 100}", "nodes:"]
    lines += [f"  n{i}: {{kind: netns, nics: [{{name: eth0, network: net, "
              f"ip: 10.9.0.{i + 1}/24}}]}}" for i in range(nodes)]
    return "\n".join(lines) + "\n"


class CliHost:
    """A namespace playing a host whose vnetd only the CLI starts (as ``vnet up`` does on a
    machine without the systemd service).  That vnetd has the default prefix, so the lab's
    name is this host's own (an earlier run's leftovers, vnet-killed-*, never clash)."""

    def __init__(self, tmp_path: Path) -> None:
        self.name = f"vnt-kill-{os.getpid()}"
        self.lab = f"killed-{secrets.token_hex(3)}"
        self.socket = str(tmp_path / "vnetd.sock")
        self.state_dir = tmp_path / "state"
        self.cli_args = [sys.executable, "-m", "vnet.cli", "--netns", self.name, "--socket",
                         self.socket, "--state-dir", str(self.state_dir)]
        netns.create(self.name)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.cli_args, *args], capture_output=True, text=True,
                              timeout=300)

    def start_cli(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.cli_args, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def vnetd_pid(self) -> int | None:
        try:
            reply = jsonlines.call(self.socket, {"op": "ping"}, timeout=10)
        except (OSError, jsonlines.ProtocolError):
            return None
        return int(reply["result"]["pid"])

    def record(self, lab: str) -> dict[str, str] | None:
        """The lab's record as vnetd last saved it: resource key -> pending/ready."""
        try:
            data = json.loads((self.state_dir / "labs" / f"{lab}.json").read_text())
        except FileNotFoundError:
            return None
        return {json.dumps(r, sort_keys=True): r["status"] for r in data["resources"]}

    def log(self) -> str:
        path = self.state_dir / "vnetd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def cli_host(tmp_path: Path) -> Iterator[CliHost]:
    host = CliHost(tmp_path)
    try:
        yield host
    finally:
        host.cli("down", "--lab", host.lab)
        pid = host.vnetd_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        for name in lab_namespaces(host.lab):
            netns.remove(name)
        netns.remove(host.name)


def kill_vnetd_when(host: CliHost, command: subprocess.Popen[str], what: str,
                    condition: Any) -> tuple[int, str]:
    """SIGKILL vnetd once ``condition(record)`` holds while ``command`` still waits for its
    answer; the command's exit status and stderr."""
    pid = wait_until(host.vnetd_pid, message="vnetd to answer")
    assert pid is not None

    def under_way() -> bool:
        assert command.poll() is None, (f"the {what} finished before vnetd could be killed "
                                        f"in the middle of it: {command.communicate()}")
        return bool(condition(host.record(host.lab)))

    wait_until(under_way, message=f"the {what} to be half-way")
    os.kill(pid, signal.SIGKILL)
    _, stderr = command.communicate(timeout=120)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), message="the killed vnetd to go")
    return command.returncode, stderr


def says_what_happened(stderr: str, op: str) -> None:
    assert "Traceback" not in stderr and "[Errno" not in stderr, stderr
    assert f"vnetd stopped before it answered this {op}" in stderr, stderr
    assert f"run the same 'vnet {op}" in stderr and "finishes the job" in stderr, stderr


def test_vnetd_killed_mid_up_and_mid_down_is_said_and_the_next_one_finishes(
        cli_host: CliHost, tmp_path: Path) -> None:
    lab = cli_host.lab
    path = tmp_path / "killed.yaml"
    path.write_text(topology(lab, NODES))
    every_namespace = {naming.netns_name(lab, f"n{i}") for i in range(NODES)}

    up = cli_host.start_cli("up", str(path))
    status, stderr = kill_vnetd_when(cli_host, up, "up", lambda record: record and sum(
        s == "ready" for s in record.values()) >= 2)
    assert status == 1
    says_what_happened(stderr, "up")
    half = cli_host.record(lab)
    assert half is not None

    again = cli_host.cli("up", str(path))            # starts a new vnetd, which finishes
    assert again.returncode == 0, f"{again.stderr}\n{cli_host.log()}"
    assert "up (created" in again.stdout, again.stdout
    record = cli_host.record(lab)
    assert record is not None and set(record.values()) == {"ready"}
    assert sum(status == "ready" for status in half.values()) < len(record), (
        "the up was not interrupted half-way", half)
    assert lab_namespaces(lab) == every_namespace
    ping = cli_host.cli("exec", "n0", "--", "ping", "-c", "1", "-W", "2", f"10.9.0.{NODES}")
    assert ping.returncode == 0, ping.stdout + ping.stderr

    full = len(record)
    down = cli_host.start_cli("down", "--lab", lab)
    status, stderr = kill_vnetd_when(cli_host, down, "down", lambda record: record and (
        len(record) <= full - 2))
    assert status == 1
    says_what_happened(stderr, "down")
    assert cli_host.record(lab) is not None, "the down was not interrupted half-way"

    again = cli_host.cli("down", "--lab", lab)  # no vnetd runs: down starts one
    assert again.returncode == 0, f"{again.stderr}\n{cli_host.log()}"
    assert cli_host.record(lab) is None
    assert lab_namespaces(lab) == set()
    wait_until(lambda: cli_host.vnetd_pid() is None, message="vnetd to leave with the lab")


@pytest.fixture(scope="module")
def host() -> Iterator[TestHost]:
    with TestHost() as h:
        yield h


def big_up(nodes: int) -> dict[str, Any]:
    """A valid request of a few hundred KiB whose topology takes seconds to parse and is
    refused at its last line (an unknown network), so nothing is built."""
    lines = [f"  n{i}: {{kind: netns, nics: [{{name: eth0, network: net, "
             f"ip: 10.9.{i // 250}.{i % 250 + 1}/16}}]}}" for i in range(nodes)]
    text = "\n".join(["name: big", "networks:", "  net: {vlan: 100}", "nodes:", *lines,
                      "  last: {kind: netns, nics: [{name: eth0, network: nosuchnet}]}\n"])
    return {"op": "up", "text": text, "source": "/big.yaml"}


def test_clients_are_answered_while_a_big_up_is_parsed(host: TestHost) -> None:
    """Before: the topology was parsed on vnetd's event loop (seconds for a big one): no
    other client was answered meanwhile, and connects beyond the listen backlog of 100 were
    refused with EAGAIN."""
    request = jsonlines.encode(big_up(6500))  # under the loader's 100,000 YAML nodes
    assert len(request) > 400_000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
        up.settimeout(300)
        up.connect(host.socket)
        up.sendall(request)                # returns once vnetd has read nearly all of it
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
            first.settimeout(60)
            first.connect(host.socket)
            first.sendall(jsonlines.encode({"op": "ping"}))
            pong = jsonlines.decode(first.makefile("rb").readline())
        # a ping takes milliseconds, the parse of the up a second or more of CPU
        up_answered_first = bool(select.select([up], [], [], 0)[0])
        clients = []
        for _ in range(300):     # at once, without retrying: the backlog holds them all
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(60)
            sock.connect(host.socket)
            clients.append(sock)
        for sock in clients:
            sock.sendall(jsonlines.encode({"op": "ping"}))
        replies = [jsonlines.decode(sock.makefile("rb").readline()) for sock in clients]
        status = host.call("status")       # the datapath too
        for sock in clients:
            sock.close()
        reply = jsonlines.decode(up.makefile("rb").readline())
    assert pong["ok"] and all(ping["ok"] for ping in replies)
    assert status["labs"] == []
    assert not up_answered_first, "the ping waited for the big up"
    assert not reply["ok"] and "network 'nosuchnet' is not defined" in reply["error"], reply


def test_a_request_over_the_limit_is_refused_with_the_limit(host: TestHost) -> None:
    request = {"op": "up", "text": "#" * (15 << 20), "source": "/huge.yaml"}
    reply = jsonlines.call(host.socket, request)
    assert reply == {"ok": False, "error": "bad request: the request is longer than vnetd's "
                     "limit of 4 MiB (4194304 bytes); a topology file is normally a few KiB",
                     "api": API_VERSION}
    assert host.call("ping")["pid"]


def test_idle_and_half_sent_requests_are_hung_up_on(host: TestHost) -> None:
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (idle, half):
        sock.settimeout(IDLE_TIMEOUT * 6)
        sock.connect(host.socket)
    half.sendall(b'{"op": "status", "la')
    assert host.call("ping")["pid"]       # others are answered meanwhile
    for sock in (idle, half):
        with sock:
            reader = sock.makefile("rb")
            line = reader.readline()       # vnetd says why, then hangs up
            assert reader.readline() == b""
        assert jsonlines.decode(line) == {"ok": False, "error": (
            f"bad request: no whole request line came within {IDLE_TIMEOUT:g} s; vnetd hangs "
            f"up on idle connections"), "api": API_VERSION}
