"""DHCP leases of namespace nodes: busybox ``udhcpc`` asks once, inside the node, after its
switch port exists (the lab's leases are infinite, so nothing has to renew)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from vnet.daemon.drivers.base import BlockingDriver
from vnet.daemon.resources import DhcpLeaseResource
from vnet.errors import HostError
from vnet.host import netns

SCRIPT = Path(__file__).parent.parent / "udhcpc.sh"
CLIENT_TIMEOUT = 30


class DhcpLeaseDriver(BlockingDriver[DhcpLeaseResource]):
    kind = DhcpLeaseResource.kind

    def create_blocking(self, lease: DhcpLeaseResource) -> None:
        run_dhcp_client(lease.netns, lease.nic)

    def delete_blocking(self, lease: DhcpLeaseResource) -> None:
        """Nothing to do: the address goes with the node's namespace, the lease is infinite."""

    def exists_blocking(self, lease: DhcpLeaseResource) -> bool:
        """The NIC holds an IPv4 address (what the lease gave it)."""
        if not netns.is_live(lease.netns):
            return False
        with netns.open_iproute(lease.netns) as ns:
            indexes = ns.link_lookup(ifname=lease.nic)
            return bool(indexes and ns.get_addr(index=indexes[0], family=socket.AF_INET))

    def describe(self, lease: DhcpLeaseResource) -> dict[str, Any]:
        return {"node": lease.node, "nic": lease.nic}


def run_dhcp_client(netns_name: str, nic: str) -> None:
    """Get ``nic``'s address by DHCP inside the node (one shot)."""
    command = ["busybox", "udhcpc", "-i", nic, "-f", "-q", "-n", "-t", "10", "-T", "1",
               "-s", str(SCRIPT)]
    fd = os.open(netns.netns_path(netns_name), os.O_RDONLY)
    try:
        result = subprocess.run(command, preexec_fn=lambda: netns.setns_fd(fd), pass_fds=(fd,),
                                capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    except FileNotFoundError:
        raise HostError("busybox is not installed: install busybox-static (for ip: dhcp)") \
            from None
    finally:
        os.close(fd)
    if result.returncode != 0:
        raise HostError(f"{netns_name}: no DHCP lease for {nic}: {result.stderr.strip()[-300:]}")
