"""The runner's console socket is root's alone from the moment it has its name."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import trio

from vnet.kvm.console import bind_unix


def test_the_socket_appears_at_its_path_with_mode_0600_and_no_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "console-lab-vm1.sock"
    path.write_text("a stale one")

    async def bind_and_look() -> None:
        old = os.umask(0)   # the most open umask: the mode must not come from it
        try:
            sock = bind_unix(path)
        finally:
            os.umask(old)
        with sock:
            info = os.stat(path)
            assert stat.S_ISSOCK(info.st_mode) and info.st_mode & 0o777 == 0o600
            assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))   # the listener answers at its final name

    trio.run(bind_and_look)
