"""The underlay of a multi-host lab on one machine: a namespace holding a Linux bridge, and a
veth from it into each host's namespace, where it is ``ul0`` with the host's address.

    make_underlay("vnt-ul-1a2b")
    attach("vnt-ul-1a2b", host.name, "h1", "10.91.0.1/24")    # h1's ul0

The tests' clusters, the multi-host benchmark and the demo all join their hosts this way;
nothing here touches the root namespace.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from vnet.errors import VnetError
from vnet.host import netns

BRIDGE = "br0"
HOST_IFNAME = "ul0"


class UnderlayError(VnetError):
    """An ``ip`` command building the underlay failed (its message is ip's)."""


def ip(namespace: str, *args: str) -> None:
    """``ip -n NAMESPACE ARGS``; a failure raises with ip's own message."""
    result = subprocess.run(["ip", "-n", namespace, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise UnderlayError(f"ip -n {namespace} {' '.join(args)}: {result.stderr.strip()}")


def make_underlay(underlay: str) -> None:
    """Namespace ``underlay`` with its bridge up (the caller removes the namespace)."""
    netns.create(underlay)
    ip(underlay, "link", "set", "lo", "up")
    ip(underlay, "link", "add", BRIDGE, "type", "bridge")
    ip(underlay, "link", "set", BRIDGE, "up")


def attach(underlay: str, namespace: str, port: str, address: str,
           ifname: str = HOST_IFNAME) -> None:
    """A veth from the underlay's bridge (its end named ``port``) to ``namespace``, where it
    is ``ifname`` with ``address`` (``A.B.C.D/LEN``), both ends up."""
    ip(underlay, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns",
       namespace)
    ip(underlay, "link", "set", port, "master", BRIDGE, "up")
    ip(namespace, "addr", "add", address, "dev", ifname)
    ip(namespace, "link", "set", ifname, "up")


def daemon_config(host: str, broker_url: str, password_file: Path, keepalive: int = 5) -> str:
    """vnetd's config file for host ``host`` of a cluster, its bus user named after it (pure)."""
    return (f"host: {host}\n"
            f"bus:\n"
            f"  broker: {broker_url}\n"
            f"  username: {host}\n"
            f"  password_file: {password_file}\n"
            f"  keepalive: {keepalive}\n")
