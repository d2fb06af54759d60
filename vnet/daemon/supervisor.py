"""vnetd's handle on its datapath process: spawn, talk to, restart when it dies.

The datapath holds no state worth keeping: when it dies vnetd starts a new one and replays
every bridge and port from its lab records (``on_restart``), as Open vSwitch's
ovs-vswitchd rebuilds its datapath from the database.  Restart and replay hold the daemon's
lock, so they never interleave with an up or a down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import vnet
from vnet import jsonlines
from vnet.datapath import protocol
from vnet.errors import DatapathError, ProtocolError

log = logging.getLogger("vnet.supervisor")

START_TIMEOUT = 10.0


class DatapathSupervisor:
    """``python`` runs the datapath: this interpreter, or another such as PyPy (the datapath
    needs only the standard library and vnet's own pure-Python modules)."""

    def __init__(self, control_path: Path, log_path: Path,
                 on_restart: Callable[[], Awaitable[None]], python: str = sys.executable,
                 lock: asyncio.Lock | None = None) -> None:
        self.control_path = control_path
        self.log_path = log_path
        self.python = python
        self.on_restart = on_restart
        self.lock = lock or asyncio.Lock()  # the daemon's: a restart is one change among others
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self.control_path.unlink(missing_ok=True)
        env = None
        if self.python != sys.executable:  # it finds vnet where this interpreter does
            env = {**os.environ, "PYTHONPATH": str(Path(vnet.__file__).resolve().parents[1])}
        with open(self.log_path, "ab") as logfile:
            self.process = await asyncio.create_subprocess_exec(
                self.python, "-m", "vnet.datapath.main", "--control", str(self.control_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=logfile, env=env,
                preexec_fn=_die_with_parent)
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while True:
            try:
                await self.call(protocol.Ping())
                break
            except (OSError, DatapathError):
                if self.process.returncode is not None:
                    raise DatapathError(f"the datapath exited at start (status "
                                        f"{self.process.returncode}); see {self.log_path}"
                                        ) from None
                if asyncio.get_running_loop().time() > deadline:
                    raise DatapathError(f"the datapath did not answer within {START_TIMEOUT} s; "
                                        f"see {self.log_path}") from None
                await asyncio.sleep(0.05)
        self._watch = asyncio.create_task(self._watch_process(self.process))
        log.info("datapath started, pid %d", self.process.pid)

    async def _watch_process(self, process: asyncio.subprocess.Process) -> None:
        status = await process.wait()
        if self._stopping:
            return
        self.restarts += 1
        log.error("datapath exited with status %s; restarting it and replaying the ports", status)
        # Under the daemon's lock: an up or down in progress finishes first, and none starts
        # until the new datapath holds every recorded bridge and port again.
        async with self.lock:
            if self._stopping:
                return
            try:
                await self.start()
                await self.on_restart()
            except Exception:  # it died again (its new watcher restarts it), or cannot start
                log.exception("restarting the datapath failed")

    async def call(self, request: protocol.Request) -> Any:
        """Send one request to the datapath; its result, or ``DatapathError``."""
        op = request.op
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.control_path))
        except FileNotFoundError:
            raise DatapathError(f"the datapath is not reachable: its control socket "
                                f"{self.control_path} is missing") from None
        except ConnectionRefusedError:
            raise DatapathError(f"the datapath is not reachable: nothing listens on its "
                                f"control socket {self.control_path}") from None
        try:
            writer.write(protocol.encode(request))
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not line:
            raise DatapathError(f"the datapath closed the connection during {op!r}")
        try:
            reply = jsonlines.decode(line)
        except ProtocolError as err:
            raise DatapathError(f"datapath {op}: a malformed reply: {err}") from None
        return protocol.result(reply, op)

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when vnetd dies, so no orphan datapath outlives it."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
