"""vnetd's API server: JSON lines on a Unix socket (mode 0660), one reply per request line.

Who may connect is the socket's group (``access.group``); what each caller may do is its
role (``access``), decided from the peer's credentials (``SO_PEERCRED``, taken once per
connection) before any handler runs.  Every reply carries ``"api": API_VERSION`` so that
a client can tell a vnetd older or newer than itself (``docs/api.md``).  Every change
(an operation that is not read-only), allowed or refused, is audited (``audit``).

The edge between users and the daemon: every request is checked (``requests``) before its
handler runs, and every answer is meant for the user.  A ``VnetError`` says what is wrong
in its own words; anything else is a bug, logged with its traceback and answered
"internal error in vnetd (see its log)", never with its repr.

No client can make another wait: a request line is at most ``defaults.MAX_REQUEST`` bytes
and a long one is decoded in a thread, off the event loop; a client has ``IDLE_TIMEOUT``
seconds to send each whole request, and as long to take its reply, or it is hung up on;
at most ``MAX_CLIENTS`` are connected at once (more are answered "busy"), so idle clients
cannot use up vnetd's file descriptors; and a burst of connects waits in a backlog of
``BACKLOG``, not refused.

A handler may keep the connection (``vnet capture``): it returns a ``Streaming``, whose
result is sent as the reply and whose ``run`` then has the connection, without the idle
timeouts, until it returns; then the connection closes.  A *session* (``exec``,
``console.attach``) is a conversation: it answers on the connection itself, fds passed
included (``fdpass.Channel``).  A request with ``"progress": true`` (``up``, ``down``)
hears ``{"progress": ...}`` lines before its reply (``vnet.daemon.progress``).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.daemon import access, progress
from vnet.daemon.audit import AuditLog, Peer, entry
from vnet.daemon.config import AccessConfig
from vnet.daemon.defaults import API_VERSION, MAX_REQUEST, describe_size
from vnet.daemon.fdpass import Channel
from vnet.daemon.requests import (
    REQUESTS,
    Request,
    RequestError,
    parse_request,
)
from vnet.errors import VnetError

log = logging.getLogger("vnet.api")

Handler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class Outcome:
    """How a session went, for the audit: ``error`` None, it started (exec) or attached."""

    lab: str | None
    error: str | None
    detail: Mapping[str, object]   # what the audit record adds: the node, the command


Session = Callable[[Any, Peer, Channel, Callable[[Outcome], None]], Awaitable[None]]
"""An operation that is a conversation (``exec``, ``console.attach``): it answers on the
channel itself and reports its outcome for the audit; the connection ends with it."""
INTERNAL_ERROR = "internal error in vnetd (see its log)"
IDLE_TIMEOUT = 10.0    # seconds to send a whole request line (a CLI sends it at once),
                       # and for a reply to wait for a client that does not read it
BACKLOG = 4096         # connects waiting to be accepted (the kernel caps it at somaxconn)
MAX_CLIENTS = 512      # connected at once; vnetd keeps file descriptors for its own work
OFF_LOOP = 64 << 10    # bytes: a longer line is decoded and checked in a thread
SOCKET_MODE = 0o660    # the owner (root) and the access group may connect
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Streaming:
    """A handler's result that keeps the connection: ``result`` is the reply's, then
    ``run(reader, writer)`` has the connection until it returns; ``cancel`` if it never
    runs (the reply could not be sent)."""

    result: Any
    run: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    cancel: Callable[[], None]


Served = tuple[dict[str, Any], Streaming | None]
"""A request's reply, and the stream that follows it if its handler keeps the connection."""


def too_long(limit: int) -> str:
    return (f"bad request: the request is longer than vnetd's limit of {describe_size(limit)}"
            f" ({limit} bytes); a topology file is normally a few KiB")


class ApiServer:
    """Serves ``handlers`` (one per operation of ``requests.REQUESTS``) on ``path``."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler],
                 max_line: int = MAX_REQUEST, idle_timeout: float = IDLE_TIMEOUT,
                 max_clients: int = MAX_CLIENTS, access_config: AccessConfig | None = None,
                 audit: AuditLog | None = None, config_file: Path | None = None,
                 sessions: Mapping[str, Session] | None = None) -> None:
        sessions = dict(sessions or {})
        served = set(handlers) | {operation.split(".")[0] for operation in sessions}
        if served != set(REQUESTS):
            raise ValueError(f"handlers for {sorted(served)}, requests for {sorted(REQUESTS)}")
        self.path = path
        self.handlers = dict(handlers)
        self.sessions = sessions
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.clients = 0
        self.streaming: list[Streaming] = []   # running: cancelled when vnetd stops
        self.server: asyncio.AbstractServer | None = None
        self.audit = audit or AuditLog(None)
        self.config_file = config_file
        self.set_access(access_config or AccessConfig())

    def set_access(self, access_config: AccessConfig) -> None:
        """Take a (re)loaded config's ``access:``: its roles hold for the next request.
        (The socket's group is set at start.)"""
        self.access_config = access_config
        self.policy = access.policy_of(access_config)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                      limit=self.max_line, backlog=BACKLOG)
        self._set_owner()

    def _set_owner(self) -> None:
        """Mode 0660, group ``access.group`` if it exists (else root's alone, said once)."""
        group = self.access_config.group
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.warning("access.group %r does not exist: the API socket %s stays root's "
                        "alone; create the group (groupadd %s) and add the users of vnet to "
                        "it, or set access.group to an existing group", group, self.path, group)
            os.chmod(self.path, SOCKET_MODE)
            return
        os.chown(self.path, -1, gid)
        os.chmod(self.path, SOCKET_MODE)
        log.info("API socket %s: mode %04o, group %s", self.path, SOCKET_MODE, group)

    async def stop(self) -> None:
        for streaming in list(self.streaming):   # their connections end with them
            streaming.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            peer = peer_of(writer)
            if self.clients > self.max_clients:
                log.warning("refusing a client: %d are connected", self.max_clients)
                await self._send(writer, jsonlines.failed(
                    f"vnetd is busy: {self.max_clients} clients are connected; try again"))
                return
            def tell(event: progress.Progress) -> None:   # small lines: no drain
                writer.write(jsonlines.encode({"progress": event.to_json(),
                                               "api": API_VERSION}))

            while (line := await self._read_request(reader, writer)) is not None:
                channel = Channel(reader, writer, lambda r: self._send(writer, r),
                                  self.idle_timeout)
                try:
                    served = await self.serve(line, peer, channel, tell)
                finally:
                    channel.close()
                if served is None:   # a session answered on the connection
                    return
                reply, streaming = served
                if not await self._send(writer, reply):
                    if streaming is not None:
                        streaming.cancel()
                    return
                if streaming is not None:
                    self.streaming.append(streaming)
                    try:
                        await streaming.run(reader, writer)
                    finally:
                        self.streaming.remove(streaming)
                        streaming.cancel()
                    return
        except ConnectionError as err:
            log.warning("dropping a client: %s", err)
        except Exception:
            log.exception("internal error in vnetd serving a client")
        finally:
            self.clients -= 1
            await self._hang_up(writer)

    async def _read_request(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> bytes | None:
        """The client's next request line; None when it hung up, or was hung up on (told
        why first) for a line over the limit or one that did not come in time."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                line = await reader.readline()
        except TimeoutError:
            log.info("hanging up on a client that sent no whole request in %g s",
                     self.idle_timeout)
            await self._send(writer, jsonlines.failed(
                f"bad request: no whole request line came within {self.idle_timeout:g} s; "
                f"vnetd hangs up on idle connections"))
            return None
        except ValueError:  # over the limit: say so, then hang up (framing is lost)
            log.warning("dropping a client that sent a line over %d bytes", self.max_line)
            await self._send(writer, jsonlines.failed(too_long(self.max_line)))
            return None
        return line or None

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> bool:
        """Write ``reply``; False if the client did not take it in time (it is cut off)."""
        writer.write(jsonlines.encode({**reply, "api": API_VERSION}))
        try:
            async with asyncio.timeout(self.idle_timeout):
                await writer.drain()
        except TimeoutError:
            log.warning("cutting off a client that did not read its reply in %g s",
                        self.idle_timeout)
            writer.transport.abort()
            return False
        return True

    async def _hang_up(self, writer: asyncio.StreamWriter) -> None:
        """Close the connection; one whose client does not take what is left is aborted."""
        writer.close()
        try:
            async with asyncio.timeout(self.idle_timeout):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()
        except OSError:
            pass

    async def handle(self, line: bytes, peer: Peer | None = None) -> dict[str, Any]:
        """One request line in, one reply out; never raises for what a client sent.
        (``peer`` None: vnetd itself, or a test in its process, which is root's.)  A
        session's operation is refused and a streaming operation's stream cancelled: they
        need a connection (``serve``)."""
        served = await self.serve(line, peer, None)
        if served is None:
            return jsonlines.failed(INTERNAL_ERROR)
        reply, streaming = served
        if streaming is not None:
            streaming.cancel()
        return reply

    async def serve(self, line: bytes, peer: Peer | None, channel: Channel | None,
                    tell: progress.Reporter | None = None) -> Served | None:
        """``handle`` for a line that came on ``channel``; None: a session answered on it,
        and the connection ends.  ``tell`` hears the request's progress if it asked."""
        if len(line) > self.max_line:
            return jsonlines.failed(too_long(self.max_line)), None
        try:
            if len(line) > OFF_LOOP:   # megabytes take a while: let the others be answered
                request = await asyncio.to_thread(_parse, line)
            else:
                request = _parse(line)
        except (jsonlines.ProtocolError, RequestError) as err:
            return jsonlines.failed(f"bad request: {err}"), None
        except Exception:
            log.exception("internal error in vnetd checking a request")
            return jsonlines.failed(INTERNAL_ERROR), None
        return await self.dispatch(request, peer or own_peer(), channel, tell)

    async def dispatch(self, request: Request, peer: Peer, channel: Channel | None = None,
                       tell: progress.Reporter | None = None) -> Served | None:
        operation = operation_of(request)
        decision = access.decide(peer.uid, peer.gids, self.policy, operation)
        if not decision.allowed:
            reply = jsonlines.failed(access.refusal(
                operation, decision, peer.describe(),
                str(self.config_file) if self.config_file else None))
            streaming = None
            log.warning("refused %s to %s (pid %d): needs %s", operation, peer.describe(),
                        peer.pid, decision.needed)
        elif operation in self.sessions:
            if channel is None:
                return jsonlines.failed(f"{operation} needs a connection to vnetd's socket"
                                        ), None
            await self._session(operation, request, peer, channel)
            return None
        else:
            reporter = tell if getattr(request, "progress", False) else None
            reply, streaming = await self._run(request, reporter)
        if not access.read_only(operation):
            result = reply.get("result")
            lab = getattr(request, "lab", None) or (
                result.get("lab") if isinstance(result, dict) else None)
            self.audit.record(entry(peer, operation, lab,
                                    None if reply["ok"] else reply["error"], time.time()))
        return reply, streaming

    async def _session(self, operation: str, request: Request, peer: Peer,
                       channel: Channel) -> None:
        def record(outcome: Outcome) -> None:
            self.audit.record({**entry(peer, operation, outcome.lab, outcome.error,
                                       time.time()), **outcome.detail})

        try:
            await self.sessions[operation](request, peer, channel, record)
        except (ConnectionError, TimeoutError) as err:
            log.warning("%s session of %s ended: %s", operation, peer.describe(), err)
        except Exception:
            log.exception("internal error in vnetd during %s", operation)
            with contextlib.suppress(Exception):
                await channel.send(jsonlines.failed(INTERNAL_ERROR))

    async def _run(self, request: Request, tell: progress.Reporter | None = None) -> Served:
        token = progress.REPORTER.set(tell)
        try:
            result = await self.handlers[request.op](request)
        except VnetError as err:
            return jsonlines.failed(str(err)), None
        except Exception:
            log.exception("internal error in vnetd during %s", request.op)
            return jsonlines.failed(INTERNAL_ERROR), None
        finally:
            progress.REPORTER.reset(token)
        if isinstance(result, Streaming):
            return jsonlines.ok(result.result), result
        return jsonlines.ok(result), None


def operation_of(request: Request) -> str:
    """The operation ``access`` knows a request as: its op, and its action if it has one
    (``vm`` with action ``stop`` is ``vm.stop``)."""
    action = getattr(request, "action", None)
    return f"{request.op}.{action}" if isinstance(action, str) else request.op


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    """The connecting process's credentials (``SO_PEERCRED``) and all its user's groups."""
    sock: socket.socket = writer.get_extra_info("socket")
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
    return describe_peer(pid, uid, gid)


def describe_peer(pid: int, uid: int, gid: int) -> Peer:
    """``uid``'s name and groups from the user and group databases (``os.getgrouplist``):
    the groups it is given now, as a new login would have them."""
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    gids = {gid}
    if user is not None:
        with contextlib.suppress(OSError):
            gids.update(os.getgrouplist(user, gid))
    return Peer(pid, uid, gid, user, tuple(sorted(gids)))


def own_peer() -> Peer:
    return Peer(os.getpid(), 0, 0, "root", (0,))


def _parse(line: bytes) -> Request:
    return parse_request(jsonlines.decode(line))
