"""Persistent TAP netdevs for VM NICs.

vnetd creates the TAP (persistent, with ``IFF_VNET_HDR`` so the runner and the kernel can
exchange GSO frames) and the VM runner attaches to it by name.  A single-queue TAP takes one
attached fd, which is the runner's; the switch reaches the same frames through the TAP's
netdev with a packet socket.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def create_persistent_tap(name: str) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, TAP_FLAGS))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)
