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
from typing import Any

from vnet import jsonlines
from vnet.datapath import protocol
from vnet.errors import VnetError

log = logging.getLogger("vnet.datapath")


class _Connection:
    __slots__ = ("buffer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()


class ControlServer:
    """Listens on ``path`` (mode 0600); ``handle`` carries out one decoded request and
    returns its result, or raises a ``VnetError`` whose message is the reply's error."""

    def __init__(self, path: str, epoll: select.epoll,
                 handle: Callable[[protocol.Request], Any]) -> None:
        self.path = path
        self.epoll = epoll
        self.handle = handle
        self.connections: dict[int, _Connection] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        bound = os.stat(path)
        self.bound_id = (bound.st_dev, bound.st_ino)   # close removes only this file
        self.listener.listen(16)
        self.listener.setblocking(False)
        epoll.register(self.listener.fileno(), select.EPOLLIN)

    def on_event(self, fd: int) -> None:
        """An epoll event on ``fd``: the listener, a connection, or an fd closed by an
        earlier event of the same batch (ignored)."""
        if fd == self.listener.fileno():
            self._accept()
        elif fd in self.connections:
            self._serve(fd)

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
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.connections[conn.fileno()] = _Connection(conn)
        self.epoll.register(conn.fileno(), select.EPOLLIN)

    def _serve(self, fd: int) -> None:
        control = self.connections[fd]
        try:
            chunk = control.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(fd)
            return
        control.buffer += chunk
        while b"\n" in control.buffer:
            line, _, rest = bytes(control.buffer).partition(b"\n")
            control.buffer = bytearray(rest)
            reply = self.answer(line)
            control.sock.setblocking(True)
            try:
                control.sock.sendall(jsonlines.encode(reply))
            except OSError:
                self._drop(fd)
                return
            control.sock.setblocking(False)
        if len(control.buffer) > jsonlines.MAX_LINE:
            self._drop(fd)

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
