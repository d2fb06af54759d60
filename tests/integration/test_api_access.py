"""Who may use a real vnetd's API: clients run as throwaway users the test creates (a viewer,
an operator, an admin through a supplementary group, a member of the socket's group with no
role, an outsider), each call checked allowed or refused, and the audit file read back."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from vnet import cli, jsonlines
from vnet.daemon.defaults import API_VERSION
from vnet.testing import TestHost

pytestmark = needs_root
LAB = "acl"
TOPOLOGY = f"""\
name: {LAB}
networks:
  net: {{vlan: 10}}
nodes:
  n0: {{kind: netns, nics: [{{name: eth0, network: net, ip: 10.77.0.1/24}}]}}
"""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class Accounts:
    access_group: str
    admin_group: str
    viewer: Account
    operator: Account
    admin: Account
    norole: Account
    outsider: Account


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    """Throwaway users and groups, removed afterwards whatever happened."""
    tag = secrets.token_hex(3)
    access_group, admin_group = f"vnt-acc-{tag}", f"vnt-adm-{tag}"
    users = {role: f"vnt-{role[:4]}-{tag}" for role in
             ("viewer", "operator", "admin", "norole", "outsider")}
    made_users: list[str] = []
    made_groups: list[str] = []
    try:
        for group in (access_group, admin_group):
            _run("groupadd", group)
            made_groups.append(group)
        for role, user in users.items():
            primary = "nogroup" if role == "outsider" else access_group
            extra = ["-G", admin_group] if role == "admin" else []
            _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-d", "/nonexistent",
                 "-g", primary, *extra, user)
            made_users.append(user)

        def account(user: str) -> Account:
            entry = pwd.getpwnam(user)
            return Account(user, entry.pw_uid, entry.pw_gid,
                           tuple(os.getgrouplist(user, entry.pw_gid)))

        yield Accounts(access_group, admin_group, *(account(users[role]) for role in
                                       ("viewer", "operator", "admin", "norole", "outsider")))
    finally:
        for user in made_users:
            subprocess.run(["userdel", user], capture_output=True)
        for group in made_groups:
            subprocess.run(["groupdel", group], capture_output=True)


def call_as(account: Account, path: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``request`` sent by a child process that has become ``account`` (its groups, gid and
    uid, in that order); the child's pid and vnetd's reply, or ``{"connect": errno name}``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups(list(account.groups))
            os.setgid(account.gid)
            os.setuid(account.uid)
            try:
                with jsonlines.connect(path, timeout=30) as sock:
                    reply = jsonlines.exchange(sock, request)
            except PermissionError:
                reply = {"connect": "EACCES"}
            os.write(write_end, json.dumps(reply).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    return pid, json.loads(data)


@pytest.fixture
def host(accounts: Accounts) -> Iterator[TestHost]:
    with TestHost(config=f"""\
access:
  group: {accounts.access_group}
  roles:
    viewer: [{accounts.viewer.name}]
    operator: [{accounts.operator.name}]
    admin: ["@{accounts.admin_group}"]
""") as test_host:
        test_host.workdir.chmod(0o711)   # the socket's directory: others may reach the socket
        yield test_host


def refused_for(reply: dict[str, Any], operation: str, needed: str) -> bool:
    return (reply.get("ok") is False and reply.get("api") == API_VERSION
            and reply["error"].startswith(f"permission denied: {operation} needs the "
                                          f"{needed} role"))


def test_each_role_is_allowed_its_calls_and_refused_the_rest(
        host: TestHost, accounts: Accounts) -> None:
    sock = host.socket
    info = os.stat(sock)
    assert info.st_mode & 0o777 == 0o660
    assert info.st_gid == grp.getgrnam(accounts.access_group).gr_gid
    up = {"op": "up", "text": TOPOLOGY, "source": str(host.workdir / "acl.yaml")}
    vm_stop = {"op": "vm", "action": "stop", "node": "n0", "lab": LAB}

    # Outside the socket's group: the kernel refuses the connect.
    assert call_as(accounts.outsider, sock, {"op": "ping"})[1] == {"connect": "EACCES"}
    # In the group, but no role: told so, by name.
    _, reply = call_as(accounts.norole, sock, {"op": "status"})
    assert refused_for(reply, "status", "viewer") and "hold no role" in reply["error"]

    # The admin's role comes from a supplementary group.
    admin_pid, reply = call_as(accounts.admin, sock, up)
    assert reply["ok"] and reply["result"]["lab"] == LAB, reply

    # A viewer reads, and nothing more.
    for request in ({"op": "ping"}, {"op": "status"}, {"op": "fdb", "lab": LAB},
                    {"op": "node", "node": "n0"}):
        assert call_as(accounts.viewer, sock, request)[1]["ok"], request
    viewer_pid, reply = call_as(accounts.viewer, sock, vm_stop)
    assert refused_for(reply, "vm.stop", "operator"), reply
    assert "hold the viewer role" in reply["error"]
    assert f"access.roles.operator in {host.vnetd_args[-1]}" in reply["error"]
    assert refused_for(call_as(accounts.viewer, sock, up)[1], "up", "admin")
    assert refused_for(call_as(accounts.viewer, sock, {"op": "shutdown"})[1], "shutdown",
                       "admin")
    capture = {"op": "capture", "node": "n0"}   # the frames' contents: an operator's
    assert refused_for(call_as(accounts.viewer, sock, capture)[1], "capture", "operator")

    # An operator works the nodes (this vm stop passes the check: vnetd's own answer is
    # that n0 is no VM) but does not change labs or the daemon.
    operator_pid, reply = call_as(accounts.operator, sock, vm_stop)
    assert reply == {"ok": False, "error": "node 'n0' is a namespace node, not a VM",
                     "api": API_VERSION}
    reply = call_as(accounts.operator, sock, capture)[1]   # its end, the client's exit
    assert reply["ok"] and reply["result"]["port"] == "n0.eth0", reply
    assert call_as(accounts.operator, sock, {"op": "status", "lab": LAB})[1]["ok"]
    assert refused_for(call_as(accounts.operator, sock, {"op": "down", "lab": LAB})[1],
                       "down", "admin")

    # Still up: nothing refused got through.  The admin takes it down.
    assert [lab["name"] for lab in host.call("status")["labs"]] == [LAB]
    down_pid, reply = call_as(accounts.admin, sock, {"op": "down", "lab": LAB})
    assert reply["ok"], reply

    audit = [json.loads(line) for line in
             (Path(host.state_dir) / "audit.log").read_text().splitlines()]
    seen = [(e["user"], e["uid"], e["pid"], e["op"], e["lab"], e["result"]) for e in audit]
    viewer, operator, admin = accounts.viewer, accounts.operator, accounts.admin
    assert seen[:2] == [(admin.name, admin.uid, admin_pid, "up", LAB, "ok"),
                        (viewer.name, viewer.uid, viewer_pid, "vm.stop", LAB, "error")]
    assert [(e["user"], e["op"], e["result"]) for e in audit[2:]] == [
        (viewer.name, "up", "error"), (viewer.name, "shutdown", "error"),
        (viewer.name, "capture", "error"), (operator.name, "vm.stop", "error"),
        (operator.name, "capture", "ok"), (operator.name, "down", "error"),
        (admin.name, "down", "ok")]
    assert (audit[5]["pid"], audit[-1]["pid"]) == (operator_pid, down_pid)
    assert audit[1]["error"].startswith("permission denied: vm.stop needs the operator role")
    assert audit[5]["error"] == "node 'n0' is a namespace node, not a VM"
    assert all(e["time"].endswith("+00:00") for e in audit)
    logged = (host.workdir / "vnetd.log").read_text()
    assert f"audit {json.dumps(audit[0], separators=(',', ':'))}" in logged
    assert logged.count(" vnet.audit: audit {") == len(audit)   # reads are not audited


def cli_as(account: Account, *args: str) -> tuple[int, str]:
    """``vnet ARGS`` run by a forked child that has become ``account`` (the interpreter
    itself may be unreachable for other users, so no exec): its exit status and stderr."""
    cli.build_parser()   # its lazy imports, while the standard library is reachable
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            os.close(read_end)
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            os.setgroups(list(account.groups))
            os.setgid(account.gid)
            os.setuid(account.uid)
            status = cli.main(list(args))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        stderr = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stderr


def test_the_cli_says_which_role_is_needed(host: TestHost, accounts: Accounts) -> None:
    topology = host.workdir / "acl.yaml"
    topology.write_text(TOPOLOGY)
    topology.chmod(0o644)
    viewer = accounts.viewer
    status, stderr = cli_as(viewer, "--socket", host.socket, "--state-dir", host.state_dir,
                            "up", str(topology))
    assert status == 1, stderr
    assert stderr.startswith(f"vnet: permission denied: up needs the admin role and you "
                             f"(uid {viewer.uid}, user {viewer.name}) hold the viewer role; "
                             f"an administrator can add"), stderr
    status, stderr = cli_as(accounts.outsider, "--socket", host.socket, "status")
    assert status == 1, stderr
    assert stderr.startswith(f"vnet: {host.socket}: permission denied: only root and the "
                             f"members of vnetd's access group"), stderr
    assert "Traceback" not in stderr and "Errno" not in stderr
