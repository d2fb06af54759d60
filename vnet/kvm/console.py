"""The console socket: a Unix socket on which a client (``vnet console``) sees the guest's
serial output live and types into its UART.  Several clients may watch; all may type.

It runs in the runner's trio nursery.  Guest output arrives on a vCPU thread, which must
never wait for a client: ``write`` only appends to a buffer and, when the buffer was empty,
schedules one flush on the event loop.  Each client gets a bounded channel; a client that
cannot keep up (its channel full) is dropped, not waited for.
"""

from __future__ import annotations

import contextlib
import os
import socket as stdlib_socket
import tempfile
import threading
from pathlib import Path

import trio

from vnet.kvm.serial import Serial16550

CLIENT_BACKLOG = 256   # flushed chunks a client may be behind before it is dropped
MAX_PENDING = 1 << 20  # guest output buffered while the event loop is busy (oldest lost)


def bind_unix(path: Path, backlog: int = 8) -> trio.socket.SocketType:
    """A listening Unix socket at ``path``, mode 0600 (replacing a stale one): root's alone,
    since vnetd is what hands its connections to the users of the operator role.

    Bound in a private (0700) directory beside ``path``, made 0600, then renamed into
    place: a socket bound at ``path`` itself would be there for a moment with the mode the
    umask gives it, before the chmod."""
    private = Path(tempfile.mkdtemp(prefix=".s", dir=path.parent))   # short: sun_path
    sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(str(private / "sock"))
        os.chmod(private / "sock", 0o600)
        sock.listen(backlog)
        os.replace(private / "sock", path)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            (private / "sock").unlink()
        private.rmdir()
    return trio.socket.from_stdlib_socket(sock)


class ConsoleHub:
    def __init__(self, serial: Serial16550) -> None:
        self.serial = serial
        self.clients: set[trio.MemorySendChannel[bytes]] = set()
        self.pending = bytearray()
        self.lock = threading.Lock()
        self.token: trio.lowlevel.TrioToken | None = None

    @property
    def client_count(self) -> int:
        return len(self.clients)

    def write(self, data: bytes) -> None:
        """Guest output, from any thread; never blocks on a client."""
        token = self.token
        if token is None:
            return
        with self.lock:
            was_empty = not self.pending
            self.pending += data
            if len(self.pending) > MAX_PENDING:
                del self.pending[:len(self.pending) - MAX_PENDING]
        if was_empty:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._flush)

    def _flush(self) -> None:
        with self.lock:
            data = bytes(self.pending)
            self.pending.clear()
        for channel in list(self.clients):
            try:
                channel.send_nowait(data)
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.clients.discard(channel)  # too slow: dropped
                channel.close()

    async def serve(self, path: Path, sock: trio.socket.SocketType) -> None:
        """Serve clients on ``sock`` (bound at ``path`` by ``bind_unix``) until cancelled."""
        self.token = trio.lowlevel.current_trio_token()
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._client, stream)
        finally:  # no await here: the scope is cancelled
            self.token = None
            path.unlink(missing_ok=True)
            sock.close()

    async def _client(self, stream: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[bytes](CLIENT_BACKLOG)
        self.clients.add(send)
        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(self._type, stream, nursery.cancel_scope)
                async with receive:
                    async for data in receive:
                        await stream.send_all(data)
                nursery.cancel_scope.cancel()  # dropped: stop reading its input too
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.clients.discard(send)
            send.close()

    async def _type(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(4096):
                self.serial.feed(data)
        scope.cancel()
