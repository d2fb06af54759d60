"""The datapath's control server: vnetd's requests on a Unix socket, served inside the loop.

The loop (``vnet.datapath.engine``) polls the listener and the connections with its ports and
hands their events here.  Each line is decoded by ``vnet.datapath.protocol`` and answered
with one reply line; a malformed request gets an error reply that says what is wrong, and
nothing a request does (a bug included) stops the datapath forwarding for everyone else.
"""

from __future__ import annotations

import contextlib
import logging
import os
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

Prepare = Callable[[list[protocol.Request]], AbstractContextManager[None]]


class _Connection:
    __slots__ = ("buffer", "mask", "output", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()   # request bytes not yet answered
        self.output = bytearray()   # reply bytes the socket did not take yet
        self.mask = select.EPOLLIN  # what it is registered for


class ControlServer:
    """Listens on ``path`` (mode 0600); ``handle`` carries out one decoded request and
    returns its result, or raises a ``VnetError`` whose message is the reply's error.

    Never blocks the loop: every pending connection is accepted at each wake-up, and a reply
    the socket cannot take at once waits in the connection's ``output`` until epoll says it
    is writable.  A client that does not read its replies stalls only itself: past
    ``MAX_PENDING_OUTPUT`` nothing more is read from it until it has read them."""

    def __init__(self, path: str, epoll: select.epoll,
                 handle: Callable[[protocol.Request], Any], prepare: Prepare | None = None
                 ) -> None:
        """``prepare``: given the requests that arrived together, a context in which they
        are answered (the datapath opens a batch of new ports in it side by side)."""
        self.path = path
        self.epoll = epoll
        self.handle = handle
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

    def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line."""
        try:
            return jsonlines.ok(self.handle(protocol.decode(line)))
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
        lines = bytes(buffer).split(b"\n")[:-1][:PREPARE_LINES]
        if self.prepare is None or len(lines) < 2:
            return contextlib.nullcontext()
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
                output += jsonlines.encode(self.answer(line))
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

    def _drop(self, fd: int) -> None:
        control = self.connections.pop(fd)
        self.epoll.unregister(fd)
        control.sock.close()

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
