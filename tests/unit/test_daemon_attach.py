"""exec and console attach through vnetd: the pure checks (``attach``), and fds passed over a
real Unix socket by the API server (``fdpass``), with a session standing in for vnetd's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_daemon_api import Handlers
from vnet import jsonlines
from vnet.cli_attach import exit_status
from vnet.daemon import attach
from vnet.daemon.api import ApiServer, Outcome
from vnet.daemon.attach import NodeView
from vnet.daemon.audit import AuditLog, Peer
from vnet.daemon.defaults import API_VERSION
from vnet.daemon.fdpass import Channel
from vnet.daemon.requests import ExecRequest
from vnet.errors import DaemonError

PEER = Peer(4242, 1001, 1001, "olga", (1001, 2000))
NETNS = NodeView("lab", "c1", "netns", netns="vnet-lab-c1")
VM = NodeView("lab", "vm1", "vm", state="running", console_socket="/run/c.sock")


def test_an_exec_runs_as_the_peer_in_the_nodes_namespace() -> None:
    plan = attach.exec_plan(NETNS, PEER, ExecRequest("c1", ["id", "-u"], ["HOME=/h"], "/tmp"),
                            99)
    assert (plan.netns, plan.uid, plan.gid, plan.groups) == ("vnet-lab-c1", 1001, 1001,
                                                             (1001, 2000))
    assert (plan.command, plan.env, plan.cwd) == (("id", "-u"), ("HOME=/h",), "/tmp")
    assert plan.helper(7, "/py") == ["/py", "-m", "vnet.host.nodeexec", "--spec-fd", "7"]
    assert json.loads(plan.spec())["uid"] == 1001
    assert "HOME=/h" not in " ".join(plan.helper(7))   # the environment is not on argv
    default = attach.exec_plan(NETNS, PEER, ExecRequest("c1", ["true"]), 99)
    assert default.env == (f"PATH={attach.DEFAULT_PATH}",) and default.cwd == "/"


def test_exec_and_attach_refuse_the_wrong_kind_of_node() -> None:
    with pytest.raises(DaemonError, match=r"'vm1' of lab 'lab' is a VM: .*vnet console vm1"):
        attach.exec_plan(VM, PEER, ExecRequest("vm1", ["true"]), 99)
    with pytest.raises(DaemonError, match="say what to run"):
        attach.exec_plan(NETNS, PEER, ExecRequest("c1", []), 99)
    with pytest.raises(DaemonError, match="'c1' of lab 'lab' is a namespace node"):
        attach.console_socket(NETNS)
    stopped = NodeView("lab", "vm1", "vm", state="stopped")
    with pytest.raises(DaemonError, match="vm 'vm1' is stopped: start it with"):
        attach.console_socket(stopped)
    assert attach.console_socket(VM) == "/run/c.sock"


def test_exit_statuses_and_forwarded_signals() -> None:
    assert attach.exit_result(7) == {"exit": 7}
    assert attach.exit_result(-signal.SIGINT) == {"signal": 2}
    assert exit_status({"exit": 7}) == 7
    assert exit_status({"signal": 2}) == 130
    assert exit_status({}) == 1
    assert attach.signal_to_forward({"signal": 2}) == signal.SIGINT
    for bad in (9, 19, True, "2", 999, None):
        assert attach.signal_to_forward({"signal": bad}) is None, bad
    assert attach.command_line(["sh", "-c", "a b", ""]) == 'sh -c "a b" ""'


def test_a_session_takes_the_clients_fds_and_answers_on_them(tmp_path: Path) -> None:
    """The server asks for three fds, writes on the one it got as stdout, and the client's
    own pipe carries it; the audit hears how it went.  A real socket, no root."""
    audited: list[dict[str, Any]] = []

    async def session(request: ExecRequest, peer: Peer, channel: Channel,
                      record: Any) -> None:
        fds = await channel.ask_for_fds(jsonlines.ok({"fds": 3}), 3)
        os.write(fds[1], b"from vnetd\n")
        for fd in fds:
            os.close(fd)
        record(Outcome("lab", None, {"node": request.node}))
        await channel.send(jsonlines.ok({"exit": 0}))

    audit = AuditLog(None)
    audit.record = audited.append   # type: ignore[method-assign,assignment]
    server = ApiServer(tmp_path / "api.sock", Handlers().table(), audit=audit,
                       sessions={"exec": session})

    def client() -> tuple[list[dict[str, Any]], bytes]:
        read_end, write_end = os.pipe()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(tmp_path / "api.sock"))
            sock.sendall(jsonlines.encode({"op": "exec", "node": "c1", "command": ["x"]}))
            stream = sock.makefile("rb")
            first = json.loads(stream.readline())
            socket.send_fds(sock, [b"\0"], [0, write_end, 2])
            os.close(write_end)
            last = json.loads(stream.readline())
        with os.fdopen(read_end, "rb") as pipe:
            return [first, last], pipe.read()

    async def run() -> tuple[list[dict[str, Any]], bytes]:
        await server.start()
        try:
            return await asyncio.to_thread(client)
        finally:
            await server.stop()

    replies, output = asyncio.run(run())
    assert replies == [{"ok": True, "result": {"fds": 3}, "api": API_VERSION},
                       {"ok": True, "result": {"exit": 0}, "api": API_VERSION}]
    assert output == b"from vnetd\n"
    assert [(a["op"], a["result"], a["node"], a["uid"]) for a in audited] == [
        ("exec", "ok", "c1", os.getuid())]


def test_a_session_op_without_a_connection_is_refused_plainly(tmp_path: Path) -> None:
    async def session(*args: Any) -> None:
        raise AssertionError("not reached")

    server = ApiServer(tmp_path / "api.sock", Handlers().table(), sessions={"exec": session})
    reply = asyncio.run(server.handle(jsonlines.encode(
        {"op": "exec", "node": "c1", "command": ["x"]})))
    assert reply == {"ok": False, "error": "exec needs a connection to vnetd's socket"}
