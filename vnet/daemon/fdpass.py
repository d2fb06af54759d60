"""The API connection as a session holds it: JSON lines, and file descriptors passed with
``SCM_RIGHTS`` (``socket.send_fds`` / ``recv_fds``) beside them.

asyncio's stream transport reads with plain ``recv``, which drops ancillary data (and the
kernel closes the fds it carried), so the fds travel on a duplicate of the connection's
socket while the transport is paused: the client sends its fds only after the reply that
asks for them, and that reply goes out after the pause.  A thin adapter, no decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from vnet import jsonlines
from vnet.errors import DaemonError

Send = Callable[[dict[str, Any]], Awaitable[bool]]


class Channel:
    """One client's connection, handed to a session after its request was allowed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 send: Send, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.send = send          # the server's: adds the API version, bounded wait
        self.timeout = timeout
        self._raw: socket.socket | None = None

    @property
    def raw(self) -> socket.socket:
        """A duplicate of the connection's socket (non-blocking, as asyncio's), made when
        the first fd is to be passed."""
        if self._raw is None:
            fd = self.writer.get_extra_info("socket").fileno()
            self._raw = socket.socket(fileno=os.dup(fd))
        return self._raw

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()

    async def ask_for_fds(self, reply: dict[str, Any], count: int) -> list[int]:
        """Send ``reply`` (which asks for ``count`` fds) and receive them; a client that
        sends other bytes, fewer fds or none in time gets a ``DaemonError``."""
        transport = self.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        try:
            if not await self.send(reply):
                raise DaemonError("the client did not read vnetd's reply")
            data, fds = await self._recv_fds(count)
        finally:
            transport.resume_reading()
        if len(fds) != count or data != b"\0":
            for fd in fds:
                os.close(fd)
            raise DaemonError(f"bad request: expected {count} file descriptors with one NUL "
                              f"byte after the reply, got {len(fds)} with {len(data)} bytes")
        return fds

    async def _recv_fds(self, count: int) -> tuple[bytes, list[int]]:
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    with contextlib.suppress(BlockingIOError):
                        data, fds, _, _ = socket.recv_fds(self.raw, 1, count + 1)
                        return data, fds
                    await _ready(self.raw.fileno(), writing=False)
        except TimeoutError:
            raise DaemonError(f"bad request: the file descriptors did not come within "
                              f"{self.timeout:g} s") from None

    async def send_with_fds(self, reply: dict[str, Any], fds: list[int]) -> None:
        """Send ``reply`` as one line with ``fds`` attached to its bytes."""
        await self.writer.drain()
        data = jsonlines.encode(reply)
        async with asyncio.timeout(self.timeout):
            while data:
                try:
                    sent = socket.send_fds(self.raw, [data], fds)
                except BlockingIOError:
                    await _ready(self.raw.fileno(), writing=True)
                    continue
                data, fds = data[sent:], []   # the fds went with the first bytes

    async def next_message(self) -> dict[str, Any] | None:
        """The client's next line, decoded; None when it hung up (or sent garbage, which
        ends the session as a hang-up does)."""
        try:
            line = await self.reader.readline()
        except (ConnectionError, ValueError):
            return None
        if not line:
            return None
        try:
            return jsonlines.decode(line)
        except jsonlines.ProtocolError:
            return None


async def _ready(fd: int, writing: bool) -> None:
    """Until ``fd`` can be read (or written) without blocking."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writing else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writing else loop.remove_reader)(fd)
