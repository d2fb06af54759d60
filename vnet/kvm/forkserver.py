"""The runners' warm parent: imports the runner once and forks one per VM.

    python -m vnet.kvm.forkserver --socket PATH

A runner started as ``python -m vnet.kvm.runner`` spends about 0.3 s of CPU importing
trio and the runner's modules, and holds its own copy of every page they fill (~20 MiB).
This process does that once (and the CPUID probe, and the tiny guest's build check), then
serves a Unix socket: each connection asks for one runner, ``{"argv": [...], "stderr":
PATH}``, and gets ``{"pid": N}`` with the child's pidfd (SCM_RIGHTS), then ``{"status":
S}`` (as ``Popen.returncode``) when it ends.  The child shares the parent's pages
copy-on-write (``gc.freeze`` keeps the collector from writing to them), runs in a session
of its own, and outlives this process: on SIGTERM the parent leaves its children running,
as vnetd leaves its runners.  It prints ``ready`` on stdout once it serves.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from pathlib import Path

MAX_REQUEST = 1 << 16
PR_SET_PDEATHSIG = 1


def end_with_parent() -> None:
    """SIGTERM when vnetd ends, even by SIGKILL, so no fork server outlives it (the children
    do not inherit this)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not fatal: vnetd stops it when it leaves
    if os.getppid() == 1:   # vnetd was gone before the call
        os._exit(0)


def warm_up() -> None:
    """Everything every runner would do first, done once here for all of them."""
    from vnet.guest.build import build_tiny_guest
    from vnet.kvm import cpuid_probe, runner  # noqa: F401 - imported to be shared

    build_tiny_guest()
    with contextlib.suppress(Exception):  # then each runner probes (and reports) itself
        cpuid_probe.probe()        # cached: each child reports it without probing again
    gc.collect()
    gc.freeze()


def run_child(argv: list[str], stderr: str) -> int:
    """In the forked child: become a runner as ``python -m vnet.kvm.runner ARGV`` would."""
    os.setsid()
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(number, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    errors = os.open(stderr, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(errors, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdio
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    from vnet.kvm import runner

    sys.argv = ["vnet-vm", *argv]
    return runner.main(argv)


def parse_request(line: bytes) -> tuple[list[str], str]:
    """``{"argv": [str...], "stderr": path}``; ValueError says what is wrong."""
    request = json.loads(line)
    argv, stderr = request.get("argv"), request.get("stderr")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a list of strings")
    if not isinstance(stderr, str):
        raise ValueError("stderr must be a path")
    return argv, stderr


class Server:
    def __init__(self, path: Path) -> None:
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)
        self.listener.bind(str(path))
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.children: dict[int, tuple[int, socket.socket | None]] = {}  # pidfd: pid, conn

    def serve(self) -> None:
        while True:
            for key, _events in self.selector.select():
                key.data(key.fileobj)

    def _accept(self, _listener: object) -> None:
        conn, _ = self.listener.accept()
        try:
            conn.settimeout(5)
            line = conn.makefile("rb").readline(MAX_REQUEST)
            argv, stderr = parse_request(line)
        except (OSError, ValueError) as err:
            self._reply(conn, {"error": f"bad request: {err}"})
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            status = 73
            try:
                status = run_child(argv, stderr)
            except SystemExit as end:
                status = end.code if isinstance(end.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with_flush()
                os._exit(status)
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(conn, [json.dumps({"pid": pid}).encode() + b"\n"], [pidfd])
        except OSError:
            conn.close()
            self.children[pidfd] = (pid, None)
        else:
            self.children[pidfd] = (pid, conn)
        self.selector.register(pidfd, selectors.EVENT_READ, self._reap)

    def _reap(self, pidfd: object) -> None:
        assert isinstance(pidfd, int)
        self.selector.unregister(pidfd)
        pid, conn = self.children.pop(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if conn is not None:
            self._reply(conn, {"status": os.waitstatus_to_exitcode(status)})
            conn.close()

    @staticmethod
    def _reply(conn: socket.socket, reply: dict[str, object]) -> None:
        try:
            conn.settimeout(1)
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass   # vnetd left: the runner's end is seen by the next one's pidfd


def with_flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.kvm.forkserver",
                                     description="fork VM runners from a warm parent")
    parser.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _n, _f: os._exit(0))  # the children stay
    end_with_parent()
    warm_up()
    server = Server(args.socket)
    print("ready", flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
