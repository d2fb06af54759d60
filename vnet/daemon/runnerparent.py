"""vnetd's side of the runners' warm parent (``vnet/kvm/forkserver.py``).

``RunnerParent`` starts the fork server once, when the first VM starts, and asks it for a
runner per VM; ``ForkedRunner`` is such a runner, seen as ``asyncio.subprocess.Process``
is (``pid``, ``returncode``, ``wait``, ``terminate``, ``kill``): its exit status comes
from the fork server, its signals go through the pidfd the fork server sent.  When the fork
server cannot be had, the caller starts runners as processes of their own as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from vnet.daemon import pidfile

log = logging.getLogger("vnet.vms")
START_TIMEOUT = 30.0   # the warm-up: imports, the CPUID probe, maybe the tiny guest's build
FORK_TIMEOUT = 10.0


class ForkedRunner:
    """A runner the fork server made: its end and status, and signals through its pidfd."""

    def __init__(self, pid: int, pidfd: int, conn: socket.socket, early: bytes = b"") -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._watched = pidfile.Watched.from_pidfd(pid, pidfd)
        self._status = asyncio.create_task(self._read_status(conn, early))

    async def _read_status(self, conn: socket.socket, early: bytes) -> int | None:
        """The status line (``early``: what came with the pid, if it ended at once)."""
        reader, writer = await asyncio.open_unix_connection(sock=conn)
        try:
            line = early if early.endswith(b"\n") else early + await reader.readline()
        finally:
            writer.close()
        try:
            status = json.loads(line).get("status") if line else None
        except ValueError:
            status = None
        return status if isinstance(status, int) else None

    async def wait(self) -> int | None:
        """Its exit status once it has ended; None when the fork server went away first
        (then its end is seen through the pidfd, and its status is unknown)."""
        status = await asyncio.shield(self._status)   # a cancelled waiter leaves it be
        if status is None:
            await self._watched.wait()
        self.returncode = status if status is not None else 1
        self._watched.close()
        return status

    def terminate(self) -> None:
        self._watched.signal(signal.SIGTERM)

    def kill(self) -> None:
        self._watched.signal(signal.SIGKILL)


class RunnerParent:
    """The fork server of one vnetd, started on first use and stopped when vnetd leaves
    (its runners stay: they run in sessions of their own)."""

    def __init__(self, state_dir: Path) -> None:
        self.socket_path = state_dir / "forkserver.sock"
        self.process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.failed: str | None = None   # why it could not be started: runners are exec'd
        self._warming: asyncio.Task[bool] | None = None

    def warm_up(self) -> None:
        """Start it in the background (``spawn`` waits for it)."""
        if self._warming is None or self._warming.done():
            self._warming = asyncio.create_task(self._ensure())

    @property
    def marker(self) -> str:
        """On the command line of every runner it forked (``pidfile.running``)."""
        return str(self.socket_path)

    async def _ensure(self) -> bool:
        async with self._lock:
            if self.process is not None and self.process.returncode is None:
                return True
            if self.failed is not None:
                return False
            try:
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "vnet.kvm.forkserver", "--socket",
                    str(self.socket_path), stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, start_new_session=True)
            except OSError as err:
                self.failed = f"the runners' fork server could not be started: {err}"
                log.warning("%s: starting each runner on its own", self.failed)
                return False
            assert self.process.stdout is not None
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    ready = await self.process.stdout.readline()
            except TimeoutError:
                ready = b""
            if ready.strip() != b"ready":
                self.failed = "the runners' fork server did not start"
                log.warning("%s: starting each runner on its own", self.failed)
                await self._stop()
                return False
            log.info("the runners' fork server runs, pid %d", self.process.pid)
            return True

    async def spawn(self, argv: list[str], stderr: Path) -> ForkedRunner | None:
        """A runner with ``argv`` (``vnet.kvm.runner``'s), or None when the fork server
        cannot make one (the caller then starts it on its own)."""
        if not await self._ensure():
            return None
        try:
            pid, pidfd, conn, early = await asyncio.to_thread(self._ask, argv, str(stderr))
        except (OSError, ValueError) as err:
            log.warning("the runners' fork server did not fork a runner (%s): starting it "
                        "on its own", err)
            return None
        return ForkedRunner(pid, pidfd, conn, early)

    def _ask(self, argv: list[str], stderr: str) -> tuple[int, int, socket.socket, bytes]:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(FORK_TIMEOUT)
            conn.connect(str(self.socket_path))
            conn.sendall(json.dumps({"argv": argv, "stderr": stderr}).encode() + b"\n")
            message, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
            first, _, early = message.partition(b"\n")
            reply = json.loads(first)
            if "pid" not in reply or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise ValueError(str(reply.get("error", "no pid in its reply")))
            conn.setblocking(False)
            return int(reply["pid"]), fds[0], conn, early
        except BaseException:
            conn.close()
            raise

    async def stop(self) -> None:
        """vnetd leaves, or no VM is left: the fork server ends; the runners it forked go
        on."""
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
            if process.returncode is None:
                process.kill()
                await process.wait()
        self.socket_path.unlink(missing_ok=True)
