"""Network namespaces: create, remove, enter.

Namespaces are named bind mounts under /run/netns (the ``ip netns`` convention), so that
``ip netns exec``, ``nsenter`` and pyroute2 all see the ones vnet creates.  Entering one is
per thread (``setns(2)`` on the calling thread), which is how a socket is opened inside a
namespace: the socket keeps its namespace after the thread goes back.

Nothing here forks a Python child: pyroute2's own namespace helpers fork the interpreter and
stop the child with SIGTERM, and a forked child of an asyncio program shares its signal
wake-up socket, so the parent (vnetd) would receive that SIGTERM as its own.  Creation and
removal go through ``ip netns`` (fork and exec, which is safe), and netlink sockets are opened
inside a namespace by entering it (``open_iproute``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vnet.errors import HostError

if TYPE_CHECKING:  # imported where used: the datapath needs only the standard library
    from pyroute2 import IPRoute

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def exists(name: str) -> bool:
    return netns_path(name).exists()


def list_names() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def create(name: str) -> None:
    """Create the named namespace; it must not exist yet (we never adopt a stranger's)."""
    if exists(name):
        raise HostError(f"network namespace {name!r} already exists and vnet did not create it; "
                        f"remove it with 'ip netns del {name}' or rename the lab or node")
    _ip_netns("add", name)


def remove(name: str) -> bool:
    """Remove the named namespace; returns False if it was already gone."""
    if not exists(name):
        return False
    _ip_netns("delete", name)
    return True


def _ip_netns(verb: str, name: str) -> None:
    try:
        subprocess.run(["ip", "netns", verb, name], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise HostError("the ip command is missing: install iproute2") from None
    except subprocess.CalledProcessError as err:
        raise HostError(f"ip netns {verb} {name}: {err.stderr.strip()}") from None


def open_iproute(name: str | None) -> IPRoute:
    """A pyroute2 ``IPRoute`` whose netlink socket lives in namespace ``name``."""
    from pyroute2 import IPRoute

    with entered(name):
        return IPRoute()


def setns_fd(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread inside namespace ``name`` (None: stay put)."""
    if name is None:
        yield
        return
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostError(f"network namespace {name!r} does not exist") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns_fd(target)
        try:
            yield
        finally:
            setns_fd(home)
    finally:
        os.close(target)
        os.close(home)


def enter_for_good(name: str) -> None:
    """Move the whole (still single-threaded) process into ``name``: for daemons' --netns."""
    try:
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostError(f"network namespace {name!r} does not exist; "
                        f"create it with 'ip netns add {name}'") from None
    try:
        setns_fd(fd)
    finally:
        os.close(fd)


def write_sysctl(name: str | None, key: str, value: str) -> None:
    """Write a per-namespace sysctl (``net.ipv6.conf.all.disable_ipv6``) inside ``name``."""
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(name), open(path, "w") as f:
        f.write(value)


def read_sysctl(name: str | None, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(name), open(path) as f:
        return f.read().strip()
