"""vnetd's metrics endpoint: a small HTTP server on vnetd's own event loop.

On the loop rather than in a thread (as prometheus_client's ``start_http_server`` would run
it) because a scrape reads the daemon's state, which only the loop may touch, and the reads
that wait (the datapath's counters) are awaited, not blocked on; the snapshot is encoded in
a thread, so a scrape holds the loop only while it gathers the snapshot.  It serves
``GET``/``HEAD /metrics`` (and a pointer to it at ``/``), one request per connection
(``Connection: close``), and answers everything else with a 4xx saying what is wrong: a
request line that is not HTTP (400), an unknown path (404), another method (405), a head
over ``MAX_HEAD`` bytes (431), one not sent within ``READ_TIMEOUT`` (408).  At most
``MAX_CLIENTS`` are served at once (more get 503), so idle connections cannot use up
vnetd's file descriptors.

It listens only on ``metrics.listen`` of the config, inside vnetd's network namespace.
Parsing the request head (``parse_head``) is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from vnet.daemon.config import Endpoint
from vnet.daemon.metrics import Snapshot, render
from vnet.errors import DaemonError, describe_os_error

log = logging.getLogger("vnet.metrics")

PATH = "/metrics"
MAX_HEAD = 8 << 10       # bytes of request line and headers (a scraper sends a few hundred)
READ_TIMEOUT = 10.0      # seconds to send the whole head, and to take the reply
SNAPSHOT_TIMEOUT = 10.0  # seconds for vnetd to gather a snapshot (Prometheus' default scrape
                         # timeout); it bounds its own waits on the datapath well below that
MAX_CLIENTS = 16
LINGER_TIMEOUT = 2.0     # seconds, and bytes, taken from a client after its reply (``_linger``)
LINGER_BYTES = 1 << 20
METHODS = ("GET", "HEAD")
INTERNAL_ERROR = "internal error in vnetd (see its log)"


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    accept: str = ""


class HttpError(Exception):
    """A request answered with ``status`` and ``message`` (a line for whoever sent it)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def parse_head(head: bytes) -> HttpRequest:
    """The request in ``head`` (its request line and headers, without the empty line that
    ends them); ``HttpError`` if it is not one this endpoint serves."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request is not ASCII text") from None
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HttpError(HTTPStatus.BAD_REQUEST, "not an HTTP request line: want "
                        f"'GET {PATH} HTTP/1.1'")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                        f"{version} is not served: use HTTP/1.1 or HTTP/1.0")
    accept = ""
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, "a header line is not 'Name: value'")
        if name.lower() == "accept":
            accept = value.strip()
    path = target.split("?", 1)[0]
    if method not in METHODS:
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED,
                        f"{method} is not served here: use GET {PATH}")
    if path not in (PATH, "/"):
        raise HttpError(HTTPStatus.NOT_FOUND, f"nothing at {path[:100]}: the metrics are at "
                        f"{PATH}")
    return HttpRequest(method, path, accept)


def response(status: HTTPStatus, body: bytes, content_type: str, *, head_only: bool = False,
             allow: bool = False) -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close"]
    if allow:
        lines.append(f"Allow: {', '.join(METHODS)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


def _text(status: HTTPStatus, message: str, *, allow: bool = False) -> bytes:
    return response(status, (message + "\n").encode(), "text/plain; charset=utf-8",
                    allow=allow)


class MetricsServer:
    """Serves ``snapshot()``, rendered, on ``endpoint``."""

    def __init__(self, endpoint: Endpoint, snapshot: Callable[[], Awaitable[Snapshot]], *,
                 read_timeout: float = READ_TIMEOUT, max_clients: int = MAX_CLIENTS) -> None:
        self.endpoint = endpoint
        self.snapshot = snapshot
        self.read_timeout = read_timeout
        self.max_clients = max_clients
        self.clients = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen, or ``DaemonError`` saying why it cannot and what to do."""
        try:
            self.server = await asyncio.start_server(
                self._client, self.endpoint.host, self.endpoint.port, limit=MAX_HEAD)
        except OSError as err:
            raise DaemonError(bind_failure(self.endpoint, err)) from None
        log.info("serving metrics on http://%s%s", self.endpoint, PATH)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            if self.clients > self.max_clients:
                reply = _text(HTTPStatus.SERVICE_UNAVAILABLE,
                              f"busy: {self.max_clients} scrapes are already being served")
            else:
                reply = await self._serve(reader)
            if reply:
                writer.write(reply)
                async with asyncio.timeout(self.read_timeout):
                    await writer.drain()
                await _linger(reader, writer)
        except (OSError, TimeoutError):
            pass   # the client went away, or does not read its reply: nothing to tell it
        except Exception:   # a bug: logged, and the endpoint (and vnetd) go on
            log.exception("serving a metrics request failed")
        finally:
            self.clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader) -> bytes:
        """The reply to the request on ``reader`` (empty: the client left without one)."""
        try:
            head = await self._read_head(reader)
            if head is None:
                return b""
            request = parse_head(head)
        except HttpError as err:
            allow = err.status is HTTPStatus.METHOD_NOT_ALLOWED
            return _text(err.status, err.message, allow=allow)
        if request.path == "/":
            return response(HTTPStatus.OK, f"vnetd: the metrics are at {PATH}\n".encode(),
                            "text/plain; charset=utf-8", head_only=request.method == "HEAD")
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                snap = await self.snapshot()
            # Off the loop: a frozen snapshot needs no lock, and encoding 1 000 ports takes
            # about 140 ms (AMD EPYC), which would hold up every other request.
            body, content_type = await asyncio.to_thread(render, snap, request.accept)
        except TimeoutError:
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, "vnetd took longer than "
                         f"{SNAPSHOT_TIMEOUT:g} s to gather its metrics; try again")
        except Exception:   # a bug: logged; the scraper is told, and vnetd goes on
            log.exception("gathering the metrics failed")
            return _text(HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR)
        return response(HTTPStatus.OK, body, content_type, head_only=request.method == "HEAD")

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The request line and headers; None if the client closed first."""
        head = b""
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    line = await reader.readline()
                    if not line.endswith(b"\n"):
                        return None      # closed before the head ended
                    if line in (b"\r\n", b"\n"):
                        return head
                    head += line
                    if len(head) > MAX_HEAD:
                        raise ValueError
        except TimeoutError:
            raise HttpError(HTTPStatus.REQUEST_TIMEOUT, f"the request's head did not come "
                            f"within {self.read_timeout:g} s") from None
        except ValueError:   # a line over the reader's limit, or a head over MAX_HEAD
            raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                            f"the request's head is longer than {MAX_HEAD} bytes") from None


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, and take what the client still sends (the rest of a head too long, or a
    request not read because the server was busy) until it closes, for at most
    ``LINGER_TIMEOUT`` s: closing a socket with unread data resets the connection, and the
    reset can reach the client before it read its reply (Apache's "lingering close")."""
    with contextlib.suppress(OSError, TimeoutError, ValueError):
        if writer.can_write_eof():
            writer.write_eof()
        taken = 0
        async with asyncio.timeout(LINGER_TIMEOUT):
            while taken < LINGER_BYTES and (data := await reader.read(64 << 10)):
                taken += len(data)


def bind_failure(endpoint: Endpoint, err: OSError) -> str:
    """Why vnetd cannot listen on ``metrics.listen``, and what to do."""
    where = f"metrics.listen {endpoint}"
    if err.errno == errno.EADDRINUSE:
        return (f"{where}: the address is in use (another vnetd, or another exporter?): choose "
                f"a free port for metrics: listen in the config file")
    if err.errno == errno.EADDRNOTAVAIL:
        return (f"{where}: {endpoint.host} is not an address of this host (of vnetd's network "
                f"namespace, if it runs in one): give one of its addresses, e.g. 127.0.0.1")
    return f"{where}: cannot listen there: {describe_os_error(err)}"
