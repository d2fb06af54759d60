"""A node's own side of its links set up in one rtnetlink exchange, without pyroute2.

A namespace node's first stage ends inside the node: loopback up, each NIC's addresses, the
NIC up, its default route.  Through pyroute2 that was an ``IPRoute`` per node (a socket and
a new asyncio event loop) and one round trip per request, all of it Python holding the GIL
while the wave's other nodes wait for it.  Here the requests are encoded with ``struct``
(pure, ``encode_*``), sent in ONE ``send`` on a netlink socket opened inside the node (the
kernel takes them in order, each with its own ack) and the acks read back: the first
refusal is raised, naming the request.  ``ip`` sends the same messages.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vnet.errors import HostError
from vnet.host import netns

NLMSG_ERROR = 2
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
_HEADER = struct.Struct("=IHHII")   # nlmsghdr: length, type, flags, sequence, port id
_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL


@dataclass(frozen=True)
class Request:
    """One encoded request and what it does, in words (for the error that refuses it)."""

    what: str
    message: bytes   # without the header's sequence number (``frame`` adds it)
    kind: int
    flags: int


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def link_up(index: int, ifname: str) -> Request:
    """``ip link set IFNAME up`` (by ifindex)."""
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    return Request(f"bring {ifname} up", body, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)


def address_add(index: int, ifname: str, interface: str) -> Request:
    """``ip addr add ADDRESS/PREFIX dev IFNAME`` (no broadcast, as ``ip`` without ``brd``)."""
    iface = ipaddress.ip_interface(interface)
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    packed = iface.ip.packed
    body = struct.pack("=BBBBI", family, iface.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    return Request(f"add {interface} to {ifname}", body, RTM_NEWADDR, _CREATE)


def default_route(gateway: str, index: int, ifname: str) -> Request:
    """``ip route add default via GATEWAY dev IFNAME proto static`` (as pyroute2 made it)."""
    via = ipaddress.ip_address(gateway)
    family = socket.AF_INET if via.version == 4 else socket.AF_INET6
    body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                       RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += _attr(RTA_GATEWAY, via.packed) + _attr(RTA_OIF, struct.pack("=I", index))
    return Request(f"add a default route via {gateway} on {ifname}", body, RTM_NEWROUTE,
                   _CREATE)


def frame(requests: Sequence[Request], first_sequence: int = 1) -> bytes:
    """The requests as one buffer, numbered from ``first_sequence``."""
    return b"".join(_HEADER.pack(_HEADER.size + len(r.message), r.kind, r.flags,
                                 first_sequence + i, 0) + r.message
                    for i, r in enumerate(requests))


def acks(data: bytes) -> list[tuple[int, int]]:
    """Each ack or refusal in ``data`` as (sequence, errno; 0: done)."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, sequence, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            found.append((sequence, -error))
        offset += (length + 3) & ~3
    return found


def run_in(name: str, requests: Sequence[Request], timeout: float = 10.0) -> None:
    """Send ``requests`` in namespace ``name`` in one go; the first refusal is raised as a
    ``HostError`` naming its request (the kernel still took the ones after it: the caller's
    rollback removes the namespace)."""
    if not requests:
        return
    with netns.entered(name):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
    with sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        sock.send(frame(requests))
        outcome: dict[int, int] = {}
        while len(outcome) < len(requests):
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise HostError(f"the kernel did not answer in {name}: "
                                f"{requests[len(outcome)].what}") from None
            outcome.update((s, e) for s, e in acks(data) if 1 <= s <= len(requests))
    for i, request in enumerate(requests):
        error = outcome[i + 1]
        if error:
            raise HostError(f"cannot {request.what} in {name}: {os.strerror(error)}")
