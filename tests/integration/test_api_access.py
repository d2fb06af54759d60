"""Who may use a real vnetd's API: clients run as throwaway users the test creates (a viewer,
an operator, an admin through a supplementary group, a member of the socket's group with no
role, an outsider), each call checked allowed or refused, and the audit file read back."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import signal
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


# ---- exec and console attach: vnetd is the gate ---------------------------------------------

@dataclass
class Child:
    """``vnet ARGS`` in a forked child that has become an account (as ``cli_as``), on
    pipes: its pid and the parent's ends of its stdin, stdout and stderr."""

    pid: int
    stdin: int
    stdout: int
    stderr: int
    status: int | None = None

    def wait(self, timeout: float = 60) -> int:
        from vnet.testing import wait_until

        def ended() -> bool:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            return pid != 0

        if self.status is None:
            wait_until(ended, timeout, message=f"vnet (pid {self.pid}) to exit")
        assert self.status is not None
        return self.status

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait()
        for fd in (self.stdin, self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)


def spawn_as(account: Account, sock: str, *args: str, env: dict[str, str] | None = None
             ) -> Child:
    cli.build_parser()   # its lazy imports, while the standard library is reachable
    pipes = [os.pipe() for _ in range(3)]
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            for target, (read_end, write_end) in enumerate(pipes):
                os.dup2(read_end if target == 0 else write_end, target)
                os.close(read_end)
                os.close(write_end)
            sys.stdin = os.fdopen(0, "r")
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            os.setgroups(list(account.groups))
            os.setgid(account.gid)
            os.setuid(account.uid)
            os.chdir("/")
            os.environ.update(env or {})
            status = cli.main(["--socket", sock, *args])
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    os.close(pipes[0][0])
    os.close(pipes[1][1])
    os.close(pipes[2][1])
    return Child(pid, pipes[0][1], pipes[1][0], pipes[2][0])


def run_cli_as(account: Account, sock: str, *args: str, stdin: bytes = b"",
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    child = spawn_as(account, sock, *args, env=env)
    try:
        os.write(child.stdin, stdin)
        os.close(child.stdin)
        with os.fdopen(os.dup(child.stdout), "rb") as out:
            stdout = out.read()
        with os.fdopen(os.dup(child.stderr), "rb") as err:
            stderr = err.read()
        return subprocess.CompletedProcess(args, child.wait(), stdout, stderr)
    finally:
        child.close()


def connect_as(account: Account, path: str) -> str:
    """"connected", or the errno name of ``account``'s connect to the Unix socket ``path``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups(list(account.groups))
            os.setgid(account.gid)
            os.setuid(account.uid)
            import errno
            import socket

            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(path)
                answer = "connected"
            except OSError as err:
                answer = errno.errorcode.get(err.errno or 0, str(err))
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def processes_of(uid: int, argv: list[str]) -> list[int]:
    """The pids of ``uid``'s processes running exactly ``argv``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            running = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            if entry.stat().st_uid == uid and running == [a.encode() for a in argv]:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def audit_of(host: TestHost) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            (Path(host.state_dir) / "audit.log").read_text().splitlines()]


def test_an_operator_execs_in_a_node_as_itself_and_a_viewer_is_refused(
        host: TestHost, accounts: Accounts) -> None:
    from vnet.testing import wait_until

    sock = host.socket
    lab = host.up(write_topology(host))
    mac = host.call("node", node="n0", lab=LAB)["nics"]["eth0"]["mac"]
    operator, viewer = accounts.operator, accounts.viewer

    # As the operator's uid and groups, inside n0's namespace with n0's /sys; its status.
    script = ("id -u; id -G; cat /sys/class/net/eth0/address; ip -o link show eth0; "
              "read line; echo \"got $line\"; echo \"$VNET_T\"; exit 7")
    ran = run_cli_as(operator, sock, "exec", "n0", "--", "sh", "-c", script,
                     stdin=b"typed\n", env={"VNET_T": "the caller's"})
    assert ran.returncode == 7, ran.stderr
    lines = ran.stdout.decode().splitlines()
    assert lines[0] == str(operator.uid)
    assert sorted(int(g) for g in lines[1].split()) == sorted(set(operator.groups))
    assert lines[2] == mac and "eth0" in lines[3] and lines[4] == "got typed"
    assert lines[5] == "the caller's"   # its environment

    # A viewer: refused, told the role it needs; nothing ran.
    refused = run_cli_as(viewer, sock, "exec", "n0", "--", "id", "-u")
    assert refused.returncode == 1 and refused.stdout == b""
    assert b"permission denied: exec needs the operator role" in refused.stderr
    # Bad requests: clear errors.
    missing = run_cli_as(operator, sock, "exec", "nope", "--", "true")
    assert missing.returncode == 1 and b"no node 'nope' is up" in missing.stderr
    notfound = run_cli_as(operator, sock, "exec", "n0", "--", "no-such-command-x")
    assert notfound.returncode == 127
    assert b"no-such-command-x: command not found in node n0" in notfound.stderr

    # Ctrl-C (SIGINT to the CLI) reaches the command; killing the CLI kills the command.
    sleeper = ["sleep", "infinity"]   # runs until it is killed
    for how in (signal.SIGINT, signal.SIGKILL):
        client = spawn_as(operator, sock, "exec", "n0", "--", *sleeper)
        try:
            wait_until(lambda: processes_of(operator.uid, sleeper), 30,
                       message="the operator's sleep to start in n0")
            os.kill(client.pid, how)
            assert client.wait(30) == (130 if how == signal.SIGINT else -signal.SIGKILL)
            wait_until(lambda: not processes_of(operator.uid, sleeper), 30,
                       message=f"the sleep to go with its client ({how.name})")
        finally:
            client.close()
            for pid in processes_of(operator.uid, sleeper):
                os.kill(pid, signal.SIGKILL)

    # vnetd killed: its client is told, and the command goes with it (no orphan).
    client = spawn_as(operator, sock, "exec", "n0", "--", *sleeper)
    try:
        wait_until(lambda: processes_of(operator.uid, sleeper), 30,
                   message="the operator's sleep to start in n0")
        host.kill_daemon()
        assert client.wait(30) == 1
        assert b"vnetd stopped before it answered this exec" in os.read(client.stderr, 65536)
        wait_until(lambda: not processes_of(operator.uid, sleeper), 30,
                   message="the sleep to go with vnetd")
    finally:
        client.close()
        for pid in processes_of(operator.uid, sleeper):
            os.kill(pid, signal.SIGKILL)
        host.start_daemon()

    execs = [(e["user"], e["op"], e["result"], e.get("command")) for e in audit_of(host)
             if e["op"] == "exec"]
    assert execs[:2] == [
        (operator.name, "exec", "ok", "sh -c " + json.dumps(script)),
        (viewer.name, "exec", "error", None)]
    assert execs[2][2] == "error" and execs[3][:3] == (operator.name, "exec", "ok")
    lab.close()


def write_topology(host: TestHost, text: str = TOPOLOGY) -> Path:
    path = host.workdir / "acl.yaml"
    path.write_text(text)
    return path


PAIR_TOPOLOGY = f"""\
name: {LAB}
networks:
  net: {{vlan: 10}}
nodes:
  n0: {{kind: netns, nics: [{{name: eth0, network: net, ip: 10.77.0.1/24}}]}}
  n1: {{kind: netns, nics: [{{name: eth0, network: net, ip: 10.77.0.2/24}}]}}
"""


def test_an_operator_pings_from_a_node_without_privileges(host: TestHost,
                                                          accounts: Accounts) -> None:
    """Under vnetd's unit (NoNewPrivileges) ping cannot gain CAP_NET_RAW from its file
    capabilities; ``setpriv --no-new-privs`` makes that so here.  It works all the same: a
    node's namespace lets every group open ICMP echo sockets (its own ping_group_range;
    the host's stays as it was)."""
    from vnet.testing import wait_until

    host_range = Path("/proc/sys/net/ipv4/ping_group_range").read_text()
    lab = host.up(write_topology(host, PAIR_TOPOLOGY))
    operator = accounts.operator
    sysctl = run_cli_as(operator, host.socket, "exec", "n0", "--", "cat",
                        "/proc/sys/net/ipv4/ping_group_range")
    assert sysctl.stdout.split() == [b"0", b"2147483647"], sysctl
    ping = ["setpriv", "--no-new-privs", "--", "ping", "-c1", "-W5", "10.77.0.2"]

    def pings() -> bool:
        ran = run_cli_as(operator, host.socket, "exec", "n0", "--", *ping)
        assert b"Operation not permitted" not in ran.stderr, ran.stderr
        return ran.returncode == 0

    wait_until(pings, 60, message="the operator's unprivileged ping from n0 to n1")
    assert Path("/proc/sys/net/ipv4/ping_group_range").read_text() == host_range
    lab.close()


VM_TOPOLOGY = f"""\
name: {LAB}
networks:
  net: {{vlan: 10}}
nodes:
  n0: {{kind: netns, nics: [{{name: eth0, network: net, ip: 10.77.0.1/24}}]}}
  vm0: {{kind: vm, memory: 16M, nics: [{{name: eth0, network: net, ip: 10.77.0.2/24}}]}}
"""


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_an_operator_attaches_to_a_console_through_vnetd_and_a_viewer_reads_it_only(
        host: TestHost, accounts: Accounts) -> None:
    import select

    from vnet.testing import wait_until

    sock = host.socket
    lab = host.up(write_topology(host, VM_TOPOLOGY))
    operator, viewer = accounts.operator, accounts.viewer
    wait_until(lambda: "ip 10.77.0.2 up" in host.cli("console", "vm0", "--no-follow").stdout,
               60, message="vm0 to boot")   # the tiny guest echoes its input from then on

    # The runner's console socket is root's alone: only vnetd can hand it over.
    path = host.call("node", node="vm0", lab=LAB)["console_socket"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert connect_as(operator, path) == "EACCES"

    # A viewer reads the log, and is refused the live console by name.
    log = run_cli_as(viewer, sock, "console", "vm0", "--no-follow")
    assert log.returncode == 0 and b"ip 10.77.0.2 up" in log.stdout, log.stderr
    refused = run_cli_as(viewer, sock, "console", "vm0")
    assert refused.returncode == 1 and b"ip 10.77.0.2 up" in refused.stdout
    assert b"permission denied: console.attach needs the operator role" in refused.stderr
    wrong = run_cli_as(operator, sock, "console", "n0")
    assert wrong.returncode == 1 and b"n0' is a namespace node" in wrong.stderr
    vm_exec = run_cli_as(operator, sock, "exec", "vm0", "--", "true")
    assert vm_exec.returncode == 1 and b"'vm0' of lab 'acl' is a VM" in vm_exec.stderr

    # The operator: what it types reaches the guest, which echoes it; Ctrl-] detaches.
    client = spawn_as(operator, sock, "console", "vm0")
    try:
        seen = b""

        def echoed() -> bool:
            nonlocal seen
            os.write(client.stdin, b"op-hello")
            while select.select([client.stdout], [], [], 0.2)[0]:
                chunk = os.read(client.stdout, 65536)
                if not chunk:
                    break
                seen += chunk
            return b"op-hello" in seen

        wait_until(echoed, 30, message=lambda: f"vm0 to echo; the client saw {seen[-300:]!r}")
        os.write(client.stdin, b"\x1d")
        assert client.wait(30) == 0
        assert b"[detached]" in os.read(client.stderr, 65536)
    finally:
        client.close()
    attaches = [(e["user"], e["result"], e.get("node")) for e in audit_of(host)
                if e["op"] == "console.attach"]
    assert attaches == [(viewer.name, "error", None), (operator.name, "ok", "vm0")]
    lab.close()
