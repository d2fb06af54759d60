"""The console socket: a Unix socket on which a client (``vnet console``) sees the guest's
serial output live and types into its UART.  Several clients may watch; all may type."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

from vnet.kvm.serial import Serial16550


class ConsoleSocket(threading.Thread):
    def __init__(self, path: Path, serial: Serial16550) -> None:
        super().__init__(name="console", daemon=True)
        self.path = path
        self.serial = serial
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        os.chmod(path, 0o600)
        self.listener.listen(4)
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                self.clients.append(client)
            threading.Thread(target=self._read, args=(client,), daemon=True).start()

    def _read(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(4096):
                self.serial.feed(data)
        self._drop(client)

    def write(self, data: bytes) -> None:
        """Guest output to every client; a client that cannot keep up is dropped."""
        with self.lock:
            clients = list(self.clients)
        for client in clients:
            try:
                client.sendall(data)
            except OSError:
                self._drop(client)

    def _drop(self, client: socket.socket) -> None:
        with self.lock:
            if client in self.clients:
                self.clients.remove(client)
        client.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for client in self.clients:
                client.close()
            self.clients.clear()
        self.path.unlink(missing_ok=True)
