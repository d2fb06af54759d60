"""``vnet exec`` and ``vnet console``: sessions with vnetd, which is the gate (``daemon.attach``).

``exec`` sends the command, its environment and directory; after vnetd's first reply it
passes its own stdin, stdout and stderr (``SCM_RIGHTS``), forwards the signals it gets
(Ctrl-C, a ``kill``) as ``{"signal": N}`` lines, and exits with the command's status.
``console`` prints the VM's console log (viewer), then asks vnetd for the live console
(operator) and relays the connection vnetd hands over until Ctrl-] or end of input.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import select
import signal
import socket
import sys
import termios
import tty
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from vnet import jsonlines
from vnet.daemon.defaults import EXEC_FDS
from vnet.errors import DaemonError

if TYPE_CHECKING:
    from vnet.cli import Client

DETACH = b"\x1d"  # Ctrl-], as virsh console
FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
MAX_FDS = 4       # received with one reply (vnetd sends one)


class Replies:
    """vnetd's reply lines on a session's socket, and the fds that came with them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self, op: str) -> tuple[dict[str, Any], list[int]]:
        from vnet.cli import check_api_version, stopped_before_answering

        fds: list[int] = []
        while b"\n" not in self.buffer:
            try:
                data, more, _, _ = socket.recv_fds(self.sock, 65536, MAX_FDS)
            except ConnectionResetError:
                data, more = b"", []
            fds += more
            if not data:
                for fd in fds:
                    os.close(fd)
                raise DaemonError(stopped_before_answering(op))
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        reply = jsonlines.decode(line)
        check_api_version(reply)
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise DaemonError(str(reply.get("error")))
        return reply, fds


@contextlib.contextmanager
def session(client: Client, request: dict[str, Any]) -> Iterator[tuple[socket.socket, Replies]]:
    """A connection to vnetd with ``request`` sent on it."""
    sock = client.open()
    try:
        sock.settimeout(None)   # a session lasts as long as its command or console
        sock.sendall(jsonlines.encode(request))
        yield sock, Replies(sock)
    finally:
        sock.close()


def caller_env() -> list[str]:
    """This process's environment, as the command gets it (entries that are not text, which
    vnetd's API cannot carry, are left out)."""
    entries = []
    for name, value in os.environ.items():
        entry = f"{name}={value}"
        with contextlib.suppress(UnicodeEncodeError):
            entry.encode()
            entries.append(entry)
    return entries


def caller_cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "/"


def cmd_exec(client: Client, args: argparse.Namespace) -> int:
    """COMMAND inside the node, with the node's /sys and /etc as ``ip netns exec``, run by
    vnetd as this user on this terminal; exits with the command's status."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise DaemonError("say what to run: vnet exec NODE -- COMMAND [ARGS...]")
    request = {"op": "exec", "node": args.node, "lab": args.lab, "command": command,
               "env": caller_env(), "cwd": caller_cwd()}
    from vnet.cli import check_size

    check_size(request)
    with session(client, request) as (sock, replies):
        replies.next("exec")                       # vnetd asks for the three fds
        socket.send_fds(sock, [b"\0"], list(range(EXEC_FDS)))
        with forwarding(sock):
            reply, _ = replies.next("exec")
    return exit_status(reply["result"])


@contextlib.contextmanager
def forwarding(sock: socket.socket) -> Iterator[None]:
    """While the command runs, the signals this process gets go to it (through vnetd)."""
    def forward(number: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(jsonlines.encode({"signal": number}))

    saved = {sig: signal.signal(sig, forward) for sig in FORWARD}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def exit_status(result: Mapping[str, Any]) -> int:
    """The exit status for an exec's last reply: the command's, or 128+N as a shell says
    a command killed by signal N."""
    if isinstance(result.get("signal"), int):
        return 128 + int(result["signal"])
    status = result.get("exit")
    return status if isinstance(status, int) and 0 <= status <= 255 else 1


def cmd_console(client: Client, args: argparse.Namespace) -> int:
    """A VM's serial console: what it printed so far, then live output and typed input over
    the connection vnetd hands over, until Ctrl-] (or end of input)."""
    result = client.call("console", action="log", node=args.node, lab=args.lab)
    sys.stdout.buffer.write(base64.b64decode(result["log"]))
    sys.stdout.flush()
    if args.no_follow:
        return 0
    if result["state"] != "running":
        raise DaemonError(f"vm {args.node} is {result['state']}: start it with "
                          f"vnet vm start {args.node}")
    request = {"op": "console", "action": "attach", "node": args.node, "lab": args.lab}
    with session(client, request) as (_, replies):
        _, fds = replies.next("console attach")
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise DaemonError("vnetd answered the console attach without the console's "
                          "connection; see its log")
    print(f"\r\n[attached to {args.node}; Ctrl-] detaches]\r", file=sys.stderr)
    with socket.socket(fileno=fds[0]) as console:
        relay(console)
    print("\r\n[detached]", file=sys.stderr)
    return 0


def relay(sock: socket.socket) -> None:
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    try:
        if saved is not None:
            tty.setraw(stdin)
        while True:
            ready, _, _ = select.select([sock, stdin], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                typed = os.read(stdin, 1024)
                if not typed or DETACH in typed:
                    sock.sendall(typed.split(DETACH)[0])
                    return
                sock.sendall(typed)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def add_commands(sub: Any) -> None:
    """Add ``exec`` and ``console`` to the CLI's subcommands."""
    p = sub.add_parser("exec", help="run a command inside a namespace node (as you, "
                       "through vnetd)")
    p.add_argument("--lab", help="the node's lab, when several labs have that node")
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)
    p = sub.add_parser("console", help="a VM's serial console (Ctrl-] detaches)")
    p.add_argument("node")
    p.add_argument("--lab", help="the node's lab, when several labs have that node")
    p.add_argument("--no-follow", action="store_true", help="print what is there and exit")
    p.set_defaults(func=cmd_console)
