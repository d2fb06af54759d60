"""The process vnetd starts for ``vnet exec``: it enters the node, becomes the caller, execs.

Run as ``python -m vnet.host.nodeexec --spec-fd FD`` as root, on the caller's stdin, stdout
and stderr, with the plan (``daemon.attach.ExecPlan.spec``, JSON) to read from FD.  In this
order: the node's network namespace and its view of /sys and /etc (``netns.become_node``, as
``ip netns exec``), while still root; then the caller's groups, gid and uid; then the
caller's directory (as the caller: a directory it cannot enter is not entered, ``/`` is
used) and its environment, given only to the command (this interpreter runs with vnetd's).
It dies with vnetd (``PR_SET_PDEATHSIG``).  What goes wrong is said on the caller's stderr
with the exit status a shell would give: 127 no such command, 126 cannot run it or enter
the node.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sys
from typing import Any

from vnet.errors import NetnsError
from vnet.host import netns

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def say(message: str) -> None:
    os.write(2, f"vnet: {message}\n".encode(errors="replace"))


def die_with_parent(parent: int) -> None:
    """Be killed when vnetd goes: a command whose client is gone (vnetd's end of the
    connection with it) is not left running.  Set after the change of uid, which clears it."""
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:   # vnetd went before the setting was made
        os._exit(126)


def read_spec(fd: int) -> dict[str, Any]:
    with os.fdopen(fd, "rb") as source:
        spec: dict[str, Any] = json.loads(source.read())
    return spec


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--spec-fd":
        say("nodeexec: usage: python -m vnet.host.nodeexec --spec-fd FD (vnetd runs it)")
        return 2
    spec = read_spec(int(argv[1]))
    node, command = spec["node"], spec["command"]
    try:
        fd = netns.open_netns(spec["netns"])
        try:
            netns.become_node(fd, spec["netns"])
        finally:
            os.close(fd)
        os.setgroups(spec["groups"])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
        die_with_parent(spec["parent"])
    except (NetnsError, OSError) as err:
        say(f"cannot enter node {node}: {err}")
        return 126
    try:
        os.chdir(spec["cwd"])
    except OSError:
        os.chdir("/")
    env = dict(entry.split("=", 1) for entry in spec["env"])
    # As a shell finds it: the first executable of that name on PATH (a directory the user
    # cannot search is passed over, not a reason to fail).
    program = command[0] if "/" in command[0] else shutil.which(
        command[0], path=env.get("PATH", os.defpath))
    if program is None:
        say(f"{command[0]}: command not found in node {node}")
        return 127
    try:
        os.execve(program, command, env)
    except FileNotFoundError:
        say(f"{command[0]}: no such file in node {node}")
        return 127
    except OSError as err:
        say(f"{command[0]}: cannot run it in node {node}: {err.strerror or err}")
        return 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
