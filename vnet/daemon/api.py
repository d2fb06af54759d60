"""vnetd's API server: JSON lines on a Unix socket (mode 0600), one reply per request line.

The edge between users and the daemon: every request is checked (``requests``) before its
handler runs, and every answer is meant for the user.  A ``VnetError`` says what is wrong
in its own words; anything else is a bug, logged with its traceback and answered
"internal error in vnetd (see its log)", never with its repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.daemon.requests import REQUESTS, Request, RequestError, parse_request
from vnet.errors import VnetError

log = logging.getLogger("vnet.api")

Handler = Callable[[Any], Awaitable[Any]]
INTERNAL_ERROR = "internal error in vnetd (see its log)"


class ApiServer:
    """Serves ``handlers`` (one per operation of ``requests.REQUESTS``) on ``path``."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler],
                 max_line: int = jsonlines.MAX_LINE) -> None:
        if set(handlers) != set(REQUESTS):
            raise ValueError(f"handlers for {sorted(handlers)}, requests for {sorted(REQUESTS)}")
        self.path = path
        self.handlers = dict(handlers)
        self.max_line = max_line
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                      limit=self.max_line)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # over the limit: say so, then hang up (framing is lost)
                    log.warning("dropping a client that sent a line over %d bytes",
                                self.max_line)
                    writer.write(jsonlines.encode(jsonlines.failed(
                        f"bad request: a request line is longer than {self.max_line} bytes")))
                    await writer.drain()
                    break
                if not line:
                    break
                writer.write(jsonlines.encode(await self.handle(line)))
                await writer.drain()
        except ConnectionError as err:
            log.warning("dropping a client: %s", err)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def handle(self, line: bytes) -> dict[str, Any]:
        """One request line in, one reply out; never raises for what a client sent."""
        try:
            request = parse_request(jsonlines.decode(line))
        except (jsonlines.ProtocolError, RequestError) as err:
            return jsonlines.failed(f"bad request: {err}")
        return await self.dispatch(request)

    async def dispatch(self, request: Request) -> dict[str, Any]:
        try:
            return jsonlines.ok(await self.handlers[request.op](request))
        except VnetError as err:
            return jsonlines.failed(str(err))
        except Exception:
            log.exception("internal error in vnetd during %s", request.op)
            return jsonlines.failed(INTERNAL_ERROR)
