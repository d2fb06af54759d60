"""``vnet exec`` and ``vnet console`` through vnetd: what may be run or attached, decided.

vnetd is the gate, as ``docker exec``, ``machinectl shell`` and libvirt's
``virDomainOpenConsole`` are: the caller never enters a namespace or reaches a runner's
console socket itself (both are root's).  For exec, vnetd (root) starts the command in the
node, as the caller (``SO_PEERCRED``'s uid, the user's groups), on the caller's own stdin,
stdout and stderr, passed over the API socket (``SCM_RIGHTS``); for console attach, vnetd
connects to the runner's console and passes the connection back.

Everything here is pure: the checks of a request against the node it names, the helper's
command line, the exit status as a reply and the signals a client may forward.  The fd
passing is ``fdpass``; the sessions themselves are ``service``'s.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vnet.daemon.audit import Peer
from vnet.daemon.requests import ExecRequest
from vnet.errors import DaemonError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                       signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH})
"""Signals a client may ask to be delivered to its command (what a terminal or a
supervisor sends); SIGKILL is what a disconnect brings."""


@dataclass(frozen=True)
class NodeView:
    """What the checks need to know of the node a request names."""

    lab: str
    node: str
    kind: str                 # "netns" or "vm"
    netns: str | None = None  # a namespace node's namespace
    state: str | None = None  # a VM's state ("running", ...)
    console_socket: str | None = None


@dataclass(frozen=True)
class ExecPlan:
    """A command to start in a node as a user: the helper (``vnet.host.nodeexec``) reads it
    whole (``spec``) from a file descriptor."""

    lab: str
    node: str
    netns: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    command: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    parent: int   # vnetd's pid: the command dies with it

    def spec(self) -> str:
        return json.dumps({"netns": self.netns, "node": self.node, "parent": self.parent,
                           "uid": self.uid,
                           "gid": self.gid, "groups": list(self.groups),
                           "command": list(self.command), "env": list(self.env),
                           "cwd": self.cwd})

    def helper(self, spec_fd: int, python: str = sys.executable) -> list[str]:
        """The helper's command line: a fresh single-threaded process enters the node and
        becomes the user (vnetd itself never forks a Python child: ``netns``).  It reads
        ``spec`` from ``spec_fd``: a command line is anyone's to read (``ps``), and the
        caller's environment may hold secrets."""
        return [python, "-m", "vnet.host.nodeexec", "--spec-fd", str(spec_fd)]


def exec_plan(node: NodeView, peer: Peer, request: ExecRequest, parent: int) -> ExecPlan:
    """What ``request`` from ``peer`` runs (started by vnetd, pid ``parent``), or a
    ``DaemonError`` saying why nothing does."""
    if node.kind != "netns" or node.netns is None:
        raise DaemonError(f"node {node.node!r} of lab {node.lab!r} is a VM: exec runs "
                          f"commands in namespace nodes; use 'vnet console {node.node}'")
    if not request.command:
        raise DaemonError("exec: say what to run: vnet exec NODE -- COMMAND [ARGS...]")
    env = tuple(request.env) if request.env is not None else (f"PATH={DEFAULT_PATH}",)
    return ExecPlan(node.lab, node.node, node.netns, peer.uid, peer.gid, peer.gids,
                    tuple(request.command), env, request.cwd or "/", parent)


def console_socket(node: NodeView) -> str:
    """The runner console to connect to for an attach, or why there is none."""
    if node.kind != "vm":
        raise DaemonError(f"node {node.node!r} of lab {node.lab!r} is a namespace node: it "
                          f"has no console; use 'vnet exec {node.node} -- sh'")
    if node.state != "running" or not node.console_socket:
        raise DaemonError(f"vm {node.node!r} is {node.state or 'not running'}: start it with "
                          f"'vnet vm start {node.node}'")
    return node.console_socket


def exit_result(returncode: int) -> dict[str, Any]:
    """The final reply's result for a command that ended with ``returncode`` (asyncio's:
    negative for a signal)."""
    return {"signal": -returncode} if returncode < 0 else {"exit": returncode}


def signal_to_forward(message: Mapping[str, Any]) -> signal.Signals | None:
    """The signal a client's ``{"signal": N}`` line asks for, if it is one it may send."""
    number = message.get("signal")
    if not isinstance(number, int) or isinstance(number, bool):
        return None
    try:
        sig = signal.Signals(number)
    except ValueError:
        return None
    return sig if sig in FORWARDED else None


def command_line(command: Sequence[str]) -> str:
    """The command as the audit and the log say it."""
    return " ".join(json.dumps(a) if not a or any(c.isspace() or c in "\"'\\" for c in a)
                    else a for a in command)
