"""One datapath process as vnetd sees it: spawned as a warm spare, woken, and its death.

A death is noticed through a *lifeline* (see ``vnet.datapath.main``): a pipe whose write end
only the datapath holds, at a high fd number.  The kernel closes a dying process's files
from the highest number down, so the pipe's end reaches vnetd a few ms after the kill,
before the packet sockets' teardown (~0.1 s with rings) and before ``waitpid`` could tell.
The same pipe carries one byte when the datapath listens, so nobody polls for its start.

The process is signalled through a pidfd: ``Popen.send_signal`` would reap a zombie under
asyncio's child watcher (which then reports status 255), and a bare pid may be reused.

The datapath outlives vnetd (a restart without loss): it runs in a session of its own, and
nothing makes it die with vnetd.  The next vnetd adopts it (``AdoptedDatapath``): it is no
longer that vnetd's child, and the lifeline's read end died with the vnetd that made it.  A
pidfd (``vnet.daemon.pidfile``) tells of its death only once it has exited, after its
packet sockets' teardown (~0.1 s later than a lifeline: measured in docs/benchmarks.md), so
the adopting vnetd asks for a new lifeline (``protocol.Lifeline``: a control connection the
datapath keeps at the fd number of the old one) and hears the death from whichever of the
two tells first.  A datapath that does not know the request (another vnet version) is
watched by its pidfd alone.  A warm spare, by contrast, ends with the vnetd that made it:
its stdin reaches EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import vnet
from vnet import jsonlines
from vnet.daemon import pidfile
from vnet.daemon.pidfile import Watched
from vnet.datapath import protocol
from vnet.errors import DatapathError, VnetError

log = logging.getLogger("vnet.supervisor")


async def spawn_spare(python: str, control_path: Path, log_path: Path) -> DatapathProcess:
    """A datapath process that has started its interpreter and waits to be woken
    (``--standby``); ``DatapathError`` if it cannot be started."""
    env = None
    if python != sys.executable:  # it finds vnet where this interpreter does
        env = {**os.environ, "PYTHONPATH": str(Path(vnet.__file__).resolve().parents[1])}
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        with open(log_path, "ab") as logfile:
            process = await asyncio.create_subprocess_exec(
                python, "-m", "vnet.datapath.main", "--control", str(control_path),
                "--lifeline", str(write_end), "--standby",
                stdin=asyncio.subprocess.PIPE, stdout=logfile, stderr=logfile, env=env,
                pass_fds=(write_end,), start_new_session=True)
    except OSError as err:
        os.close(read_end)
        raise DatapathError(f"cannot start the datapath with {python}: "
                            f"{err.strerror or err}") from None
    finally:
        os.close(write_end)
    return DatapathProcess(process, read_end)


class DatapathProcess:
    """One datapath process and its lifeline (the read end of the pipe)."""

    def __init__(self, process: asyncio.subprocess.Process, lifeline: int) -> None:
        self.process = process
        self.pid = process.pid
        self._lifeline = lifeline
        # signalled through a pidfd: Popen.send_signal would reap a zombie under the child
        # watcher's feet (which then reports status 255), and a bare pid may be reused
        self._pidfd: int | None = None
        with contextlib.suppress(OSError):   # already gone (and reaped): nothing to signal
            self._pidfd = pidfile.open_pidfd(process.pid)   # None: no pidfds here
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._dead: asyncio.Future[None] = loop.create_future()
        loop.add_reader(lifeline, self._on_lifeline)
        self._exit = asyncio.create_task(self._wait_exit(), name="datapath reaper")
        self._exit.add_done_callback(_log_failure)

    @property
    def alive(self) -> bool:
        return not self._dead.done()

    async def ready(self, timeout: float, log_path: Path) -> None:
        """Until it listens; ``DatapathError`` if it dies first or takes too long."""
        done, _ = await asyncio.wait({self._ready, self._dead}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._ready in done:
            return
        if not done:
            raise DatapathError(f"the datapath did not start within {timeout:.0f} s; see "
                                f"{log_path}")
        raise DatapathError(f"the datapath {await self.death()} at its start; see {log_path}")

    async def dead_within(self, timeout: float) -> bool:
        await asyncio.wait({self._dead}, timeout=timeout)
        return self._dead.done()

    async def died(self) -> str:
        """Until it dies (it is killed to be sure: no second datapath beside the next);
        how it died."""
        await asyncio.shield(self._dead)
        self.kill()
        return await self.death()

    async def death(self) -> str:
        """How it died: from /proc while it is dying, else from its reaping (which the
        child watcher may have done a moment ago)."""
        status = self.process.returncode
        if status is None:
            status = _exit_status(self.pid)
        if status is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    status = await asyncio.shield(self.process.wait())
        if status is None:
            return "died"
        if status < 0:
            return f"was killed by {_signal_name(-status)}"
        return f"exited with status {status}"

    def wake(self) -> None:
        """A spare (``--standby``) goes on to bind the control socket and run."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):   # it died meanwhile: ready() says so
                self.process.stdin.write(b"g")

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def terminate(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; until it is gone."""
        if self.process.returncode is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.process.wait()

    def release(self) -> None:
        """vnetd leaves and the datapath stays: stop watching it."""
        if not self._dead.done():
            asyncio.get_running_loop().remove_reader(self._lifeline)
        self._exit.cancel()

    def signal(self, number: int) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):   # reaped meanwhile
                signal.pidfd_send_signal(self._pidfd, number)
        elif self.process.returncode is None:   # no pidfds here: by pid, until reaped
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def _on_lifeline(self) -> None:
        try:
            data = os.read(self._lifeline, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            if not self._ready.done():
                self._ready.set_result(None)
            return
        self._gone()

    async def _wait_exit(self) -> None:
        try:
            await self.process.wait()
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        self._gone()   # in case the lifeline did not tell (it always should)

    def _gone(self) -> None:
        if self._dead.done():
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._lifeline)
        os.close(self._lifeline)
        self._dead.set_result(None)


def _exit_status(pid: int) -> int | None:
    """A dying (not yet reaped) child's exit status, from /proc (as ``returncode``:
    negative for a signal)."""
    found = pidfile.stat(pid)
    return None if found is None else pidfile.wait_status(found.exit_code)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _log_failure(task: asyncio.Task[None]) -> None:
    """The reaper failing is a bug: never silent."""
    if not task.cancelled() and (err := task.exception()) is not None:
        log.critical("%s failed: %r", task.get_name(), err, exc_info=err)


class AdoptedDatapath:
    """A datapath an earlier vnetd started, found running (see the module's doc); the
    supervisor's handle on it is the same as on a ``DatapathProcess``."""

    def __init__(self, watched: Watched) -> None:
        self.pid = watched.pid
        self._watched = watched
        self._lifeline: socket.socket | None = None
        self._dead: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._exit = asyncio.create_task(self._wait_exit(), name="adopted datapath watch")
        self._exit.add_done_callback(_log_failure)

    @property
    def alive(self) -> bool:
        return not self._dead.done()

    @property
    def has_lifeline(self) -> bool:
        return self._lifeline is not None

    async def attach_lifeline(self, control_path: Path, timeout: float) -> str | None:
        """Ask the datapath for a lifeline on a connection of its own; None once it holds
        one, else why not (the pidfd alone then tells of its death)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, str(control_path))
                await loop.sock_sendall(sock, protocol.encode(protocol.Lifeline()))
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await loop.sock_recv(sock, 4096)
                    if not chunk:
                        raise DatapathError("the datapath closed the connection")
                    line += chunk
            result = protocol.result(jsonlines.decode(line), protocol.Lifeline.op)
            if not isinstance(result, dict) or result.get("pid") != self.pid:
                raise DatapathError(f"the lifeline is held by another process ({result!r})")
        except (OSError, TimeoutError, VnetError) as err:
            sock.close()
            return str(err) or type(err).__name__
        if not self.alive:
            sock.close()
            return "the datapath died meanwhile"
        self._lifeline = sock
        loop.add_reader(sock.fileno(), self._on_lifeline)
        return None

    async def dead_within(self, timeout: float) -> bool:
        await asyncio.wait({self._dead}, timeout=timeout)
        return self._dead.done()

    async def died(self) -> str:
        """Until it dies (killed to be sure, as ``DatapathProcess.died``); how it died."""
        await asyncio.shield(self._dead)
        self.kill()
        return await self.death()

    async def death(self) -> str:
        """How it died, from /proc while it is dying (the lifeline tells that early); its
        exit status is otherwise its parent's to know, not vnetd's."""
        status = self._watched.exit_status()
        if status is None:
            return "died (an adopted datapath: its exit status is not vnetd's to see)"
        if status < 0:
            return f"was killed by {_signal_name(-status)}"
        return f"exited with status {status}"

    def wake(self) -> None:
        pass

    def kill(self) -> None:
        self._watched.signal(signal.SIGKILL)

    def signal(self, number: int) -> None:
        self._watched.signal(number)

    async def terminate(self, timeout: float) -> None:
        await self._watched.stop(timeout)

    def release(self) -> None:
        """vnetd leaves and the datapath stays: stop watching it (the datapath keeps its
        end of the lifeline until the next vnetd's replaces it)."""
        self._exit.cancel()
        self._close_lifeline()
        self._watched.close()

    def _on_lifeline(self) -> None:
        if self._lifeline is None:
            return
        try:
            data = self._lifeline.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:   # nothing but its end is expected
            self._gone()

    async def _wait_exit(self) -> None:
        await self._watched.wait()
        self._gone()   # without a lifeline, or in case it did not tell

    def _gone(self) -> None:
        self._close_lifeline()
        if not self._dead.done():
            self._dead.set_result(None)

    def _close_lifeline(self) -> None:
        if self._lifeline is not None:
            asyncio.get_running_loop().remove_reader(self._lifeline.fileno())
            self._lifeline.close()
            self._lifeline = None


Datapath = DatapathProcess | AdoptedDatapath
