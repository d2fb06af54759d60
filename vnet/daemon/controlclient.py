"""vnetd's one connection to the datapath's control socket, shared by every caller.

A connection per request made 200 concurrent ``vnet status`` calls 200 connections to a
socket with a small backlog, and some failed for the others.  Here every request goes over
one long-lived connection: callers write their request lines in turn, and since the datapath
answers the lines of a connection one by one, in order, the n-th reply is the n-th request's
(pipelining, as HTTP/1.1 and Redis clients do).  A caller that gives up (timeout,
cancellation) leaves its place in the queue, so the replies after it still match.

When the connection breaks (the datapath died) every request waiting on it fails with a
``DatapathError`` that says so; the next request connects again, to the new datapath.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.datapath import protocol
from vnet.errors import DatapathError, DatapathGone, ProtocolError

log = logging.getLogger("vnet.supervisor")

CALL_TIMEOUT = 30.0   # a datapath that holds a request this long is stuck (or stopped)


@dataclass
class _Waiting:
    op: str
    reply: asyncio.Future[Any]


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    waiting: collections.deque[_Waiting] = field(default_factory=collections.deque)
    broken: str | None = None     # why it can carry no more requests
    task: asyncio.Task[None] | None = None


class ControlClient:
    def __init__(self, path: Path, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def call(self, request: protocol.Request) -> Any:
        """Send one request; its result, or ``DatapathError``."""
        connection = await self._connect()
        waiting = _Waiting(request.op, asyncio.get_running_loop().create_future())
        connection.waiting.append(waiting)
        connection.writer.write(protocol.encode(request))
        try:
            async with asyncio.timeout(self.timeout):
                return await waiting.reply
        except TimeoutError:
            raise DatapathError(f"the datapath did not answer {request.op!r} within "
                                f"{self.timeout:.0f} s (is it stopped?)") from None

    def close(self, why: str = "vnetd closed the connection") -> None:
        """Drop the connection (a new datapath is starting): whoever still waits on it
        fails, and the next request connects afresh."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._break(connection, why)

    async def _connect(self) -> _Connection:
        async with self._connecting:
            connection = self._connection
            if connection is not None and connection.broken is None:
                return connection
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path),
                                                                    limit=jsonlines.MAX_LINE)
            except FileNotFoundError:
                raise DatapathGone(f"the datapath is not reachable: its control socket "
                                    f"{self.path} is missing") from None
            except ConnectionRefusedError:
                raise DatapathGone(f"the datapath is not reachable: nothing listens on its "
                                    f"control socket {self.path}") from None
            except OSError as err:
                raise DatapathGone(f"the datapath is not reachable on {self.path}: "
                                    f"{err.strerror or err}") from None
            connection = _Connection(reader, writer)
            connection.task = asyncio.create_task(self._read_replies(connection),
                                                  name="datapath-replies")
            connection.task.add_done_callback(_log_failure)
            self._connection = connection
            return connection

    async def _read_replies(self, connection: _Connection) -> None:
        why = "the datapath closed the connection"
        try:
            while connection.broken is None:
                line = await connection.reader.readline()
                if not line.endswith(b"\n"):
                    break
                if not connection.waiting:
                    why = "the datapath sent a reply nobody asked for"
                    break
                waiting = connection.waiting.popleft()
                if waiting.reply.done():   # its caller gave up; the reply is still its own
                    continue
                try:
                    waiting.reply.set_result(protocol.result(jsonlines.decode(line),
                                                             waiting.op))
                except (DatapathError, ProtocolError) as err:
                    waiting.reply.set_exception(DatapathError(str(err)))
        except (OSError, ValueError, asyncio.LimitOverrunError) as err:
            why = f"the connection to the datapath broke ({err})"
        finally:
            self._break(connection, why)

    def _break(self, connection: _Connection, why: str) -> None:
        if connection.broken is None:
            connection.broken = why
        while connection.waiting:
            waiting = connection.waiting.popleft()
            if not waiting.reply.done():
                waiting.reply.set_exception(DatapathGone(
                    f"{connection.broken} during {waiting.op!r}"))
        connection.writer.close()
        if connection.task is not None and connection.task is not asyncio.current_task():
            connection.task.cancel()


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A task of the datapath's supervision that failed is a bug: never silent."""
    with contextlib.suppress(asyncio.CancelledError):
        if (err := task.exception()) is not None:
            log.critical("%s failed: %r", task.get_name(), err, exc_info=err)
