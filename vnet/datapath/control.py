"""The datapath's control server: vnetd's requests on a Unix socket, served inside the loop.

The loop (``vnet.datapath.engine``) polls the listener and the connections with its ports and
hands their events here.  Each line is decoded by ``vnet.datapath.protocol`` and answered
with one reply line; a malformed request gets an error reply that says what is wrong, and
nothing a request does (a bug included) stops the datapath forwarding for everyone else.

A ``protocol.StreamRequest`` (a capture's mirror) turns its connection into a ``Stream``
after the reply: from then on the datapath only writes to it, and the peer ends it by
closing (or half-closing) its side.

A ``protocol.HandoverRequest`` (the lifeline of a vnetd that adopted the datapath) has its
connection moved, after the reply, to the highest fd number the process may have
(``high_fd``) and forgotten: it is never read or polled again, and its only use is its end.
The kernel closes a dying process's files from the highest number down, so that end
reaches the peer before the packet sockets' slow teardown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from vnet import jsonlines
from vnet.datapath import protocol
from vnet.errors import VnetError

log = logging.getLogger("vnet.datapath")


BACKLOG = socket.SOMAXCONN   # the kernel's cap (4096): connects queue, none is refused
MAX_PENDING_OUTPUT = 64 << 20  # replies a client has not read; past this its requests wait
PREPARE_LINES = 64   # whole lines looked at ahead, at most, for ``prepare``
STREAM_BUFFER = 4 << 20        # bytes a stream may hold unsent; past this writes are refused
SENDMSG_CHUNKS = 256           # records handed to one sendmsg (the kernel takes up to 1024)

Prepare = Callable[[list[protocol.Request]], AbstractContextManager[None]]


def high_fd() -> int:
    """The highest fd number this process may use (at most 65535)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (65536 if soft == resource.RLIM_INFINITY else min(soft, 65536)) - 1


class _Connection:
    __slots__ = ("buffer", "handover", "mask", "output", "sock", "stream")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()   # request bytes not yet answered
        self.output = bytearray()   # reply bytes the socket did not take yet
        self.mask = select.EPOLLIN  # what it is registered for
        self.stream: Stream | None = None  # the connection carries a stream
        self.handover = False              # answered a HandoverRequest: kept, never read


class Stream:
    """A control connection given over to a one-way stream of bytes (a mirror's records,
    ``vnet.datapath.mirror``) after the reply to its ``StreamRequest``.

    Why this shape: the capture's reader (vnetd, relaying to the CLI) already has a
    connection to the control socket, and a second one costs nothing; the stream's end is
    the connection's, so a reader that goes away, however it goes, removes its mirror, and
    nothing else needs tracking.  ``write`` never blocks: it refuses bytes once
    ``limit`` wait unsent (the writer counts a drop), so a slow reader stalls only its own
    stream.  What is queued is a list of the records as they came (appending to a
    bytearray cost PyPy microseconds a frame); the loop sends it once per wake-up
    (``Schedule.dirty``), many records to a ``sendmsg``.

    ``on_close`` is called once when the peer ends its side or the connection breaks (the
    owner removes the mirror, and may ``end`` with a last record); ``end`` queues its bytes
    whatever the room, and the connection closes once they are sent."""

    __slots__ = ("chunks", "closed", "connection", "dirty", "ending", "fd", "limit",
                 "on_close", "queued", "server")

    def __init__(self, server: ControlServer, fd: int, connection: _Connection,
                 dirty: list[Any], limit: int | None = None) -> None:
        self.server = server
        self.fd = fd
        self.connection = connection
        self.dirty = dirty
        self.limit = STREAM_BUFFER if limit is None else limit
        self.chunks: list[bytes] = []   # queued, in order; the first may be partly sent
        self.queued = 0                 # bytes in ``chunks``
        self.on_close: Callable[[], None] | None = None
        self.ending = False   # ``end`` was called: no more writes, close when sent
        self.closed = False   # the connection is gone

    def write(self, data: bytes) -> bool:
        queued = self.queued + len(data)
        if queued > self.limit or self.ending or self.closed:
            return False
        if not self.chunks:
            self.dirty.append(self)
        self.chunks.append(data)
        self.queued = queued
        return True

    def end(self, data: bytes) -> None:
        if self.ending or self.closed:
            return
        self.ending = True
        if data:
            self.chunks.append(data)
            self.queued += len(data)
        self.flush()

    def flush(self) -> None:
        if not self.closed:
            self.server.send_stream(self)


class ControlServer:
    """Listens on ``path`` (mode 0600); ``handle`` carries out one decoded request and
    returns its result, or raises a ``VnetError`` whose message is the reply's error.

    Never blocks the loop: every pending connection is accepted at each wake-up, and a reply
    the socket cannot take at once waits in the connection's ``output`` until epoll says it
    is writable.  A client that does not read its replies stalls only itself: past
    ``MAX_PENDING_OUTPUT`` nothing more is read from it until it has read them."""

    def __init__(self, path: str, epoll: select.epoll, handle: Callable[..., Any],
                 dirty: list[Any] | None = None, prepare: Prepare | None = None) -> None:
        """``handle(request)``, or ``handle(request, stream)`` for a ``StreamRequest``;
        ``dirty``: where a stream with bytes queued puts itself for the loop's flush;
        ``prepare``: given the requests that arrived together, a context in which they are
        answered (the datapath opens a batch of new ports in it side by side)."""
        self.path = path
        self.epoll = epoll
        self.handle = handle
        self.dirty: list[Any] = [] if dirty is None else dirty
        self.prepare = prepare
        self.connections: dict[int, _Connection] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        bound = os.stat(path)
        self.bound_id = (bound.st_dev, bound.st_ino)   # close removes only this file
        self.listener.listen(BACKLOG)
        self.listener.setblocking(False)
        epoll.register(self.listener.fileno(), select.EPOLLIN)

    def on_event(self, fd: int, events: int = select.EPOLLIN) -> None:
        """An epoll event on ``fd``: the listener, a connection, or an fd closed by an
        earlier event of the same batch (ignored)."""
        if fd == self.listener.fileno():
            self._accept()
            return
        control = self.connections.get(fd)
        if control is None:
            return
        if control.stream is not None:
            self._stream_event(control.stream, events)
            return
        if events & ~select.EPOLLOUT and control.mask & select.EPOLLIN:
            try:
                chunk = control.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._drop(fd)
                return
            control.buffer += chunk
        self._pump(fd, control)

    def answer(self, line: bytes, fd: int = -1, control: _Connection | None = None
               ) -> dict[str, Any]:
        """The reply to one request line (received on ``control``, whose ``fd`` it is; a
        ``StreamRequest`` answered ok turns it into a stream)."""
        try:
            request = protocol.decode(line)
            if isinstance(request, protocol.HandoverRequest):
                if control is None:
                    raise VnetError(f"{request.op} needs a connection of its own")
                result = jsonlines.ok(self.handle(request))
                control.handover = True
                return result
            if not isinstance(request, protocol.StreamRequest):
                return jsonlines.ok(self.handle(request))
            if control is None:
                raise VnetError(f"{request.op} needs a connection of its own")
            stream = Stream(self, fd, control, self.dirty)
            result = jsonlines.ok(self.handle(request, stream))
            control.stream = stream
            return result
        except VnetError as err:
            return jsonlines.failed(str(err))
        except Exception as err:  # a bug: report it, keep forwarding for everyone else
            log.exception("control request failed")
            return jsonlines.failed(f"internal error in the datapath: {err!r}")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:   # EMFILE and the like: the rest wait in the backlog
                log.warning("control socket: cannot accept a connection: %s", err)
                return
            conn.setblocking(False)
            self.connections[conn.fileno()] = _Connection(conn)
            self.epoll.register(conn.fileno(), select.EPOLLIN)

    def _pump(self, fd: int, control: _Connection) -> None:
        """Answer the whole lines received and send what the socket takes, until it takes
        no more or no whole line is left; then wait for what is missing."""
        with self._prepared(control.buffer):
            self._answer_and_send(fd, control)

    def _prepared(self, buffer: bytearray) -> AbstractContextManager[None]:
        """``prepare`` of the requests whole in ``buffer`` (those that decode)."""
        if self.prepare is None or buffer.count(b"\n") < 2:   # the usual case: no copy
            return contextlib.nullcontext()
        lines = bytes(buffer).split(b"\n")[:-1][:PREPARE_LINES]
        requests = []
        for line in lines:
            with contextlib.suppress(VnetError, ValueError):
                requests.append(protocol.decode(line))
        return self.prepare(requests)

    def _answer_and_send(self, fd: int, control: _Connection) -> None:
        buffer, output = control.buffer, control.output
        while True:
            while len(output) <= MAX_PENDING_OUTPUT:
                end = buffer.find(b"\n")
                if end < 0:
                    break
                line = bytes(buffer[:end])
                del buffer[:end + 1]
                output += jsonlines.encode(self.answer(line, fd, control))
                if control.handover:
                    self._hand_over(fd, control)
                    return
                stream = control.stream
                if stream is not None:   # from here on it only carries the stream, whose
                    buffer.clear()       # first bytes are what is still unsent, the reply
                    stream.chunks.insert(0, bytes(output))
                    stream.queued += len(output)
                    output.clear()
                    self.send_stream(stream)
                    return
            if len(buffer) > jsonlines.MAX_LINE and b"\n" not in buffer:
                self._drop(fd)   # a line too long to be a request
                return
            while output:
                try:
                    sent = control.sock.send(output)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self._drop(fd)
                    return
                del output[:sent]
            if output or b"\n" not in buffer:
                break
        mask = (select.EPOLLIN if len(output) <= MAX_PENDING_OUTPUT else 0) | (
            select.EPOLLOUT if output else 0)
        if mask != control.mask:
            control.mask = mask
            self.epoll.modify(fd, mask)

    def _hand_over(self, fd: int, control: _Connection) -> None:
        """Keep the connection at ``high_fd`` only, in place of what was there (an earlier
        lifeline, whose vnetd is gone), then send the reply (a few bytes to a fresh
        connection: the socket takes them), so the peer knows it is in place."""
        del self.connections[fd]
        self.epoll.unregister(fd)
        high = high_fd()
        if fd != high:
            os.dup2(fd, high, inheritable=False)
        with contextlib.suppress(OSError):
            control.sock.send(control.output)
        if fd == high:
            control.sock.detach()   # already there: the fd stays open
        else:
            control.sock.close()

    def _stream_event(self, stream: Stream, events: int) -> None:
        if events & ~select.EPOLLOUT and not stream.ending:
            chunk: bytes | None
            try:
                chunk = stream.connection.sock.recv(65536)   # nothing is expected but EOF
            except (BlockingIOError, InterruptedError):
                chunk = None
            except OSError:
                chunk = b""
            if chunk == b"":
                self._stream_closed(stream)
                if not stream.ending:
                    stream.end(b"")
                return
        self.send_stream(stream)

    def _stream_closed(self, stream: Stream) -> None:
        callback, stream.on_close = stream.on_close, None
        if callback is not None:
            callback()

    def send_stream(self, stream: Stream) -> None:
        """Send what the stream has queued, as much as the socket takes; wait for EPOLLOUT
        for the rest; close an ended stream once all is sent."""
        fd, control, chunks = stream.fd, stream.connection, stream.chunks
        while chunks:
            try:
                sent = control.sock.sendmsg(chunks[:SENDMSG_CHUNKS])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(fd)
                return
            stream.queued -= sent
            whole = 0
            for chunk in chunks:
                if sent < len(chunk):
                    break
                sent -= len(chunk)
                whole += 1
            del chunks[:whole]
            if sent:
                chunks[0] = chunks[0][sent:]
        if stream.ending and not chunks:
            self._drop(fd)
            return
        mask = (0 if stream.ending else select.EPOLLIN) | (select.EPOLLOUT if chunks else 0)
        if mask != control.mask:
            control.mask = mask
            self.epoll.modify(fd, mask)

    def _drop(self, fd: int) -> None:
        control = self.connections.pop(fd)
        self.epoll.unregister(fd)
        control.sock.close()
        if control.stream is not None:
            control.stream.closed = True
            self._stream_closed(control.stream)

    def close(self) -> None:
        for fd in list(self.connections):
            self._drop(fd)
        self.listener.close()
        # a successor (vnetd restarted after a crash) may have bound the path meanwhile: its
        # socket is another file, and stays
        with contextlib.suppress(FileNotFoundError):
            now = os.stat(self.path)
            if (now.st_dev, now.st_ino) == self.bound_id:
                os.unlink(self.path)
