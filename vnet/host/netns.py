"""Network namespaces: create, remove, enter.

Namespaces are named bind mounts under /run/netns (the ``ip netns`` convention), so that
``ip netns exec``, ``nsenter`` and pyroute2 all see the ones vnet creates.  Entering one is
per thread (``setns(2)`` on the calling thread), which is how a socket is opened inside a
namespace: the socket keeps its namespace after the thread goes back.

Running a command in a node is more than ``setns``: tools read /sys/class/net (MACs,
counters) and /etc (hosts, resolv.conf), so ``become_node`` does what ``ip netns exec`` does
in the process that is about to exec the command: a mount namespace of its own, a sysfs of
the node's, and /etc/netns/NAME/* bound over /etc.  Every "run this in a node" path (``vnet
exec``, the test helpers) goes through it; vnetd and the CLI never change their own mounts.

Those bind mounts under /run/netns are seen by the rest of the machine only if vnetd creates
them in the machine's mount namespace; ``invisibility_problem`` says when it would not.

Nothing here forks a Python child: pyroute2's own namespace helpers fork the interpreter and
stop the child with SIGTERM, and a forked child of an asyncio program shares its signal
wake-up socket, so the parent (vnetd) would receive that SIGTERM as its own.  Creation and
removal do what ``ip netns`` does, in the calling thread (``unshare`` and a bind mount), and
netlink sockets are opened inside a namespace by entering it (``open_iproute``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vnet.errors import HostError, NetnsError, NotOurs

if TYPE_CHECKING:  # imported where used: the datapath needs only the standard library
    from pyroute2 import IPRoute

NETNS_RUN_DIR = Path("/run/netns")
NETNS_ETC_DIR = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): which kind of namespace an nsfs fd is
MS_RDONLY = 0x1
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def exists(name: str) -> bool:
    return netns_path(name).exists()


def is_live(name: str) -> bool:
    """Whether /run/netns/NAME holds a namespace, not just the empty file that an unmounted
    namespace leaves (or one bind-mounted in a mount namespace the machine cannot see)."""
    try:
        os.close(open_netns(name))
    except NetnsError:
        return False
    return True


def list_names() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def create(name: str, sysctls: Sequence[tuple[str, str]] = ()) -> None:
    """Create the named namespace, with ``sysctls`` (key, value) written in it; it must not
    exist yet (we never adopt a stranger's).

    As ``ip netns add`` does it, in-process (no fork of a big, threaded vnetd: ~1.5 ms
    instead of ~4 ms): /run/netns made a shared mount point (bound on itself first if it
    is no mount point), an empty file created exclusively, the calling thread moved into a
    new namespace (``unshare``: per thread), that namespace bind-mounted on the file, and
    the thread back in its own.  On any failure nothing is left: the file is unmounted and
    removed."""
    if exists(name):
        raise NotOurs(f"network namespace {name!r} already exists and vnet did not create it; "
                        f"remove it with 'ip netns del {name}' or rename the lab or node")
    _share_run_dir()
    path = netns_path(name)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    except FileExistsError:
        raise NotOurs(f"network namespace {name!r} already exists and vnet did not create "
                      f"it; remove it with 'ip netns del {name}' or rename the lab or node"
                      ) from None
    except OSError as err:
        raise HostError(f"cannot create {path}: {os.strerror(err.errno or 0)}") from None
    try:
        _unshare_onto(path, sysctls)
    except BaseException:
        _libc.umount2(os.fsencode(path), MNT_DETACH)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise


def _share_run_dir() -> None:
    """/run/netns as ``ip netns add`` leaves it: a mount point whose mounts propagate
    (shared), so that a namespace bound there is seen by every mount namespace that
    receives /run's mounts."""
    NETNS_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    run_dir = os.fsencode(NETNS_RUN_DIR)
    if _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:   # EINVAL: no mount point yet
        _check(-1, f"make {NETNS_RUN_DIR} a shared mount")
    _check(_libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None),
           f"bind {NETNS_RUN_DIR} on itself")
    _check(_libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None),
           f"make {NETNS_RUN_DIR} a shared mount")


def _unshare_onto(path: Path, sysctls: Sequence[tuple[str, str]]) -> None:
    """Bind a new network namespace on ``path``, with ``sysctls`` written in it, from the
    calling thread, which ends where it began."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "create a network namespace (unshare)")
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), b"none",
                               MS_BIND, None), f"bind the new namespace on {path}")
            for key, value in sysctls:
                with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                    f.write(value)
        finally:
            setns_fd(home)
    finally:
        os.close(home)


def remove(name: str) -> bool:
    """Remove the named namespace; returns False if it was already gone.  As ``ip netns
    delete``: unmounted (lazily: a process still in it keeps it) and its file removed."""
    path = netns_path(name)
    if not exists(name):
        return False
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0 and ctypes.get_errno() not in (
            errno.EINVAL, errno.ENOENT):   # EINVAL: nothing mounted there (a stale file)
        _check(-1, f"unmount {path}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise HostError(f"cannot remove {path}: {os.strerror(err.errno or 0)}") from None
    return True


def open_iproute(name: str | None) -> IPRoute:
    """A pyroute2 ``IPRoute`` whose netlink socket lives in namespace ``name``."""
    from pyroute2 import IPRoute

    with entered(name):
        return IPRoute()


def open_netns(name: str) -> int:
    """An fd of namespace ``name`` (``O_CLOEXEC``), or a ``NetnsError`` saying why not.

    The file under /run/netns can outlive its namespace (unmounted, or bind-mounted by a
    process in a mount namespace of its own): ``setns`` would then fail with EINVAL, so
    that case is told apart here, where it can still be explained."""
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"network namespace {name!r} does not exist") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise NetnsError(f"network namespace {name!r} is gone: {path} is left but holds no "
                         f"namespace (it was unmounted, or created by a process whose mounts "
                         f"the rest of the machine cannot see)")
    return fd


def setns_fd(fd: int, kind: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, kind) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"cannot enter a namespace (setns: {os.strerror(err)}); "
                         f"vnet needs root (CAP_SYS_ADMIN)")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread inside namespace ``name`` (None: stay put)."""
    if name is None:
        yield
        return
    target = open_netns(name)
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
    """Move the whole (still single-threaded) process into ``name``: for daemons' --netns.

    Only the network namespace: a daemon keeps the machine's mounts (see module docstring)."""
    try:
        fd = open_netns(name)
    except NetnsError as err:
        raise NetnsError(f"{err}; create it with 'ip netns add {name}'") from None
    try:
        setns_fd(fd)
    finally:
        os.close(fd)


# ---- running a command in a node, as ``ip netns exec`` does ---------------------------------

def become_node(fd: int, name: str) -> None:
    """Put the calling process into the namespace ``fd`` (named ``name``) with the node's view
    of /sys and /etc.

    Only for a single-threaded process about to exec a command (a ``preexec_fn`` child, or
    ``vnet.host.nodeexec``, which vnetd starts for ``vnet exec``): it unshares the mount
    namespace, which a thread cannot do, and everything it mounts is private to it and its
    children, never propagated back."""
    setns_fd(fd)
    _check(_libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "make / a slave mount")
    flags = 0
    if _libc.umount2(b"/sys", MNT_DETACH) != 0:  # no sysfs there, or a locked one: overlay it
        with contextlib.suppress(OSError):
            if os.statvfs("/sys").f_flag & os.ST_RDONLY:
                flags = MS_RDONLY  # a read-only sysfs cannot be shadowed by a writable one
    # A sysfs mounted now shows the network namespace of the mounting process: the node's.
    _check(_libc.mount(name.encode(), b"/sys", b"sysfs", flags, None), "mount the node's /sys")
    etc = NETNS_ETC_DIR / name
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.listdir(etc)):
            source, target = etc / entry, Path("/etc") / entry
            if _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None) != 0:
                # As ip netns exec: say so and go on (os.write: no Python buffer in a child).
                reason = os.strerror(ctypes.get_errno())
                os.write(2, f"vnet: {source} not bound over {target}: {reason} (a file in "
                            f"/etc/netns/{name} needs one of its name in /etc)\n".encode())


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"cannot {what}: {os.strerror(err)}")


@contextlib.contextmanager
def node_preexec(name: str) -> Iterator[Callable[[], None]]:
    """A ``preexec_fn`` that runs the child in node namespace ``name`` as ``ip netns exec``
    would (``become_node``); valid while the block runs, so start the child inside it."""
    fd = open_netns(name)  # here, in the parent, where a missing namespace can be reported
    try:
        yield lambda: become_node(fd, name)
    finally:
        os.close(fd)


# ---- can the rest of the machine see the namespaces we create? ------------------------------

def mount_tags(mountinfo: str, path: str) -> tuple[str, ...]:
    """The propagation tags (``shared:N``, ``master:N``) of the mount that holds ``path``,
    read from the text of /proc/self/mountinfo (see proc(5)); pure."""
    best: tuple[int, tuple[str, ...]] = (-1, ())
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        point = _unescape(fields[4])
        holds = path == point or path.startswith(point.rstrip("/") + "/")
        if holds and len(point) >= best[0]:  # the deepest one; the later one is on top
            best = (len(point), tuple(fields[6:fields.index("-", 6)]))
    return best[1]


def _unescape(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_are_private(own_mnt: str, others_mnt: Sequence[str], tags: tuple[str, ...]) -> bool:
    """Whether bind mounts made under /run/netns would stay invisible to the machine; pure.

    They would if this process's mount namespace is not that of PID 1 or of the process that
    started it (``others_mnt``: those that could be read; ``unshare -m``, ``ip netns exec``),
    or if the mount holding /run/netns is a slave (``master:N``: what ``ip netns exec`` and
    sandboxed services make), which receives the machine's mounts but sends none back."""
    slave = any(tag.startswith("master:") for tag in tags)
    return slave or any(other != own_mnt for other in others_mnt)


def namespace_mounts_private() -> bool:
    """``mounts_are_private`` for this process (PID 1's namespace is unreadable in some
    sandboxes, the parent's when it is outside our PID namespace: those are left out)."""
    own = os.readlink("/proc/self/ns/mnt")
    others = []
    for pid in {1, os.getppid()} - {0}:
        with contextlib.suppress(OSError):
            others.append(os.readlink(f"/proc/{pid}/ns/mnt"))
    tags = mount_tags(Path("/proc/self/mountinfo").read_text(), str(NETNS_RUN_DIR))
    return mounts_are_private(own, others, tags)


def current_name() -> str | None:
    """The /run/netns name of this process's network namespace, if it has one."""
    here = os.stat("/proc/self/ns/net")
    for name in list_names():
        with contextlib.suppress(OSError):
            there = os.stat(netns_path(name))
            if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
                return name
    return None


def write_sysctl(name: str | None, key: str, value: str) -> None:
    """Write a per-namespace sysctl (``net.ipv6.conf.all.disable_ipv6``) inside ``name``."""
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(name), open(path, "w") as f:
        f.write(value)


def read_sysctl(name: str | None, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(name), open(path) as f:
        return f.read().strip()
